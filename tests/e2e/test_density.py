# SPDX-License-Identifier: MIT
"""bench/density stays alive: a two-VM, one-mode run of about half a minute (ballastd watching a
memory cgroup, the trace's first jobs replayed through the guest agent), then its CSVs are read
back: the time series and the summary exist with their columns, usage never exceeds the limit,
jobs were done, and the harness left no QEMU process, run directory or cgroup behind."""

import csv
import os
import subprocess
import sys
import tempfile

import pytest

from conftest import BUILD, CTL, IMAGE, SRC, qemu_pids_under
from conftest_daemon import CGROUP_V1_ROOT, ballastd  # noqa: F401 (fixture)

DENSITY = os.path.join(SRC, "bench", "density")
PREFIX = "bt-dn-"  # under test_zz_hygiene's watch (/tmp/bt-*)


@pytest.fixture
def density_env(image, ballastd):  # noqa: F811
    def skip(msg):
        if os.environ.get("BALLAST_REQUIRE_VM"):
            pytest.fail(msg)
        pytest.skip(msg)

    if os.geteuid() != 0:
        skip("bench/density needs root (it creates a memory cgroup)")
    if not os.path.exists(os.path.join(CGROUP_V1_ROOT, "memory.usage_in_bytes")):
        skip(f"no cgroup v1 memory hierarchy at {CGROUP_V1_ROOT}")
    if not os.access(CTL, os.X_OK):
        skip(f"ballastctl is not built: {CTL} does not exist")
    out = tempfile.mkdtemp(prefix="bd-density-", dir="/tmp")
    try:
        yield out
    finally:
        # Whatever happened, nothing of the harness may survive it.
        subprocess.run(["rm", "-rf", out])
        for d in os.listdir("/tmp"):
            if d.startswith(PREFIX):
                subprocess.run([CTL, "vm", "stop", "--all", "--grace", "2s"], capture_output=True, timeout=60,
                               env=dict(os.environ, BALLAST_RUN_DIR=os.path.join("/tmp", d)))
                subprocess.run(["rm", "-rf", os.path.join("/tmp", d)])
        for d in os.listdir(CGROUP_V1_ROOT):
            if d.startswith("ballast-density-"):
                try:
                    os.rmdir(os.path.join(CGROUP_V1_ROOT, d))
                except OSError:
                    pass


def rows(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def test_density_two_vm_run(density_env):
    out = density_env
    argv = [sys.executable, DENSITY, "--modes", "ballastd", "--counts", "ballastd=2", "--repeat", "1",
            "--duration", "25", "--settle", "3", "--max-vms", "2", "--no-baseline", "--tmp-prefix", PREFIX, "--out", out]
    env = dict(os.environ, BALLAST_BUILDDIR=BUILD, BALLAST_IMAGE_DIR=IMAGE)
    p = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=240)
    assert p.returncode == 0, f"{' '.join(argv)} exited {p.returncode}\n{p.stdout}\n{p.stderr}"

    ts = rows(os.path.join(out, "ballastd-n2-r1.csv"))
    assert len(ts) >= 30, f"only {len(ts)} samples in 25 s"
    for col in ("t", "cg_usage_mib", "cg_limit_mib", "cg_oom_kill", "host_cpu_pct", "daemon_state",
                "v0_actual_mib", "v0_rss_mib", "v1_actual_mib", "v1_rss_mib", "v1_pswpin", "v1_oom_kill"):
        assert col in ts[0], f"column {col} missing: {list(ts[0])}"
    for r in ts:
        assert float(r["cg_usage_mib"]) <= float(r["cg_limit_mib"]), r
        assert float(r["cg_limit_mib"]) == 1536, r
    assert any(r["v0_rss_mib"] and float(r["v0_rss_mib"]) > 50 for r in ts), "no QEMU RSS sampled for v0"
    assert any(r["v1_actual_mib"] and float(r["v1_actual_mib"]) > 100 for r in ts), "no balloon actual for v1"
    assert {r["daemon_state"] for r in ts} <= {"healthy", "pressure", "critical"}, {r["daemon_state"] for r in ts}

    ev = rows(os.path.join(out, "ballastd-n2-r1-events.csv"))
    assert any(e["event"] == "job_start" for e in ev), ev

    summ = rows(os.path.join(out, "summary.csv"))
    assert len(summ) == 1, summ
    s = summ[0]
    for col in ("mode", "count", "vms_hosted", "jobs_done", "slowdown_p50", "slowdown_p99", "guest_oom_kills",
                "cgroup_oom_kills", "qemu_deaths", "guest_swapins", "usage_avg_mib", "usage_peak_mib",
                "reclaim_efficiency", "relief_s_median", "giveback_s_median", "host_cpu_avg_pct"):
        assert col in s, f"summary column {col} missing: {list(s)}"
    assert s["mode"] == "ballastd" and int(s["vms_hosted"]) == 2, s
    assert int(s["jobs_done"]) > 0, s
    assert float(s["usage_peak_mib"]) <= float(s["limit_mib"]), s
    assert int(s["cgroup_oom_kills"]) == 0 and int(s["qemu_deaths"]) == 0, s
    assert os.path.exists(os.path.join(out, "modes.csv"))
    assert os.path.getsize(os.path.join(out, "ballastd-n2-r1-ballastd.log")) > 0

    assert not [d for d in os.listdir("/tmp") if d.startswith(PREFIX)], "run directories left behind"
    assert not qemu_pids_under("/tmp/" + PREFIX), "QEMU left running"
    assert not [d for d in os.listdir(CGROUP_V1_ROOT) if d.startswith("ballast-density-")], "cgroup left behind"
