#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""Seeded job trace for bench/density: what each VM of a density run does, and when.

Per VM slot (0, 1, 2, ...: the Nth VM a run boots plays slot N), a sequence of idle gaps and jobs.
A gap follows the end of the previous job (so a slow job delays the VM's next one, as a real
sandbox would); the first gap is drawn from 0-20 s so the VMs do not start in step. Gaps are
uniform 14-26 s (about 20 s), so the duty cycle stays low and a slowdown is memory's doing, not
the host's two cores. Three kinds of job, drawn 40 / 30 / 30 %:

  anon   allocate and touch MIB of anonymous memory, hold it HOLD_S seconds, free it (the agent's
         `fill` + `release`): mostly 32-96 MiB, a 15 % tail of 100-300 MiB, held 3-8 s. Free page
         reporting returns this memory to the host by itself once it is freed.
  cache  read MIB (64-192) of a file into the guest's page cache (`dd` of a sparse file on an ext2
         file system on a second zram device, /data/blob, 896 MiB; see bench/density). Each read
         starts where the VM's previous one ended (wrapping), so the cache grows job after job and
         stays in the guest after the job: free page reporting never sees it.
  heap   a runtime that keeps part of its heap between jobs: touch the heap it kept (`verify` of
         its held fills: cold pages the guest may have swapped to zram come back), allocate a
         working set WORK_MIB (32-96) held HOLD_S seconds and freed, and keep KEEP_MIB more (16-48)
         for good, until the VM's kept heap reaches its bound (128-224 MiB, drawn per slot).

The trace is a JSON file: {"seed", "slots", "horizon_s", "generator", "vms": [{"slot", "heap_bound_mib",
"jobs": [{"i", "kind", "gap_s", ...kind's fields}]}]}; a run takes each slot's jobs in order until
its duration is up. The default trace (seed 1, 16 slots, 600 s of jobs each) is committed as
bench/density-trace.json so every run replays the same jobs.

With --anon-only every job is an anon job (same draws otherwise): the workload free page reporting
handles alone, committed as bench/density-trace-anon.json.

usage: bench/density-trace.py [--seed N] [--slots N] [--horizon SECONDS] [--anon-only] [-o FILE]
"""

import argparse
import json
import random
import sys

DEFAULT_OUT = "bench/density-trace.json"
CACHE_FILE_MIB = 896


def job(rng, slot_state, anon_only=False):
    """One job, drawn from rng; slot_state carries the cache cursor and the kept heap."""
    k = rng.random()
    if k < 0.40 or anon_only:
        mib = rng.randint(100, 300) if rng.random() < 0.15 else rng.randint(32, 96)
        return {"kind": "anon", "mib": mib, "hold_s": round(rng.uniform(3, 8), 1)}
    if k < 0.70:
        mib = rng.randint(64, 192)
        off = slot_state["cursor"]
        if off + mib > CACHE_FILE_MIB:
            off = 0
        slot_state["cursor"] = off + mib
        return {"kind": "cache", "mib": mib, "offset_mib": off}
    keep = 0
    if slot_state["kept"] < slot_state["bound"]:
        keep = min(rng.randint(16, 48), slot_state["bound"] - slot_state["kept"])
        slot_state["kept"] += keep
    return {"kind": "heap", "work_mib": rng.randint(32, 96), "keep_mib": keep,
            "hold_s": round(rng.uniform(3, 8), 1)}


def generate(seed, slots, horizon, anon_only=False):
    vms = []
    for s in range(slots):
        # One stream per slot: slot N's jobs do not depend on how many slots were generated.
        rng = random.Random(f"{seed}/{s}")
        st = {"cursor": 0, "kept": 0, "bound": rng.choice([128, 160, 192, 224])}
        jobs, t = [], 0.0
        while t < horizon:
            gap = round(rng.uniform(0, 20), 1) if not jobs else round(rng.uniform(14, 26), 1)
            j = job(rng, st, anon_only)
            j = {"i": len(jobs), "gap_s": gap, **j}
            jobs.append(j)
            # A rough clock only to bound the trace's length: gap + hold + a few seconds of work.
            t += gap + j.get("hold_s", 0) + 3
        vms.append({"slot": s, "heap_bound_mib": st["bound"], "jobs": jobs})
    return {"generator": "bench/density-trace.py", "seed": seed, "slots": slots, "horizon_s": horizon,
            "kinds": "anon" if anon_only else "anon,cache,heap",
            "cache_file_mib": CACHE_FILE_MIB, "vms": vms}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--slots", type=int, default=16)
    ap.add_argument("--horizon", type=float, default=600)
    ap.add_argument("--anon-only", action="store_true",
                    help="only anonymous jobs (the workload free page reporting handles by itself)")
    ap.add_argument("-o", "--output", default=DEFAULT_OUT, help="'-' for stdout")
    a = ap.parse_args()
    tr = generate(a.seed, a.slots, a.horizon, a.anon_only)
    text = json.dumps(tr, indent=None, separators=(",", ":"))
    # One VM per line: readable diffs, small file.
    text = text.replace('{"slot"', '\n{"slot"') + "\n"
    if a.output == "-":
        sys.stdout.write(text)
    else:
        with open(a.output, "w") as f:
            f.write(text)


if __name__ == "__main__":
    main()
