# SPDX-License-Identifier: MIT
"""B4 end to end with real QEMU guests and ballastd: parking an idle VM gives the host its memory
back and unparking answers before the guest has it again (B4.1, B4.2); a guest whose live data is
bigger than the park size is left where it stalled, its process and data intact (B4.1); the warm
pool that ballastctl runs itself (B4.3, `ballastctl pool`); parking state across a daemon restart
(B7). Effects are read where they happen: QEMU's balloon (query-balloon on the VM's qmp-ctl.sock,
with our own QMP client), QEMU's VmRSS in /proc, and the guest's own /proc/meminfo, /proc/vmstat
and dmesg through the agent. Figures are printed (run pytest with -s to see them)."""

import json
import os
import subprocess
import threading
import time

import pytest

from conftest import CTL, MiB, rss_bytes, settled_rss, wait_until
from conftest_daemon import Qmp, ballastd, daemons  # noqa: F401 (fixtures)

ASSIGNED = 512 * MiB
PARK = 128 * MiB
TOL = 16 * MiB  # the daemon's [driver] tolerance


@pytest.fixture(scope="module", autouse=True)
def ballastctl_built():
    if not os.access(CTL, os.X_OK):
        msg = f"ballastctl is not built: {CTL} does not exist"
        if os.environ.get("BALLAST_REQUIRE_VM"):
            pytest.fail(msg)
        pytest.skip(msg)


def qmp_ctl(ctl, name):
    return os.path.join(ctl.json("vm", "info", name)["dir"], "qmp-ctl.sock")


class BalloonWatch(threading.Thread):
    """Polls QEMU's actual every ~5 ms on qmp-ctl.sock and notes (monotonic time, actual)."""

    def __init__(self, path):
        super().__init__(daemon=True)
        self.q = Qmp(path)
        self.samples = []
        self.stop_ev = threading.Event()
        self.error = None

    def run(self):
        try:
            while not self.stop_ev.is_set():
                self.samples.append((time.monotonic(), self.q.actual()))
                self.stop_ev.wait(0.005)
        except Exception as e:  # reported by the test
            self.error = e

    def first(self, pred, after=0.0):
        for t, a in list(self.samples):
            if t >= after and pred(a):
                return t, a
        return None

    def stop(self):
        self.stop_ev.set()
        self.join(10)
        self.q.close()
        assert self.error is None, f"QMP watch failed: {self.error!r}"


# --- helpers ---------------------------------------------------------------------------------


def boot(ctl, name, *opts):
    out = ctl.json("vm", "start", name, "--memory", f"{ASSIGNED // MiB}M", *opts, "--boot-timeout", "180s",
                   timeout=240)
    assert out["ready"], out
    return out


def guest(ctl, name):
    """(meminfo, vmstat) of the guest, from its agent."""
    m = ctl.agent(name, "meminfo")
    return m["meminfo"], m["vmstat"]


def guest_size(ctl, name, offset):
    """The guest's own view of its size, and its meminfo: MemTotal plus what its kernel keeps out
    of it (offset, measured at boot), less the pages its balloon driver holds (/proc/vmstat
    balloon_inflate - balloon_deflate) when they still count in MemTotal (deflate-on-oom on; with
    it off MemTotal itself shrinks)."""
    mi, _ = guest(ctl, name)
    p = ctl.run("vm", "exec", name, "--", "cat", "/proc/vmstat")
    vs = dict(l.split() for l in p.stdout.splitlines() if l.strip())
    balloon = (int(vs["balloon_inflate"]) - int(vs["balloon_deflate"])) * 4096
    full_total = ASSIGNED - offset
    # deflate-on-oom off: MemTotal itself shrank by the balloon; on: it did not.
    in_total = balloon if abs(mi["MemTotal"] - full_total) <= TOL else 0
    return mi["MemTotal"] + offset - in_total, mi


def guest_oom_report(ctl, name):
    """The guest's oom_kill counter and any OOM lines of its kernel log."""
    _, vs = guest(ctl, name)
    p = ctl.run("vm", "exec", name, "--", "dmesg", check=False)
    lines = [l for l in p.stdout.splitlines() if "Out of memory" in l or "oom-kill" in l or "invoked oom-killer" in l]
    return vs["oom_kill"], lines


def register(d, ctl, name, **kw):
    sock = os.path.join(ctl.json("vm", "info", name)["dir"], "qmp.sock")
    v = d.register(name, sock, ASSIGNED, expected_uid=os.geteuid(), **kw)
    assert v["id"] == name, v
    vms = d.wait_vms(lambda v: v.get(name, {}).get("status") == "ok" and v[name]["actual_bytes"] is not None, 60,
                     f"{name} adopted")
    return vms[name]


def post(d, path, body=None, timeout=120):
    """POST with our own timing: (answer JSON, seconds the round trip took, monotonic time of the answer)."""
    t0 = time.monotonic()
    r = d.request("POST", path, body, timeout=timeout)
    t1 = time.monotonic()
    assert r.status == 200, f"POST {path} {json.dumps(body)}: {r!r}"
    return r.json, t1 - t0, t1


def fmt(b):
    return f"{b / MiB:.1f} MiB"


# --- 1. park an idle VM, unpark it -------------------------------------------------------------


def test_park_idle_vm_returns_host_memory_and_unpark_is_immediate(ctl, daemons):  # noqa: F811
    """An idle 512 MiB guest that has used and freed 300 MiB (free page reporting off: the host
    still holds that memory) is parked at 128 MiB: QEMU's actual, the API and the guest itself
    (MemTotal less its balloon) say 128 MiB (within 16 MiB), and QEMU's RSS falls by at least 200 MiB. Unpark answers
    `sent` before the guest has its memory back; the guest is at full size within 5 s, and a fill
    of 80% of its full size started right after the unpark succeeds without an OOM kill."""
    name = "pk1"
    boot(ctl, name, "--free-page-reporting", "off")
    pid = ctl.qemu_pid(name)
    mi, vs0 = guest(ctl, name)
    offset = ASSIGNED - mi["MemTotal"]  # what the guest kernel keeps out of MemTotal
    rss_boot = settled_rss(pid)
    warm = ctl.agent(name, "fill", "300", "--no-hold", timeout=300)
    assert warm["ok"], warm
    rss_before = settled_rss(pid)
    assert rss_before - rss_boot >= 200 * MiB, \
        f"the guest's 300 MiB fill did not make QEMU resident: RSS {fmt(rss_boot)} -> {fmt(rss_before)}"

    d = daemons().start()
    v = register(d, ctl, name)
    assert v["parked"] is False and v["hypervisor_pid"] == pid, v

    # Park, watching QEMU's actual ourselves.
    watch = BalloonWatch(qmp_ctl(ctl, name))
    watch.start()
    try:
        t_req = time.monotonic()
        ans, rtt, t_ans = post(d, f"/v1/vms/{name}/park", {"size_bytes": PARK}, timeout=120)
        time.sleep(0.05)  # a few more samples after the answer
    finally:
        watch.stop()
    assert ans["vm"] == name and ans["result"] == "reached", ans
    assert ans["previous_bytes"] == ASSIGNED and ans["target_bytes"] == PARK, ans
    assert abs(ans["reached_bytes"] - PARK) <= TOL, ans
    reached = watch.first(lambda a: abs(a - PARK) <= TOL, after=t_req)
    assert reached, f"QEMU's actual never got within 16 MiB of 128 MiB: last {watch.samples[-3:]}"
    t_reached = reached[0]
    notice_ms = (t_ans - t_reached) * 1000
    print(f"\npark: {fmt(ASSIGNED)} -> {fmt(ans['reached_bytes'])} in {ans['elapsed_ms']:.0f} ms (daemon), "
          f"{rtt * 1000:.0f} ms round trip; QEMU within tolerance {(t_reached - t_req) * 1000:.0f} ms after the "
          f"request; answer {notice_ms:.0f} ms after QEMU got there (our 5 ms QMP poll: +/- 10 ms)")

    # Everyone agrees on 128 MiB.
    with_q = Qmp(qmp_ctl(ctl, name))
    try:
        actual = with_q.actual()
    finally:
        with_q.close()
    assert abs(actual - PARK) <= TOL, f"QEMU's actual after the park: {fmt(actual)}"
    v = d.vm(name)
    assert v["parked"] is True and v["status"] == "parked" and v["park_previous_bytes"] == ASSIGNED, v
    assert abs(v["actual_bytes"] - PARK) <= TOL and v["target_bytes"] == PARK, v
    size, mi = guest_size(ctl, name, offset)
    assert abs(size - PARK) <= TOL, f"the guest sees itself at {fmt(size)} ({mi})"
    assert mi["MemAvailable"] < PARK, f"the parked guest still has {fmt(mi['MemAvailable'])} available"

    # The host has the memory back: QEMU's RSS, in /proc and as the daemon reports it.
    rss_after = settled_rss(pid)
    returned = rss_before - rss_after
    print(f"park: QEMU RSS {fmt(rss_before)} -> {fmt(rss_after)}: {fmt(returned)} returned to the host")
    assert returned >= 200 * MiB, f"QEMU's RSS fell by only {fmt(returned)}: {fmt(rss_before)} -> {fmt(rss_after)}"
    vv = d.wait_vms(lambda v: v[name]["host_rss_bytes"] is not None
                    and abs(v[name]["host_rss_bytes"] - rss_bytes(pid)) <= 32 * MiB, 10,
                    "host_rss_bytes to match QEMU's VmRSS")
    print(f"park: the API's host_rss_bytes {fmt(vv[name]['host_rss_bytes'])}")
    # B1.6's figure (completion noticed within 50 ms); asserted loosely on this loaded machine.
    assert notice_ms <= 500, f"the park answer came {notice_ms:.0f} ms after QEMU reached the target"

    # Unpark: the answer comes at once, before the guest has its memory.
    watch = BalloonWatch(qmp_ctl(ctl, name))
    watch.start()
    fill = None
    try:
        t_req = time.monotonic()
        ans, rtt, t_ans = post(d, f"/v1/vms/{name}/unpark", {}, timeout=30)
        # Right after the answer: an 80% fill in the guest (a workload starting at once).
        fill_t0 = time.monotonic()
        fill = ctl.agent(name, "fill", str(ASSIGNED * 8 // 10 // MiB), timeout=300)
        fill_s = time.monotonic() - fill_t0

        def full():
            size, _ = guest_size(ctl, name, offset)
            return size if size >= ASSIGNED - TOL else None

        size_full = wait_until(full, 30, 0.05, "the guest's own size back at 512 MiB")
        t_guest_full = time.monotonic()
        wait_until(lambda: watch.first(lambda a: a >= ASSIGNED - TOL, after=t_req), 30, 0.05,
                   "QEMU's actual back at 512 MiB")
    finally:
        watch.stop()
    assert ans["result"] == "sent" and ans["target_bytes"] == ASSIGNED, ans
    assert ans["reached_bytes"] <= PARK + TOL, f"unpark answered with the guest already at {fmt(ans['reached_bytes'])}"
    first_after = watch.first(lambda a: True, after=t_ans)
    t_full = watch.first(lambda a: a >= ASSIGNED - TOL, after=t_req)[0]
    print(f"unpark: answered 'sent' in {ans['elapsed_ms']:.1f} ms (daemon), {rtt * 1000:.1f} ms round trip; "
          f"QEMU's actual {fmt(first_after[1])} {(first_after[0] - t_ans) * 1000:.0f} ms after the answer, "
          f"512 MiB after {(t_full - t_req) * 1000:.0f} ms; the guest's own size full after "
          f"{(t_guest_full - t_req) * 1000:.0f} ms; fill of {ASSIGNED * 8 // 10 // MiB} MiB took {fill_s:.1f} s")
    assert t_ans < t_full, "unpark answered only after the guest had its memory (it should not wait)"
    assert first_after[1] < ASSIGNED - TOL, \
        f"QEMU's actual was already {fmt(first_after[1])} right after the answer: cannot tell the unpark did not wait"
    assert t_full - t_req <= 5, f"the guest took {t_full - t_req:.1f} s to get its memory back"
    assert size_full >= ASSIGNED - TOL
    assert fill["ok"], f"the 80% fill after the unpark failed: {fill}"
    ver = ctl.agent(name, "verify", str(fill["handle"]), timeout=300)
    assert ver["ok"] and ver["bad_pages"] == 0, ver
    assert ctl.agent(name, "release", str(fill["handle"]))["ok"]
    oom, lines = guest_oom_report(ctl, name)
    assert oom == vs0["oom_kill"] and not lines, f"OOM kill in the guest: oom_kill {vs0['oom_kill']} -> {oom}\n" \
                                                 + "\n".join(lines)
    v = d.vm(name)
    assert v["parked"] is False and v["status"] != "parked" and v["park_previous_bytes"] is None, v
    assert v["protected_until"] is not None, f"an unparked VM is protected from reclaim for a while: {v}"
    d.stop()


# --- 2. a working set bigger than the park size ------------------------------------------------


@pytest.mark.parametrize("deflate_on_oom", ["on", "off"])
def test_park_stalls_above_live_data_and_the_guest_survives(ctl, daemons, deflate_on_oom):  # noqa: F811
    """A guest holding 300 MiB of live data with swap off is parked at 128 MiB: the park stops
    where the guest can go no lower and answers `stalled` with the size reached (> 300 MiB); the
    VM stays there (never pushed further), the fill process survives, its data verifies, no OOM
    kill happens in the guest, and the guest still runs commands. Run with the balloon's
    deflate-on-oom on (the launcher's default) and off (Cloud Hypervisor's and Firecracker's
    default; nothing in the guest then gives memory back by itself: only the controller can keep
    it out of OOM)."""
    name = "pk2"
    boot(ctl, name, "--deflate-on-oom", deflate_on_oom)
    ctl.run("vm", "exec", name, "--", "sh", "-c", "swapoff -a 2>/dev/null; swapoff /dev/zram0 2>/dev/null; true")
    mi, vs0 = guest(ctl, name)
    assert mi["SwapTotal"] == 0, f"swap is still on: {mi}"
    held = ctl.agent(name, "fill", "300", timeout=300)
    assert held["ok"], held
    handle = str(held["handle"])

    d = daemons().start()
    register(d, ctl, name)
    ans, rtt, _ = post(d, f"/v1/vms/{name}/park", {"size_bytes": PARK, "timeout": "90s"}, timeout=150)
    print(f"\npark of a guest holding 300 MiB (deflate-on-oom {deflate_on_oom}): {ans}, {rtt:.1f} s")
    assert ans["result"] == "stalled", f"expected a stalled park: {ans}"
    # The park aimed at 128 MiB, or, knowing the guest's working set from its statistics, at that
    # set plus a margin (the answer's target says which, its message why).
    assert PARK <= ans["target_bytes"] < ASSIGNED and ans["previous_bytes"] == ASSIGNED, ans
    assert 300 * MiB < ans["reached_bytes"] < ASSIGNED - TOL, ans
    # Right after the answer: is the process still there? (ping does not fork in the guest.)
    up_answer = ctl.agent(name, "ping")["uptime_ms"] / 1000
    ver_answer = ctl.agent(name, "verify", handle, timeout=300, check=False)
    v = d.vm(name)
    assert v["parked"] is True and v["status"] == "parked", v
    # Re-synced where it stopped (plus room to live when it ran out; more if the guest then shows
    # pressure): never below where it stalled, never above its full size.
    assert ans["reached_bytes"] - TOL <= v["target_bytes"] <= ASSIGNED, \
        f"the target is below where the guest stopped: {v}"

    # Left where it stalled: watch it for a few seconds, QEMU's own figure.
    q = Qmp(qmp_ctl(ctl, name))
    try:
        lowest, end = None, time.monotonic() + 5
        while time.monotonic() < end:
            a = q.actual()
            lowest = a if lowest is None else min(lowest, a)
            time.sleep(0.1)
    finally:
        q.close()
    assert lowest >= ans["reached_bytes"] - TOL, f"pushed further after the stall: {fmt(lowest)}"

    failures = []
    if not (ver_answer.get("ok") and ver_answer.get("bad_pages") == 0):
        failures.append(f"right after the park answer the held fill does not verify: {ver_answer}")
    ver = ctl.agent(name, "verify", handle, timeout=300, check=False)
    if not (ver.get("ok") and ver.get("bad_pages") == 0):
        failures.append(f"5 s later the held fill does not verify: {ver}")
    oom, lines = guest_oom_report(ctl, name)
    if oom != vs0["oom_kill"] or lines:
        failures.append(f"OOM kill in the guest: oom_kill {vs0['oom_kill']} -> {oom} (the park answered at guest "
                        f"uptime {up_answer:.2f} s)\n" + "\n".join(lines[-4:]))
    ex = ctl.run("vm", "exec", name, "--", "true", check=False)
    if ex.returncode != 0:
        failures.append(f"the guest cannot run a command after the park: {ex.returncode} {ex.stderr}")
    mi, _ = guest(ctl, name)
    print(f"after the park: guest MemAvailable {fmt(mi['MemAvailable'])}, MemFree {fmt(mi['MemFree'])}; "
          f"API {d.vm(name)['actual_bytes'] / MiB:.0f} MiB")
    assert not failures, "parking pushed the guest into OOM (B4.1):\n" + "\n".join(failures) + \
        f"\npark answer: {ans}\n{d.log_tail(20)}"

    # And it comes back.
    ans, _, _ = post(d, f"/v1/vms/{name}/unpark", {"wait": True, "timeout": "60s"}, timeout=90)
    assert ans["result"] == "reached" and abs(ans["reached_bytes"] - ASSIGNED) <= TOL, ans
    assert ctl.agent(name, "release", handle)["ok"]
    d.stop()


# --- 3. the warm pool --------------------------------------------------------------------------


def pool_status(ctl, pool):
    return ctl.json("pool", "status", pool)


def ballastctl_procs(run_dir):
    """ballastctl processes working on run_dir (the pool's background workers)."""
    found = []
    want = f"BALLAST_RUN_DIR={run_dir}".encode()
    for d in os.listdir("/proc"):
        if not d.isdigit() or int(d) == os.getpid():
            continue
        try:
            with open(f"/proc/{d}/comm") as f:
                if f.read().strip() != "ballastctl":
                    continue
            with open(f"/proc/{d}/environ", "rb") as f:
                if want in f.read().split(b"\0"):
                    found.append(int(d))
        except OSError:
            continue
    return found


def test_pool_fill_acquire_refill_release_drain(ctl, daemons):  # noqa: F811
    """`ballastctl pool fill` boots 3 VMs and parks them (registered with ballastd); `pool acquire`
    hands out a parked VM unparked (an exec works at once) with ballast's part under 100 ms, two
    concurrent acquires never get the same VM, an acquire with nothing parked fails with a clear
    message, the pool refills itself to 3 parked VMs, `pool release` unregisters and stops a VM,
    and `pool drain` leaves no VM, no registration and no state behind."""
    d = daemons().start()
    ctl.env["BALLAST_API"] = d.socket
    pool = "tp"
    try:
        t0 = time.monotonic()
        out = ctl.json("pool", "fill", pool, "--count", "3", "--memory", "512M", "--park-size", "128M",
                       "--boot-timeout", "180s", timeout=400)
        fill_s = time.monotonic() - t0
        assert out["parked"] == 3 and out["count"] == 3, out
        members = {m["vm"]: m for m in out["members"]}
        assert set(members) == {f"{pool}-0", f"{pool}-1", f"{pool}-2"}, members
        vms = d.vms()
        for n, m in members.items():
            assert m["state"] == "parked" and m["park_result"] == "reached", m
            v = vms[n]
            assert v["parked"] and v["status"] == "parked" and v["assigned_bytes"] == ASSIGNED, v
            assert v["expected_uid"] == os.geteuid() and v["socket"].endswith(f"/{n}/qmp.sock"), v
            assert abs(v["actual_bytes"] - PARK) <= TOL, v
        print(f"\npool fill: 3 VMs booted and parked in {fill_s:.1f} s; boot/park ms: "
              + ", ".join(f"{n} {m['boot_ms']:.0f}/{m['park_ms']:.0f}" for n, m in sorted(members.items())))

        # Acquire: a usable VM, fast.
        t0 = time.monotonic()
        a = ctl.json("pool", "acquire", pool)
        cli_ms = (time.monotonic() - t0) * 1000
        vm = a["vm"]
        assert vm in members and a["result"] == "sent", a
        ex = ctl.run("vm", "exec", vm, "--", "cat", "/proc/meminfo")
        assert "MemTotal" in ex.stdout
        exec_ms = (time.monotonic() - t0) * 1000 - cli_ms
        print(f"pool acquire: {vm}, unpark {a['unpark_ms']:.1f} ms (daemon {a['daemon_ms']:.1f} ms), "
              f"{a['total_ms']:.1f} ms in ballastctl, {cli_ms:.0f} ms for the whole command; "
              f"an exec right after took {exec_ms:.0f} ms")
        assert a["unpark_ms"] < 100, a
        assert a["total_ms"] < 1000, a
        v = d.vm(vm)
        assert v["parked"] is False and v["target_bytes"] == ASSIGNED, v

        # Two at once: different VMs.
        procs = [subprocess.Popen([CTL, "--json", "pool", "acquire", pool], env=ctl.env, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True) for _ in range(2)]
        outs = [p.communicate(timeout=60) for p in procs]
        assert all(p.returncode == 0 for p in procs), outs
        got = [json.loads(o)["vm"] for o, _ in outs]
        assert len(set(got + [vm])) == 3, f"the same VM was handed out twice: {vm}, {got}"
        in_use = [vm] + got

        # Nothing parked now (replacements take seconds to boot): a clear error.
        p = ctl.run("pool", "acquire", pool, check=False)
        assert p.returncode == 1 and "no parked VM available" in p.stderr, (p.returncode, p.stdout, p.stderr)

        # The pool refills itself to 3 parked VMs.
        t0 = time.monotonic()
        st = wait_until(lambda: (lambda s: s if s["parked"] == 3 and s["booting"] == 0 else None)(
            pool_status(ctl, pool)), 300, 0.5, "the pool to have 3 parked VMs again")
        print(f"pool refill: 3 parked again {time.monotonic() - t0:.1f} s after the last acquire")
        parked = [m["vm"] for m in st["members"] if m["state"] == "parked"]
        assert not set(parked) & set(in_use), st
        assert sorted(m["vm"] for m in st["members"] if m["state"] == "in_use") == sorted(in_use), st
        vms = d.vms()
        for n in parked:
            assert vms[n]["parked"] and abs(vms[n]["actual_bytes"] - PARK) <= TOL, vms[n]
        for n in in_use:
            assert not vms[n]["parked"], vms[n]

        # Release: unregistered, stopped, and the pool stays at 3 parked.
        ctl.run("pool", "release", pool, in_use[0])
        assert d.request("GET", f"/v1/vms/{in_use[0]}").status == 404
        assert ctl.run("vm", "info", in_use[0], check=False).returncode != 0
        st = pool_status(ctl, pool)
        assert in_use[0] not in {m["vm"] for m in st["members"]}, st
        assert ctl.run("pool", "release", pool, "nope-9", check=False).returncode == 1

        # One more acquire starts a replacement; drain while it boots stops it too.
        assert ctl.json("pool", "acquire", pool)["vm"] in parked
        wait_until(lambda: pool_status(ctl, pool)["booting"] >= 1 or None, 30, 0.05, "a replacement booting")
    finally:
        t0 = time.monotonic()
        dr = ctl.run("pool", "drain", pool, check=False, timeout=300)
        print(f"pool drain: {dr.stdout.strip()} ({(time.monotonic() - t0):.1f} s)")
        left = ballastctl_procs(ctl.run_dir)
        for pid in left:  # never leave a worker behind, even when the drain failed
            try:
                os.kill(pid, 9)
            except ProcessLookupError:
                pass
    assert dr.returncode == 0, (dr.stdout, dr.stderr)
    assert not left, f"pool workers left running after the drain: {left}"
    assert ctl.json("vm", "list") == [], "VMs left after the drain"
    assert d.vms() == {}, "registrations left after the drain"
    assert not os.path.exists(os.path.join(ctl.run_dir, f"pool-{pool}.json"))
    p = ctl.run("pool", "acquire", pool, check=False)
    assert p.returncode == 1 and "no pool named" in p.stderr, p.stderr
    d.stop()


# --- 4. parking survives a restart -------------------------------------------------------------


def test_parking_survives_daemon_restart(ctl, daemons):  # noqa: F811
    """A parked VM is still parked after ballastd restarts (SIGTERM, then also SIGKILL): GET
    /v1/vms says parked with its previous size, QEMU stays at the park size (the daemon neither
    re-inflates nor gives it back by itself), and an unpark after the restart gives back the size
    it had before the park."""
    name = "pk4"
    boot(ctl, name)
    d = daemons().start()
    register(d, ctl, name)
    ans, _, _ = post(d, f"/v1/vms/{name}/park", {"size_bytes": PARK}, timeout=120)
    assert ans["result"] == "reached", ans

    def still_parked(how):
        v = d.wait_vms(lambda v: name in v and v[name]["actual_bytes"] is not None, 60, f"{name} re-adopted")[name]
        assert v["parked"] is True and v["status"] == "parked", f"after {how}: {v}"
        assert v["park_previous_bytes"] == ASSIGNED, f"after {how}: {v}"
        assert abs(v["target_bytes"] - PARK) <= TOL and abs(v["actual_bytes"] - PARK) <= TOL, f"after {how}: {v}"
        # Stays there for a while (the controller runs its ticks meanwhile).
        q = Qmp(qmp_ctl(ctl, name))
        try:
            end = time.monotonic() + 3
            while time.monotonic() < end:
                a = q.actual()
                assert abs(a - PARK) <= TOL, f"after {how}: QEMU moved to {fmt(a)}"
                time.sleep(0.1)
        finally:
            q.close()
        assert d.vm(name)["parked"] is True

    d.stop()
    d.start()
    still_parked("a SIGTERM restart")
    d.kill()
    d.start()
    still_parked("a SIGKILL restart")

    ans, _, _ = post(d, f"/v1/vms/{name}/unpark", {"wait": True, "timeout": "60s"}, timeout=90)
    assert ans["result"] == "reached" and ans["target_bytes"] == ASSIGNED, ans
    assert abs(ans["reached_bytes"] - ASSIGNED) <= TOL, ans
    v = d.vm(name)
    assert v["parked"] is False and v["protected_until"] is not None, v
    d.stop()
