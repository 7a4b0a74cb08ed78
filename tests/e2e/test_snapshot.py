# SPDX-License-Identifier: MIT
"""Snapshot and restore of launcher VMs (`ballastctl vm snapshot`, `vm start --restore`) on real
QEMU guests, checked as Firecracker checks its balloon across a snapshot: after the restore the
guest's statistics go on updating, an inflate lowers QEMU's RSS (/proc/PID/status), the guest
dirtying memory raises it and the next inflate lowers it again; memory the guest held before the
snapshot holds the same bytes after it. ballastd keeps a registered VM through a snapshot and a
restore: it adopts the restored QEMU on the same socket path with its floor, the fleet's hold and
a park intact. Plus the command's modes (paused, --resume, --stop) and its refusals."""

import os
import tempfile
import time

import pytest

from conftest import IMAGE, MiB, rss_bytes, settled_rss, wait_until
from conftest_daemon import ballastd, daemons  # noqa: F401 (fixtures)
from daemon import parse_time
from test_parking import Qmp, qmp_ctl

ASSIGNED = 512 * MiB
TOL = 16 * MiB


@pytest.fixture
def snapdir():
    d = tempfile.mkdtemp(prefix="bsnap-", dir="/var/tmp")
    try:
        yield d
    finally:
        for f in os.listdir(d):
            os.unlink(os.path.join(d, f))
        os.rmdir(d)


def boot(ctl, name, *opts):
    out = ctl.json("vm", "start", name, "--memory", f"{ASSIGNED // MiB}M", *opts, "--boot-timeout", "180s",
                   timeout=240)
    assert out["ready"], out
    return out


def snapshot(ctl, name, path, *opts):
    out = ctl.json("vm", "snapshot", name, path, *opts, timeout=400)
    assert out["bytes"] == os.path.getsize(path), out
    with open(path, "rb") as f:
        assert f.read(19) == b"BALLAST-SNAPSHOT 1\n"
    return out


def restore(ctl, name, path, *opts):
    out = ctl.json("vm", "start", name, "--restore", path, "--boot-timeout", "120s", *opts, timeout=400)
    assert out["ready"], out
    return out


def stats(ctl, name):
    return ctl.json("balloon", "stats", "--vm", name)


def balloon_set(ctl, name, mib):
    out = ctl.json("balloon", "set", "--vm", name, "--wait", "--timeout", "120s", f"{mib}M", check=False, timeout=200)
    assert out["result"] in ("reached", "stalled"), out
    return out


def fmt(b):
    return f"{b / MiB:.0f} MiB"


# --- 1. the balloon after a restore (Firecracker's test_balloon_snapshot) -------------------------


def test_balloon_works_after_restore(ctl, snapdir):
    """A guest holding 150 MiB of patterned memory is snapshotted at a ballooned 384 MiB and
    restored: the balloon is where it was, the held memory holds the same bytes, the statistics
    the guest reports are newer than the restore and keep coming; then on the restored QEMU an
    inflate lowers its RSS, the guest dirtying 300 MiB raises it, and the next inflate lowers it
    again. Free page reporting is off so that only the balloon returns memory."""
    name = "sn1"
    boot(ctl, name, "--free-page-reporting", "off", "--stats-period", "1")
    held = ctl.agent(name, "fill", "150", "--seed", "7", timeout=300)
    assert held["ok"], held
    balloon_set(ctl, name, 384)
    before = ctl.actual(name)
    path = os.path.join(snapdir, "sn1.snap")
    t_snap = time.time()
    snap = snapshot(ctl, name, path, "--stop")
    assert snap["vm"] == "stopped" and abs(snap["balloon_actual"] - before) <= TOL, snap
    assert ctl.json("vm", "list") == [], "the VM was not stopped after --stop"
    print(f"\nsnapshot of a 512 MiB guest at {fmt(before)}: {fmt(snap['bytes'])} in {snap['seconds']:.2f} s")

    out = restore(ctl, name, path)
    pid = out["qemu_pid"]
    print(f"restored in {out['seconds']:.2f} s (loaded in {out['load_seconds']:.2f} s)")
    # Restored QEMU runs without transparent huge pages (docs/launcher.md).
    with open(f"/proc/{pid}/status") as f:
        assert "THP_enabled:\t0" in f.read(), "the restored QEMU has transparent huge pages"
    # The balloon's state came with the stream: same target, same actual, nothing re-inflated.
    assert abs(ctl.actual(name) - before) <= TOL, (ctl.actual(name), before)
    # The guest's memory came with it too: the held child's pages hold the same pattern.
    v = ctl.agent(name, "verify", str(held["handle"]), timeout=300)
    assert v["ok"] and v["checksum"] == held["checksum"], v

    # Statistics: the restored QEMU keeps polling at the snapshot's period (1 s) and the guest
    # answers with newer timestamps.
    s1 = wait_until(lambda: (lambda s: s if s["last_update"] > t_snap and s["period"] == 1 else None)(stats(ctl, name)),
                    60, 0.5, "guest statistics newer than the snapshot")
    s2 = wait_until(lambda: (lambda s: s if s["last_update"] > s1["last_update"] else None)(stats(ctl, name)),
                    30, 0.5, "the next guest statistics")
    assert s2["total"] > 0 and s2["available"] > 0, s2

    # Inflate lowers RSS. The guest frees its 150 MiB, then the balloon takes all but 160 MiB.
    r = ctl.agent(name, "release", str(held["handle"]))
    assert r["ok"], r
    rss0 = settled_rss(pid)
    balloon_set(ctl, name, 160)
    rss1 = settled_rss(pid)
    print(f"restored QEMU RSS: {fmt(rss0)}; after inflating to 160 MiB {fmt(rss1)}")
    assert rss0 - rss1 >= 100 * MiB, f"inflating 384 -> 160 MiB did not lower RSS: {fmt(rss0)} -> {fmt(rss1)}"

    # Dirtying raises it: give the guest its memory back and let it write 300 MiB.
    balloon_set(ctl, name, 512)
    rss2 = settled_rss(pid)
    dirty = ctl.agent(name, "fill", "300", "--seed", "9", timeout=300)
    assert dirty["ok"], dirty
    rss3 = settled_rss(pid)
    print(f"deflated: {fmt(rss2)}; after the guest dirtied 300 MiB {fmt(rss3)}")
    assert rss3 - rss2 >= 100 * MiB, f"the guest's 300 MiB did not raise RSS: {fmt(rss2)} -> {fmt(rss3)}"

    # And the next inflate lowers it again.
    r = ctl.agent(name, "release", str(dirty["handle"]))
    assert r["ok"], r
    balloon_set(ctl, name, 160)
    rss4 = settled_rss(pid)
    print(f"inflated again to 160 MiB: {fmt(rss4)}")
    assert rss3 - rss4 >= 100 * MiB, f"the second inflate did not lower RSS: {fmt(rss3)} -> {fmt(rss4)}"
    assert rss_bytes(pid) > 0


# --- 2. modes and refusals ---------------------------------------------------------------------


def qmp_status(ctl, name):
    q = Qmp(qmp_ctl(ctl, name))
    try:
        return q.cmd("query-status")["status"]
    finally:
        q.close()


def test_snapshot_modes_and_refusals(ctl, snapdir):
    """Without an option the VM stays paused (its agent does not answer) until 'vm resume';
    --resume runs it again at once; a snapshot that cannot be written leaves the VM running and
    no file; a restore refuses a file that is not a snapshot, a name in use and options that would
    change the machine, and leaves nothing behind; one snapshot restores as several clones."""
    name = "sn2"
    boot(ctl, name)
    path = os.path.join(snapdir, "a.snap")
    out = snapshot(ctl, name, path)
    assert out["vm"] == "paused", out
    assert qmp_status(ctl, name) == "postmigrate"
    p = ctl.run("vm", "snapshot", name, os.path.join(snapdir, "again.snap"), check=False)
    assert p.returncode == 1 and "paused after a snapshot" in p.stderr, p.stderr
    p = ctl.run("vm", "exec", name, "--timeout", "2s", "--", "true", check=False, timeout=60)
    assert p.returncode != 0, "a paused guest answered"
    ctl.run("vm", "resume", name)
    assert qmp_status(ctl, name) == "running"
    assert ctl.run("vm", "exec", name, "--", "true").returncode == 0

    out = snapshot(ctl, name, path, "--resume")
    assert out["vm"] == "running" and qmp_status(ctl, name) == "running", out

    # A file that cannot be written: an error naming it, the VM runs, nothing is left.
    p = ctl.run("vm", "snapshot", name, os.path.join(snapdir, "no", "such.snap"), check=False)
    assert p.returncode == 1 and "No such file or directory" in p.stderr, p.stderr
    assert qmp_status(ctl, name) == "running"
    assert sorted(os.listdir(snapdir)) == ["a.snap"]
    p = ctl.run("vm", "snapshot", "nosuchvm", path, check=False)
    assert p.returncode == 1 and "no VM named 'nosuchvm'" in p.stderr, p.stderr
    p = ctl.run("vm", "snapshot", name, check=False)
    assert p.returncode == 2, p.stderr
    p = ctl.run("vm", "snapshot", name, path, "--stop", "--resume", check=False)
    assert p.returncode == 2 and "exclude" in p.stderr, p.stderr

    # Refused restores leave no VM directory and no QEMU.
    junk = os.path.join(snapdir, "junk.snap")
    with open(junk, "wb") as f:
        f.write(b"not a snapshot\n" * 10000)
    p = ctl.run("vm", "start", "sn2b", "--restore", junk, check=False)
    assert p.returncode == 1 and "not a ballast snapshot" in p.stderr, p.stderr
    truncated = os.path.join(snapdir, "short.snap")
    with open(path, "rb") as f, open(truncated, "wb") as g:
        g.write(f.read(65536 + 1024 * 1024))
    p = ctl.run("vm", "start", "sn2c", "--restore", truncated, check=False, timeout=300)
    assert p.returncode == 1 and "cannot restore VM 'sn2c'" in p.stderr, p.stderr
    print(f"\ntruncated snapshot: {p.stderr.strip()}")
    p = ctl.run("vm", "start", name, "--restore", path, check=False)
    assert p.returncode == 1 and "already running" in p.stderr, p.stderr
    p = ctl.run("vm", "start", "sn2d", "--restore", path, "--memory", "1G", check=False)
    assert p.returncode == 2 and "--memory cannot be used with --restore" in p.stderr, p.stderr
    p = ctl.run("vm", "start", "sn2e", "--restore", os.path.join(snapdir, "missing"), check=False)
    assert p.returncode == 1 and "cannot open snapshot" in p.stderr, p.stderr
    assert [v["name"] for v in ctl.json("vm", "list")] == [name]
    p = ctl.run("vm", "start", "sn2f", "--restore", path, "--image", "/nonexistent", check=False)
    assert p.returncode == 1 and "no guest image in '/nonexistent'" in p.stderr, p.stderr
    for d in ("sn2b", "sn2c", "sn2d", "sn2e", "sn2f"):
        assert not os.path.exists(os.path.join(ctl.run_dir, d)), f"a refused restore left {d}"

    # Clones: the same snapshot twice more, next to the original.
    for clone, opts in (("sn2x", ()), ("sn2y", ("--image", IMAGE))):
        out = restore(ctl, clone, path, *opts)
        assert ctl.json("vm", "info", clone)["state"] == "running"
        assert ctl.run("vm", "exec", clone, "--", "true").returncode == 0
    assert [v["name"] for v in ctl.json("vm", "list")] == [name, "sn2x", "sn2y"]


# --- 3. ballastd keeps a registered VM through snapshot and restore ------------------------------


def test_ballastd_keeps_vm_through_snapshot_and_restore(ctl, daemons, snapdir):  # noqa: F811
    """A VM registered with a 256 MiB floor, held at that floor by a fleet hold, is snapshotted and
    stopped, then restored under the same name: ballastd adopts the new QEMU on the same socket
    path (hypervisor_pid changes, status ok) with its floor and the hold as they were, and the guest
    still at the held size; clearing the hold gives the restored guest its memory back through
    ballastd. Then parked, snapshotted and restored, it is still parked, and an unpark brings it
    back to full size."""
    name = "sn3"
    boot(ctl, name)  # no statistics polling of its own: ballastd turns it on (2 s)
    d = daemons().start()
    sock = os.path.join(ctl.json("vm", "info", name)["dir"], "qmp.sock")
    d.register(name, sock, ASSIGNED, floor=256 * MiB, expected_uid=os.geteuid())
    v = d.wait_vms(lambda v: v[name]["status"] == "ok" and v[name]["actual_bytes"] is not None, 60, "adopted")[name]
    pid0 = v["hypervisor_pid"]

    held = d.reclaim(2 << 30, hold_for="10m", reason="snapshot test")
    assert held["hold_until"], held
    v = d.wait_vms(lambda v: abs(v[name]["actual_bytes"] - 256 * MiB) <= TOL, 120, "held at the floor")[name]
    hold0 = d.host()["hold"]
    assert hold0 and hold0["bytes"] == 2 << 30, hold0

    path = os.path.join(snapdir, "sn3.snap")
    snapshot(ctl, name, path, "--stop")
    restore(ctl, name, path)
    t_restored, t_restored_rt = time.monotonic(), time.time()
    pid1 = ctl.qemu_pid(name)
    assert pid1 != pid0
    v = d.wait_vms(lambda v: v[name]["status"] == "ok" and v[name]["hypervisor_pid"] == pid1, 120,
                   "the restored VM adopted")[name]
    t_adopted = time.monotonic() - t_restored
    assert v["floor_bytes"] == 256 * MiB and v["assigned_bytes"] == ASSIGNED, v
    assert abs(v["actual_bytes"] - 256 * MiB) <= TOL and abs(v["target_bytes"] - 256 * MiB) <= TOL, v
    assert abs(ctl.actual(name) - 256 * MiB) <= TOL
    # The guest's statistics reach ballastd again, newer than the restore, polled at a pace ballastd
    # set (qom-set, not on QEMU's command line, which had none): its configured 2 s, or 1 s as it
    # polls a shrunk VM (this one is held at its floor); the snapshot's header carries the pace
    # and ballastd sets it again on the new QEMU.
    st = wait_until(lambda: (lambda r: r if r["last_update"] and parse_time(r["last_update"]) >= int(t_restored_rt)
                             else None)(d.get(f"/v1/vms/{name}/stats")), 60, 0.5, "guest statistics after the restore")
    assert st["stats"]["period_s"] in (1, 2) and st["stats"]["total_bytes"], st
    # ...and keep coming (the guest pushes one report when it is restored, polled or not).
    wait_until(lambda: parse_time(d.get(f"/v1/vms/{name}/stats")["last_update"]) > parse_time(st["last_update"]),
               30, 0.5, "the next guest statistics")
    hold1 = d.host()["hold"]
    assert hold1 and hold1["bytes"] == hold0["bytes"] and hold1["until"] == hold0["until"], (hold0, hold1)
    print(f"\nre-adopted {t_adopted:.1f} s after the restore: pid {pid0} -> {pid1}, "
          f"{v['actual_bytes'] / MiB:.0f} MiB, hold {hold1}")

    # The restored VM answers ballastd's commands: clearing the hold gives its memory back.
    d.reclaim(0)
    d.wait_vms(lambda v: v[name]["actual_bytes"] >= ASSIGNED - TOL, 120, "given back after the hold")
    assert ctl.actual(name) >= ASSIGNED - TOL

    # Parked through a snapshot.
    r = d.ok("POST", f"/v1/vms/{name}/park", {"size_bytes": 160 * MiB}, timeout=120)
    assert r["result"] in ("reached", "stalled"), r
    parked_at = ctl.actual(name)
    snapshot(ctl, name, path, "--stop")
    restore(ctl, name, path)
    pid2 = ctl.qemu_pid(name)
    v = d.wait_vms(lambda v: v[name]["hypervisor_pid"] == pid2 and v[name]["status"] == "parked", 120,
                   "the restored VM adopted as parked")[name]
    assert v["parked"] and abs(v["actual_bytes"] - parked_at) <= TOL, v
    r = d.ok("POST", f"/v1/vms/{name}/unpark", {"wait": True}, timeout=120)
    assert r["result"] == "reached", r
    assert ctl.actual(name) >= ASSIGNED - TOL
    assert d.vm(name)["status"] == "ok"
