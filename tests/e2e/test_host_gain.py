# SPDX-License-Identifier: MIT
"""Reclaim that frees host memory, on real VMs. Two 512 MiB QEMU guests live in one memory cgroup
(v1) that ballastd watches; each has dirtied and freed 300 MiB:

- `gfpr` has free page reporting on: the guest returned its freed memory to the host by itself,
  so shrinking its balloon would return nothing more;
- `ghold` has it off: the host still holds the 300 MiB the guest freed.

ballastd must see the difference (each VM's resident guest memory, the hypervisor's own overhead
excluded, agreeing with the test's own reading of QEMU's RAM mapping in /proc/PID/smaps), count it
in the admission hint, and when the cgroup is pushed under its low watermark take the memory from
`ghold`, where the host gets it back, and leave `gfpr` alone ("no-gain"). The host's own figures
(the cgroup's usage, QEMU's RSS) must show the gain, and ballastd's `reached` must be host memory,
not balloon size."""

import time

import pytest

from conftest import MiB, wait_until
from conftest_daemon import VmPool, ballastd, daemons, mem_cgroup  # noqa: F401 (fixtures)

FPR, HELD = "gfpr", "ghold"
NAMES = [FPR, HELD]
ASSIGNED = 512 * MiB
FLOOR = 128 * MiB


@pytest.fixture
def pool(image, ballastd, mem_cgroup):  # noqa: F811
    p = VmPool()
    try:
        yield p
    finally:
        p.close()


def ram_rss(pid, size=ASSIGNED):
    """Resident bytes of QEMU's guest RAM mapping (the rw-p mapping of the guest's size)."""
    cur = None
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            parts = line.split()
            if "-" in parts[0] and len(parts) >= 5 and all(c in "0123456789abcdef-" for c in parts[0]):
                cur = parts[1]
            elif parts[0] == "Size:" and cur:
                sz = int(parts[1]) * 1024
                if not (cur.startswith("rw") and "x" not in cur and sz == size):
                    cur = None
            elif parts[0] == "Rss:" and cur:
                return int(parts[1]) * 1024
    raise AssertionError(f"no guest RAM mapping of {size} bytes in /proc/{pid}/smaps")


def vm_rss(pid):
    with open(f"/proc/{pid}/status") as f:
        return int(f.read().split("VmRSS:")[1].split()[0]) * 1024


def test_reclaim_goes_where_the_host_gains(mem_cgroup, pool, daemons):  # noqa: F811
    cg = mem_cgroup
    pool.start([FPR], ASSIGNED // MiB, "--free-page-reporting", "on", cgroup=cg.path)
    pool.start([HELD], ASSIGNED // MiB, "--free-page-reporting", "off", cgroup=cg.path)
    for n in NAMES:
        w = pool.ctl.agent(n, "fill", "300", "--no-hold", timeout=300)
        assert w["ok"], w
    pid = {n: pool.vms[n]["qemu_pid"] for n in NAMES}

    # Free page reporting hands the freed memory back within seconds; wait for the guests to settle.
    def settled():
        a = {n: ram_rss(pid[n]) for n in NAMES}
        return a if a[HELD] - a[FPR] >= 150 * MiB else None

    ram = wait_until(settled, 60, 0.5, "the FPR guest's freed memory back on the host")
    print(f"guest RAM resident (smaps): {({n: ram[n] // MiB for n in NAMES})} MiB; "
          f"VmRSS {({n: vm_rss(pid[n]) // MiB for n in NAMES})} MiB")

    usage = cg.usage()
    limit = (int(usage / 0.70) + MiB - 1) // MiB * MiB
    cg.set_limit(limit)
    d = daemons({"pressure": {"scope": f"cgroup:{cg.path}", "sample_interval": "250ms"}}).start()
    for n in NAMES:
        d.register(n, pool.qmp(n), ASSIGNED, floor=FLOOR)
    d.wait_status(NAMES, "ok", timeout=60)

    # 1. ballastd's resident guest memory: VmRSS less the hypervisor's own memory, as smaps says.
    def known():
        vms = d.vms()
        return vms if all(vms[n]["resident_bytes"] for n in NAMES) else None

    vms = wait_until(known, 60, 0.5, "resident_bytes known for both VMs")
    for n in NAMES:
        v = vms[n]
        assert v["resident_bytes"] < v["host_rss_bytes"], v
        assert abs(v["resident_bytes"] - ram_rss(pid[n])) <= 48 * MiB, (n, v["resident_bytes"], ram_rss(pid[n]))
    assert vms[HELD]["resident_bytes"] - vms[FPR]["resident_bytes"] >= 120 * MiB, vms

    # 2. The admission hint counts what really comes back: the held guest's resident memory above
    # its floor, not its size.
    cap = d.get("/v1/capacity?size=512M")
    vms = d.vms()
    g = vms[HELD]["guest"]
    # The floor the plan uses: the configured one, or the guest's use plus the 128 MiB guest margin.
    floor_held = max(FLOOR, (g["used_bytes"] or 0) + 128 * MiB if g["fresh"] else 0)
    assert cap["returnable_bytes"] <= sum(max(vms[n]["resident_bytes"] - FLOOR, 0) for n in NAMES) + 32 * MiB, cap
    assert cap["returnable_bytes"] >= vms[HELD]["resident_bytes"] - floor_held - 64 * MiB, (cap, vms[HELD])
    assert cap["returnable_bytes"] < 2 * (ASSIGNED - FLOOR), cap
    # A new VM costs its size plus what QEMU keeps beside guest RAM, as measured on these two.
    over = max(vms[n]["host_rss_bytes"] - vms[n]["resident_bytes"] for n in NAMES)
    assert 16 * MiB < cap["overhead_bytes"] and abs(cap["overhead_bytes"] - over) <= 32 * MiB, (cap, over)
    assert cap["fit"] == (cap["free_bytes"] + cap["returnable_bytes"]) // (512 * MiB + cap["overhead_bytes"]), cap

    # 3. Pressure: the cgroup's limit set so that 7% is available (low watermark 10%).
    rss0 = {n: vm_rss(pid[n]) for n in NAMES}
    usage0 = cg.usage()
    limit = (int(usage0 / 0.93) + MiB - 1) // MiB * MiB
    cg.set_limit(limit)
    t0 = time.time()

    def relieved():
        return cg.available() >= 0.15 * limit or None

    try:
        wait_until(relieved, 90, 0.25, "the cgroup back at its 15% high watermark")
    except AssertionError as e:
        raise AssertionError(f"{e}\nhost {d.host()}\nvms {d.vms()}\n{d.log_tail(40)}") from None
    took = time.time() - t0

    # Once the balloon has landed and ballastd has re-read QEMU's RSS (every second while memory
    # moves), its `reached` is what the host got back.
    def settled_gain():
        v = d.vms()[HELD]
        rc = d.host()["reclaim"]
        fell = rss0[HELD] - vm_rss(pid[HELD])
        if abs(v["actual_bytes"] - v["target_bytes"]) > 16 * MiB or abs(rc["reached_bytes"] - fell) > 48 * MiB:
            return None
        return rc

    try:
        rc = wait_until(settled_gain, 60, 0.5, "ballastd's reached agreeing with QEMU's RSS")
    except AssertionError as e:
        raise AssertionError(f"{e}\nhost {d.host()}\nvms {d.vms()}\n{d.log_tail(40)}") from None
    vms = d.vms()
    gain = {n: rss0[n] - vm_rss(pid[n]) for n in NAMES}
    print(f"relieved in {took:.1f} s; targets {({n: vms[n]['target_bytes'] // MiB for n in NAMES})} MiB, reasons "
          f"{({n: vms[n]['reason'] for n in NAMES})}; QEMU RSS fell {({n: gain[n] // MiB for n in NAMES})} MiB; "
          f"reclaim {({k: v for k, v in rc.items() if v})}")
    # Taken where the host gains: the held guest, not the one whose free memory is already back.
    assert vms[HELD]["target_bytes"] < ASSIGNED - 32 * MiB, vms[HELD]
    assert vms[FPR]["target_bytes"] == ASSIGNED, vms[FPR]
    assert vms[FPR]["reason"] in ("no-gain", "unchanged"), vms[FPR]
    assert gain[HELD] >= 0.05 * limit, gain
    # reached is host memory (what QEMU's RSS gave back), next to the balloon's side.
    assert rc["reached_bytes"] > 0 and rc["guest_reached_bytes"] > 0, rc
    assert rc["reached_bytes"] <= rc["guest_reached_bytes"] + 32 * MiB, rc
    assert rc["efficiency"] is not None and rc["efficiency"] >= 0.8, rc
    assert cg.oom_control().get("oom_kill", 0) == 0
    d.stop()
