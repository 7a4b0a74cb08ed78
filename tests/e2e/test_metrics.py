# SPDX-License-Identifier: MIT
"""GET /metrics of a real ballastd (docs/metrics.md), against what the API, /proc, the cgroup and a
real QEMU guest say: API request classes that add up, time to target counted from the command,
the effective floor, guest statistics, the daemon's own process figures, the scope label. Then
the packaged alert rules (promtool check rules, promtool test rules) and the Grafana dashboard:
both may use only metrics a live daemon exports."""

import glob
import json
import os
import re
import shutil
import subprocess
import tempfile
import time

import pytest

from conftest import SRC, MiB, wait_until
from conftest_daemon import ballastd, daemons, mem_cgroup, vm_pool  # noqa: F401 (fixtures)
from daemon import Daemon

RULES = os.path.join(SRC, "packaging", "prometheus", "ballast-rules.yml")
RULES_TEST = os.path.join(SRC, "packaging", "prometheus", "ballast-rules.test.yml")
DASHBOARD = os.path.join(SRC, "packaging", "grafana", "ballast.json")
VM = "mx"
VM_MIB = 512
ASSIGNED = VM_MIB * MiB
FLOOR = 96 * MiB  # below floor_fraction (25%): the effective floor differs from the configured one
TOL = 16 * MiB

SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$')
LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"(?:,|$)')


def parse(text):
    """Exposition text -> {name: [(labels dict, value)]}; every line must be a comment or a sample."""
    out = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = SAMPLE.match(line)
        assert m, f"not a sample line: {line!r}"
        labels = dict(LABEL.findall(m.group(2) or ""))
        out.setdefault(m.group(1), []).append((labels, float(m.group(3))))
    return out


def scrape(d):
    r = d.request("GET", "/metrics")
    assert r.status == 200, r
    assert r.headers["content-type"].startswith("text/plain; version=0.0.4"), r
    return parse(r.body.decode())


def value(metrics, name, **labels):
    """The one sample of name whose labels include `labels` (None when there is none)."""
    hits = [v for l, v in metrics.get(name, []) if all(l.get(k) == x for k, x in labels.items())]
    assert len(hits) <= 1, f"{name}{labels}: {len(hits)} samples"
    return hits[0] if hits else None


def promtool():
    p = shutil.which("promtool")
    if p:
        return p
    msg = "promtool is not installed (Debian package prometheus; scripts/deps installs it)"
    if os.environ.get("BALLAST_REQUIRE_VM"):
        pytest.fail(msg)
    pytest.skip(msg)


# --- without VMs ----------------------------------------------------------------------------------


def test_api_request_classes_add_up(daemons):  # noqa: F811
    """Each answered request counts once, in its status class: sum() is the number of requests."""
    d = daemons().start()
    before = scrape(d)
    made = {"2xx": 1, "4xx": 0, "5xx": 0}  # the scrape above is answered after it was rendered
    for path, status in [("/v1/health", 200), ("/v1/host", 200), ("/v1/vms", 200), ("/v1/nosuch", 404),
                         ("/v1/vms/nosuch", 404), ("/v1/history?limit=x", 400)]:
        assert d.request("GET", path).status == status, path
        made[f"{status // 100}xx"] += 1
    assert d.request("POST", "/v1/vms", "{not json").status == 400
    made["4xx"] += 1
    after = scrape(d)
    classes = {l["class"] for l, _ in after["ballast_api_requests_total"]}
    assert classes == {"2xx", "3xx", "4xx", "5xx"}, classes  # no "all": sum() must not count twice
    for c in classes:
        delta = value(after, "ballast_api_requests_total", **{"class": c}) - \
            value(before, "ballast_api_requests_total", **{"class": c})
        assert delta == made.get(c, 0), (c, delta, made)
    total = sum(v for _, v in after["ballast_api_requests_total"]) - \
        sum(v for _, v in before["ballast_api_requests_total"])
    assert total == sum(made.values()) == 8, total


def test_unreachable_vm_has_a_status_and_no_made_up_sizes(daemons, tmp_path):  # noqa: F811
    """A VM whose socket does not exist: one status series (error), its floor as the API shows it,
    and no target, actual, RSS or guest series (unknown, not 0)."""
    d = daemons().start()
    d.register("ghost", str(tmp_path / "nosuch.sock"), 512 * MiB, floor=64 * MiB)
    v = d.wait_status(["ghost"], "error", timeout=60)["ghost"]
    m = scrape(d)
    labels = {"vm": "ghost", "driver": "qemu"}
    assert m["ballast_vm_status"] == [(dict(labels, status="error"), 1.0)], m["ballast_vm_status"]
    assert value(m, "ballast_vm_floor_bytes", **labels) == v["effective_floor_bytes"] == 128 * MiB, v
    assert value(m, "ballast_vm_configured_floor_bytes", **labels) == 64 * MiB
    for name in ("ballast_vm_target_bytes", "ballast_vm_actual_bytes", "ballast_vm_host_rss_bytes",
                 "ballast_vm_guest_available_bytes", "ballast_vm_guest_pressure"):
        assert value(m, name, **labels) is None, (name, m.get(name))
    assert value(m, "ballast_vm_driver_errors_total", **labels) >= 1


def read_psi_total():
    with open("/proc/pressure/memory") as f:
        return {l.split()[0]: int(l.split("total=")[1]) for l in f if "total=" in l}


def test_process_build_and_host_scope(daemons):  # noqa: F811
    """Build info, the daemon's own RSS/CPU/fds as /proc shows them, and the host scope with PSI as a
    raw counter that follows the kernel's."""
    psi0 = read_psi_total() if os.path.exists("/proc/pressure/memory") else None
    d = daemons().start()
    t0 = time.time()
    m = scrape(d)
    ver = subprocess.run([d.binary, "--version"], capture_output=True, text=True, timeout=30).stdout.split()[-1]
    assert m["ballast_build_info"] == [({"version": ver}, 1.0)], m["ballast_build_info"]

    pid = d.proc.pid
    with open(f"/proc/{pid}/status") as f:
        rss = next(int(l.split()[1]) * 1024 for l in f if l.startswith("VmRSS:"))
    assert abs(value(m, "process_resident_memory_bytes") - rss) <= 4 * MiB, (value(m, "process_resident_memory_bytes"), rss)
    fds = len(os.listdir(f"/proc/{pid}/fd"))
    assert abs(value(m, "process_open_fds") - fds) <= 2, (value(m, "process_open_fds"), fds)
    assert value(m, "process_max_fds") >= fds
    assert abs(value(m, "process_start_time_seconds") - d.started_at) <= 10, value(m, "process_start_time_seconds")
    cpu = value(m, "process_cpu_seconds_total")
    with open(f"/proc/{pid}/stat") as f:
        st = f.read().rsplit(")", 1)[1].split()
    ticks = (int(st[11]) + int(st[12])) / os.sysconf("SC_CLK_TCK")
    assert 0 < cpu and abs(cpu - ticks) <= 0.5, (cpu, ticks)

    assert m["ballast_scope_info"] == [({"scope": "host", "cgroup": ""}, 1.0)], m["ballast_scope_info"]
    with open("/proc/meminfo") as f:
        total = next(int(l.split()[1]) * 1024 for l in f if l.startswith("MemTotal:"))
    assert value(m, "ballast_host_memory_total_bytes", scope="host") == total
    assert value(m, "ballast_host_sample_ok", scope="host") == 1
    if psi0 is None:
        print("no /proc/pressure/memory on this kernel: the PSI series are absent, as they should be")
        assert "ballast_host_psi_stall_seconds_total" not in m
        return
    psi1 = read_psi_total()
    for kind in ("some", "full"):
        v = value(m, "ballast_host_psi_stall_seconds_total", scope="host", kind=kind)
        assert v is not None, kind
        # The daemon's sample was read between our two reads of the kernel's counter (µs → s).
        assert psi0[kind] / 1e6 <= v <= psi1[kind] / 1e6, (kind, psi0[kind], v, psi1[kind])
        assert value(m, "ballast_host_psi_avg10_ratio", scope="host", kind=kind) is not None
    assert time.time() - t0 < 60


def test_cgroup_scope_is_labelled(daemons, mem_cgroup):  # noqa: F811
    mem_cgroup.set_limit(256 * MiB)
    d = daemons({"pressure": {"scope": f"cgroup:{mem_cgroup.path}", "sample_interval": "250ms"}}).start()
    m = scrape(d)
    assert m["ballast_scope_info"] == [({"scope": "cgroup", "cgroup": mem_cgroup.path}, 1.0)], m["ballast_scope_info"]
    for name in ("ballast_host_memory_total_bytes", "ballast_host_memory_available_bytes", "ballast_host_sample_ok"):
        assert [l["scope"] for l, _ in m[name]] == ["cgroup"], (name, m[name])
    assert value(m, "ballast_host_memory_total_bytes", scope="cgroup") == mem_cgroup.limit() == 256 * MiB
    assert d.host()["total_bytes"] == 256 * MiB


# --- the packaged rules and dashboard -------------------------------------------------------------


def test_promtool_check_rules():
    p = subprocess.run([promtool(), "check", "rules", RULES], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "SUCCESS" in p.stdout, p.stdout


def test_promtool_test_rules():
    p = subprocess.run([promtool(), "test", "rules", os.path.basename(RULES_TEST)], cwd=os.path.dirname(RULES_TEST),
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "SUCCESS" in p.stdout, p.stdout


def dashboard_exprs():
    with open(DASHBOARD) as f:
        dash = json.load(f)
    assert dash["uid"] and dash["title"] and dash["schemaVersion"] >= 30, dash.keys()
    exprs = []
    ids = set()
    cells = {}
    for p in dash["panels"]:
        assert p["id"] not in ids, f"duplicate panel id {p['id']}"
        ids.add(p["id"])
        g = p["gridPos"]
        assert {"h", "w", "x", "y"} <= g.keys() and g["x"] + g["w"] <= 24, p
        for cell in ((x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])):
            assert cell not in cells, f"panels {cells[cell]!r} and {p['title']!r} overlap"
            cells[cell] = p["title"]
        if p["type"] != "row":
            assert p["datasource"]["uid"] == "${datasource}" and p.get("targets"), p["title"]
        for t in p.get("targets", []):
            assert t["expr"].strip(), p["title"]
            exprs.append((p["title"], t["expr"]))
    for v in dash["templating"]["list"]:
        if v["type"] == "query":
            exprs.append((f"variable {v['name']}", v["query"]["query"]))
    assert len(exprs) >= 20, len(exprs)
    return exprs


def grafana_to_promql(e):
    """A dashboard query with Grafana's variables replaced, so that promtool can parse it."""
    e = re.sub(r"^label_values\((.*), *[a-z_]+\)$", r"\1", e)  # a variable's query: its selector
    return (e.replace("$__rate_interval", "5m").replace("$vm_size_mib", "512").replace("$job", ".*")
            .replace("$instance", ".*").replace("$vm", ".*"))


def test_dashboard_parses_and_its_queries_are_promql(tmp_path):
    """The JSON loads, and every query is valid PromQL (checked by promtool as recording rules)."""
    exprs = dashboard_exprs()
    rules = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard:q{i}", "expr": grafana_to_promql(e)} for i, (_, e) in enumerate(exprs)]}]}
    path = tmp_path / "dashboard-rules.yml"
    path.write_text(json.dumps(rules))  # JSON is YAML
    p = subprocess.run([promtool(), "check", "rules", str(path)], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stdout + p.stderr + "\n" + "\n".join(f"{t}: {e}" for t, e in exprs)


def metric_names(expr):
    """Metric names in a PromQL expression: ballast_* and process_* (label values are in quotes,
    and none of ours looks like a metric)."""
    unquoted = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    return set(re.findall(r"\b((?:ballast|process)_[a-zA-Z0-9_]+)\b", unquoted))


# --- with a real guest ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def live(vm_pool, ballastd):  # noqa: F811
    """A ballastd with one real 512 MiB guest registered, once its statistics have come in."""
    vm_pool.start([VM], VM_MIB)
    root = tempfile.mkdtemp(prefix="bm-", dir="/tmp")
    d = Daemon(root, "m", {"driver": {"stats_period": "1s"}}, ballastd)
    try:
        d.start()
        d.register(VM, vm_pool.qmp(VM), ASSIGNED, floor=FLOOR, expected_uid=os.geteuid())
        d.registered_at = time.monotonic()
        d.wait_status([VM], "ok", timeout=120)
        wait_until(lambda: value(scrape(d), "ballast_vm_guest_available_bytes", vm=VM), 120, 0.5,
                   "the guest's statistics in /metrics")
        yield d, vm_pool
        d.stop()
    finally:
        d.close()
        d.check_log()
        shutil.rmtree(root, ignore_errors=True)


def test_vm_series_agree_with_the_api(live):
    d, pool = live

    def agree():
        """One scrape between two identical GET /v1/vms (nothing moved meanwhile)."""
        v0 = d.vms()[VM]
        m = scrape(d)
        v1 = d.vms()[VM]
        return (v0, m) if v0 == v1 else None

    v, m = wait_until(agree, 60, 0.2, "a quiet moment to compare /metrics with GET /v1/vms")
    labels = {"vm": VM, "driver": "qemu"}
    assert m["ballast_vm_status"] == [(dict(labels, status=v["status"]), 1.0)], m["ballast_vm_status"]
    assert value(m, "ballast_vms") == 1
    assert value(m, "ballast_vm_assigned_bytes", **labels) == v["assigned_bytes"] == ASSIGNED
    assert value(m, "ballast_vm_configured_floor_bytes", **labels) == v["floor_bytes"] == FLOOR
    # The floor in force is the API's effective floor (floor_fraction 25% raises the 96 MiB given).
    assert value(m, "ballast_vm_floor_bytes", **labels) == v["effective_floor_bytes"], v
    assert v["effective_floor_bytes"] >= ASSIGNED // 4 > FLOOR, v
    assert value(m, "ballast_vm_target_bytes", **labels) == v["target_bytes"]
    assert value(m, "ballast_vm_actual_bytes", **labels) == v["actual_bytes"]
    assert abs(v["actual_bytes"] - pool.actual(VM)) <= TOL
    assert value(m, "ballast_vm_host_rss_bytes", **labels) == v["host_rss_bytes"]
    # Guest statistics: the API's figures, and plausible against the guest's own /proc/meminfo.
    g = v["guest"]
    assert value(m, "ballast_vm_guest_available_bytes", **labels) == g["available_bytes"], g
    assert value(m, "ballast_vm_guest_memory_total_bytes", **labels) == g["total_bytes"], g
    mi = pool.ctl.meminfo(VM)
    assert abs(g["total_bytes"] - mi["MemTotal"]) <= 64 * MiB, (g, mi["MemTotal"])
    assert 0 < value(m, "ballast_vm_guest_free_bytes", **labels) <= g["total_bytes"]
    for name in ("ballast_vm_guest_swap_in_bytes_total", "ballast_vm_guest_swap_out_bytes_total",
                 "ballast_vm_guest_major_faults_total", "ballast_vm_guest_minor_faults_total"):
        assert value(m, name, **labels) is not None, f"{name} missing: {sorted(m)}"
    assert value(m, "ballast_vm_guest_minor_faults_total", **labels) > 0  # it has run a while
    ts = value(m, "ballast_vm_guest_stats_timestamp_seconds", **labels)
    assert abs(ts - time.time()) <= 60, ts
    assert value(m, "ballast_vm_guest_pressure", **labels) == (1 if g["pressure"] else 0)


def test_time_to_target_counts_from_the_command(live):
    """A manual move's observation is at most the time from the command to the scrape that shows
    it, however long ago the VM was registered (it used to count from registration)."""
    d, pool = live
    wait_until(lambda: time.monotonic() - d.registered_at >= 10, 30, 0.5, "the registration to be 10 s old")
    d.wait_vms(lambda v: abs(v[VM]["actual_bytes"] - v[VM]["target_bytes"]) <= TOL, 60, "the VM to be settled")
    m0 = scrape(d)
    c0 = value(m0, "ballast_time_to_target_seconds_count")
    s0 = value(m0, "ballast_time_to_target_seconds_sum")
    target = ASSIGNED - 128 * MiB
    t_put = time.monotonic()
    assert d.request("PUT", f"/v1/vms/{VM}/target", {"target_bytes": target}).status == 200
    d.wait_vms(lambda v: abs(v[VM]["actual_bytes"] - target) <= TOL, 120, "the VM to reach its new target")
    moved = time.monotonic() - t_put
    m1 = wait_until(lambda: (lambda m: m if value(m, "ballast_time_to_target_seconds_count") > c0 else None)(scrape(d)),
                    30, 0.1, "the move in ballast_time_to_target_seconds")
    window = time.monotonic() - t_put
    dc = value(m1, "ballast_time_to_target_seconds_count") - c0
    ds = value(m1, "ballast_time_to_target_seconds_sum") - s0
    since_reg = time.monotonic() - d.registered_at
    print(f"move: {moved:.2f} s to reach; {dc:.0f} observation(s) summing {ds:.3f} s; registered {since_reg:.1f} s ago")
    # Every observation began after the command, one VM moves once at a time: they fit in the window.
    assert 0 < ds <= window + 0.5, (ds, window, since_reg)
    assert since_reg >= window + 5, "the check would not tell a clock started at registration"
    # The move itself: well under the 30 s bucket, and its bucket is one of the small ones.
    buckets = {l["le"]: v for l, v in m1["ballast_time_to_target_seconds_bucket"]}
    buckets0 = {l["le"]: v for l, v in m0["ballast_time_to_target_seconds_bucket"]}
    assert buckets["30"] - buckets0["30"] == dc, (buckets, buckets0)


def test_dashboard_and_rules_use_only_exported_metrics(live):
    """Every metric name in the dashboard and the alert rules is in a live scrape (with a real VM,
    so the per-VM and guest series are there)."""
    d, _ = live
    r = d.request("GET", "/metrics")
    exported = set(parse(r.body.decode()))
    used = {}
    for title, e in dashboard_exprs():
        for n in metric_names(e):
            used.setdefault(n, []).append(f"dashboard: {title}")
    with open(RULES) as f:
        text = f.read()
    for e in re.findall(r"expr: *(\|\n(?: {10}.*\n)+|.*)", text):
        for n in metric_names(e):
            used.setdefault(n, []).append("rules")
    assert len(used) >= 25, sorted(used)
    missing = {n: w for n, w in used.items() if n not in exported}
    assert not missing, f"used but not exported: {missing}"
    # And promtool's own lint of the exposition (names, units, _total on counters).
    p = subprocess.run([promtool(), "check", "metrics"], input=r.body, capture_output=True, timeout=60)
    assert p.returncode == 0, (p.stdout + p.stderr).decode()
    # The docs list every family the daemon exports.
    with open(os.path.join(SRC, "docs", "metrics.md")) as f:
        doc = f.read()
    families = {re.sub(r"_(bucket|sum|count)$", "", n) if n.startswith(("ballast_time", "ballast_reaction")) else n
                for n in exported}
    undocumented = sorted(n for n in families if f"`{n}`" not in doc)
    assert not undocumented, f"not in docs/metrics.md: {undocumented}"
    assert glob.glob(DASHBOARD)
