#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""Pictures of a bench/density run, from its CSVs only.

  timeline per mode (density-timeline-MODE.png): top, the cgroup's usage against its limit and the
  low/high watermarks, each VM's guest size (balloon actual, dashed) and QEMU RSS (solid); bottom,
  one lane per VM with its jobs (bars from start to end, coloured by kind; a cross for a failed
  job) and OOM kills / QEMU deaths as red lines across both panels. The point drawn is the mode's
  highest VM count, first repeat, unless --point MODE=TAG is given.
  summary (density-summary.png): VMs hosted against p99 job slowdown (CPU noise removed; p50 as x,
  raw p99 as a dash), one line per mode (repeats pooled, as in modes.csv); hollow markers are
  broken counts (an OOM kill, a QEMU death, a failed job or p99 beyond the bound).

usage: bench/density-plot.py OUTDIR [OUTDIR...] [--img DIR] [--point MODE=TAG ...]   (needs python3-matplotlib)
"""

import argparse
import csv
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker  # noqa: E402
import json  # noqa: E402

KIND_COLOR = {"anon": "tab:blue", "cache": "tab:green", "heap": "tab:purple"}
MODE_COLOR = {"static": "tab:gray", "fpr": "tab:orange", "ballastd": "tab:blue", "admission": "tab:green"}


def read(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def num(v):
    try:
        return float(v)
    except (TypeError, ValueError):
        return None


def timeline(out, tag, img, title):
    rows = read(os.path.join(out, f"{tag}.csv"))
    ev = read(os.path.join(out, f"{tag}-events.csv"))
    t = [float(r["t"]) for r in rows]
    vms = sorted({int(k[1:].split("_")[0]) for k in rows[0] if k.startswith("v") and k.endswith("_rss_mib")
                  and any(r[k] for r in rows)})
    fig, (ax, lanes) = plt.subplots(2, 1, figsize=(9, 5.2), sharex=True, gridspec_kw={"height_ratios": [3, 1.2]})
    lim = [float(r["cg_limit_mib"]) for r in rows]
    ax.plot(t, [float(r["cg_usage_mib"]) for r in rows], color="black", lw=1.8, label="cgroup usage")
    ax.plot(t, lim, color="red", lw=1.2, label="cgroup limit")
    ax.plot(t, [x * 0.90 for x in lim], color="red", lw=0.6, ls=":", label="low / high watermark")
    ax.plot(t, [x * 0.85 for x in lim], color="red", lw=0.6, ls=":")
    cmap = plt.get_cmap("tab10")
    for i in vms:
        c = cmap(i % 10)
        ax.plot(t, [num(r[f"v{i}_rss_mib"]) for r in rows], color=c, lw=0.9)
        ax.plot(t, [num(r[f"v{i}_actual_mib"]) for r in rows], color=c, lw=0.9, ls="--")
    ax.plot([], [], color="gray", lw=0.9, label="QEMU RSS (a colour per VM)")
    ax.plot([], [], color="gray", lw=0.9, ls="--", label="guest size (balloon actual)")
    ax.set_ylabel("MiB")
    ax.set_ylim(0, max(lim) * 1.08)
    ax.legend(loc="upper left", fontsize=7, ncol=3)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    starts, labelled = {}, []
    for e in ev:
        tt = float(e["t"])
        if e["event"] == "job_start":
            starts[e["vm"]] = (tt, e["kind"])
        elif e["event"] in ("job_end", "job_failed") and e["vm"] in starts:
            s, k = starts.pop(e["vm"])
            y = int(e["vm"][1:])
            lanes.barh(y, tt - s, left=s, height=0.7, color=KIND_COLOR.get(k, "gray"))
            if e["event"] == "job_failed":
                lanes.plot([tt], [y], "x", color="red", ms=7)
        elif e["event"] in ("cgroup_oom_kill", "guest_oom_kill", "qemu_death"):
            for a in (ax, lanes):
                a.axvline(tt, color="red", lw=1.5, alpha=0.8)
            near = [x for x in labelled if abs(x - tt) < 5]
            label = e["event"].replace("_", " ") + (f" ({e['vm']})" if e["vm"] else "")
            ax.text(tt - 1, max(lim) * (0.97 - 0.05 * len(near)), label, color="red", fontsize=7, ha="right")
            labelled.append(tt)
        elif e["event"] == "admit":
            lanes.plot([tt], [int(e["vm"][1:])], ">", color="black", ms=5)
    for k, c in KIND_COLOR.items():
        lanes.barh([-5], [0], color=c, label=k)
    lanes.set_ylim(-0.7, max(vms, default=0) + 0.7)
    lanes.set_yticks(vms)
    lanes.set_yticklabels([f"v{i}" for i in vms], fontsize=7)
    lanes.legend(loc="upper right", fontsize=7, ncol=3)
    lanes.set_xlabel("seconds into the trace")
    lanes.grid(alpha=0.3, axis="x")
    fig.tight_layout()
    fig.savefig(img, dpi=72)
    plt.close(fig)


def summary(outs, img, title, bound):
    by = {}
    for out in outs:  # a later run's (mode, count) replaces an earlier one's
        for r in read(os.path.join(out, "modes.csv")):
            by[(r["mode"], r["count"])] = r
    agg = list(by.values())
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for mode in MODE_COLOR:
        pts = [(int(r["vms_hosted_max"]), num(r["slowdown_p99"]), int(r["broken"]) > 0) for r in agg
               if r["mode"] == mode and num(r["slowdown_p99"]) is not None]
        if not pts:
            continue
        pts.sort()
        c = MODE_COLOR[mode]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], color=c, lw=1.2, label=f"{mode} p99")
        for x, y, broken in pts:
            ax.plot([x], [y], "o", ms=8, color=c, mfc="white" if broken else c)
        p50 = sorted((int(r["vms_hosted_max"]), num(r["slowdown_p50"])) for r in agg
                     if r["mode"] == mode and num(r["slowdown_p50"]) is not None)
        ax.plot([p[0] for p in p50], [p[1] for p in p50], color=c, lw=0.8, ls=":", marker="x", ms=5)
        raw = sorted((int(r["vms_hosted_max"]), num(r.get("raw_slowdown_p99"))) for r in agg
                     if r["mode"] == mode and num(r.get("raw_slowdown_p99")) is not None)
        ax.plot([p[0] for p in raw], [p[1] for p in raw], ls="none", marker="_", ms=10, color=c, alpha=0.6)
    if bound:
        ax.axhline(bound, color="red", lw=0.8, ls="--", label=f"bound ({bound:g}×)")
    ax.axhline(1, color="black", lw=0.5)
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.set_ylim(bottom=0)
    ax.set_xlabel("VMs hosted (512 MiB each) in the cgroup")
    ax.set_ylabel("job slowdown (× the job alone, CPU noise removed)")
    ax.set_title(title + "\np99 (dots) and p50 (x) over the CPU factor; dash: raw p99\n"
                 "hollow: broken (OOM kill, QEMU death, failed job or p99 over the bound)",
                 fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(img, dpi=72)
    plt.close(fig)


def main():
    ap = argparse.ArgumentParser(description="plots of a bench/density run")
    ap.add_argument("out", nargs="+", help="one run's directory, or several: later runs' points replace earlier ones'")
    ap.add_argument("--img", default="docs/img")
    ap.add_argument("--prefix", default="density")
    ap.add_argument("--point", nargs="*", help="MODE=TAG: which point's timeline to draw for a mode")
    a = ap.parse_args()
    os.makedirs(a.img, exist_ok=True)
    chosen = dict(p.split("=", 1) for p in a.point or [])
    summ, where = [], {}
    for out in a.out:
        for r in read(os.path.join(out, "summary.csv")):
            key = (r["mode"], r["count"], r["repeat"])
            summ = [x for x in summ if (x["mode"], x["count"], x["repeat"]) != key] + [r]
            where[key] = out
    limit = f"{float(summ[0]['limit_mib']):.0f}" if summ else "?"
    try:
        with open(os.path.join(a.out[0], "run.json")) as f:
            bound = json.load(f)["args"]["max_p99"]
    except (OSError, ValueError, KeyError):
        bound = None
    for mode in MODE_COLOR:
        pts = [r for r in summ if r["mode"] == mode]
        if not pts:
            continue
        tag = chosen.get(mode)
        if not tag:
            top = max(int(r["count"]) for r in pts)
            r = min((r for r in pts if int(r["count"]) == top), key=lambda r: int(r["repeat"]))
            tag = f"{mode}-n{r['count']}-r{r['repeat']}"
        r = next(x for x in pts if f"{mode}-n{x['count']}-r{x['repeat']}" == tag)
        title = (f"{mode}: {r['vms_hosted']} VMs in a {limit} MiB cgroup ({tag}); jobs {r['jobs_done']}, "
                 f"p99 slowdown {r['slowdown_p99'] or '-'}, host CPU {r['host_cpu_avg_pct']}%")
        img = os.path.join(a.img, f"{a.prefix}-timeline-{mode}.png")
        timeline(where[(mode, r["count"], r["repeat"])], tag, img, title)
    summary(a.out, os.path.join(a.img, f"{a.prefix}-summary.png"), f"bench/density, {limit} MiB cgroup", bound)


if __name__ == "__main__":
    main()
