# SPDX-License-Identifier: MIT
"""B5 with a mixed fleet: ballastd's pressure scenario over three hypervisors at once. One real QEMU
VM (512 MiB) lives in a memory cgroup (v1) with a memory hog; a Firecracker VM and a Cloud
Hypervisor VM (their protocol-faithful peers, tests/peers/fc-peer and chv-peer, 1 GiB each: the
real programs need KVM) are registered with the same daemon, whose pressure scope is that cgroup.

When the hog pushes the cgroup's available memory under the low watermark, the reclaim must reach
the QEMU VM, whose balloon returns host memory, and the peers when it cannot cover the gap alone (as
GET /v1/vms says and as each hypervisor itself says: QEMU's query-balloon on qmp-ctl.sock and the
guest's MemTotal, the peers' own GET /balloon/statistics and GET /api/v1/vm.info), the two alike
peers alike, until the cgroup is relieved; when the hog exits, all three get their memory back.

Only the QEMU guest's balloon gives the cgroup memory back (the peers simulate a guest, they hold
none), so the daemon reclaims in rounds until QEMU's share closes the gap: the peers give more
than a real fleet would, at the same split.

Needs root (cgroups), a cgroup v1 memory hierarchy, the guest image, QEMU, ballastd and the peers:
skips loudly without them, or fails when BALLAST_REQUIRE_VM is set."""

import ctypes
import json
import os
import select
import shutil
import signal
import subprocess
import tempfile
import threading
import time

import pytest

from conftest import BUILD, MiB, wait_until
from conftest_daemon import VmPool, ballastd, daemons, hogs, mem_cgroup  # noqa: F401 (fixtures)
from daemon import http_request

GiB = 1 << 30
TOL = 16 * MiB
DEAD_BAND = 32 * MiB
REQUIRE = bool(os.environ.get("BALLAST_REQUIRE_VM"))

# The fleet. Headroom (assigned - floor) is proportional to the shares, so that the water filling
# (B5.4) takes from all three at once in proportion to their shares and keeps above each floor
# memory proportional to the shares: QEMU (2000 shares) gives and keeps twice what FC and CHV
# (1000) do. The QEMU VM has the big share because only its balloon relieves the cgroup: half of
# every round of reclaim reaches the host. Its floor is above what its guest's statistics ask for
# (its use + the 128 MiB guest margin) and the daemon's floor_fraction (25%), and so are the
# peers': the configured floors are the effective ones.
QEMU, FC, CHV = "mq", "mf", "mc"
NAMES = [QEMU, FC, CHV]
DRIVER = {QEMU: "qemu", FC: "firecracker", CHV: "cloud-hypervisor"}
ASSIGNED = {QEMU: 512 * MiB, FC: 1 * GiB, CHV: 1 * GiB}
SHARES = {QEMU: 2000, FC: 1000, CHV: 1000}
HEAD_PER_1000 = 144 * MiB
FLOOR = {n: ASSIGNED[n] - HEAD_PER_1000 * SHARES[n] // 1000 for n in NAMES}  # 224, 880, 880 MiB
PEER_PACE_MIB_S = 512

# Watermarks wider than the defaults, so that the gap is large enough for every VM's share to be
# well above the 32 MiB dead band: the cgroup starts at 45% available, the hog takes it to 9%. The
# gap to the high watermark (23% of the limit, about 200 MiB) is more than the QEMU guest can give
# the host above its floor (its resident memory less 224 MiB, about 170 MiB), so the plan, which
# takes first where the host gains, must also ask the peers (whose size it takes as resident).
LOW, HIGH, CRITICAL = 0.20, 0.32, 0.05
START_AVAILABLE, HOG_DOWN_TO = 0.45, 0.09


def unavailable(msg):
    if REQUIRE:
        pytest.fail(msg + " (BALLAST_REQUIRE_VM is set)")
    pytest.skip(msg)


def mib(b):
    return "-" if b is None else f"{b / MiB:.0f}"


# --- the Firecracker and Cloud Hypervisor VMs (peers) ----------------------------------------

_libc = ctypes.CDLL(None, use_errno=True)


def _die_with_parent():
    _libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG: never outlive the test run


class PeerVm:
    """fc-peer or chv-peer as a process, and reads of its own state over its API socket."""

    def __init__(self, kind, path, mem, log_path):
        self.kind, self.path, self.mem = kind, path, mem
        exe = os.path.join(BUILD, "tests", "fc-peer" if kind == "firecracker" else "chv-peer")
        r, w = os.pipe()
        argv = [exe, path, "--pace-mib-per-s", str(PEER_PACE_MIB_S), "--ready-fd", str(w)]
        if kind == "firecracker":
            argv += ["--mem-mib", str(mem // MiB), "--stats-interval", "1"]
        else:
            argv += ["--mem", str(mem)]
        self.log = open(log_path, "ab")
        self.proc = subprocess.Popen(argv, pass_fds=(w,), stdin=subprocess.DEVNULL, stdout=self.log,
                                     stderr=self.log, preexec_fn=_die_with_parent)
        os.close(w)
        try:
            ready, _, _ = select.select([r], [], [], 30)
            ok = bool(ready) and os.read(r, 1) == b"R"
        finally:
            os.close(r)
        if not ok:
            self.close()
            raise AssertionError(f"{' '.join(argv)} did not start listening (exit {self.proc.poll()})")

    def get(self, path):
        r = http_request(self.path, "GET", path, timeout=10)
        assert r.status == 200 and r.json is not None, f"{self.kind} peer: GET {path}: {r!r}"
        return r.json

    def sizes(self):
        """(actual, target) guest bytes, in the hypervisor's own terms converted as docs/drivers.md says."""
        if self.kind == "firecracker":
            s = self.get("/balloon/statistics")
            return self.mem - s["actual_pages"] * 4096, self.mem - s["target_pages"] * 4096
        info = self.get("/api/v1/vm.info")
        return info["memory_actual_size"], self.mem - info["config"]["balloon"]["size"]

    def alive(self):
        return self.proc.poll() is None

    def close(self):
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(30)
        self.log.close()


@pytest.fixture
def peers():
    root = tempfile.mkdtemp(prefix="bt-mf-", dir="/tmp")
    made = []

    def make(kind, name, mem):
        exe = os.path.join(BUILD, "tests", "fc-peer" if kind == "firecracker" else "chv-peer")
        if not os.access(exe, os.X_OK):
            unavailable(f"the {kind} test peer is not built: {exe}")
        p = PeerVm(kind, os.path.join(root, f"{name}.sock"), mem, os.path.join(root, f"{name}.log"))
        made.append(p)
        return p

    try:
        yield make
    finally:
        for p in made:
            p.close()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def pool(image, ballastd, mem_cgroup):  # noqa: F811
    """The QEMU VM; stopped before the cgroup it lives in is removed."""
    p = VmPool()
    try:
        yield p
    finally:
        p.close()


# --- watching ----------------------------------------------------------------------------------


class Monitor(threading.Thread):
    """Until stopped, about every 150 ms: the cgroup's available memory, GET /v1/vms and GET /v1/host,
    and each hypervisor's own view of its VM (QEMU's query-balloon, the peers' APIs). A sample of a
    VM is "stable" when two GET /v1/vms around the hypervisor read agree and actual is at target:
    only then are the daemon's and the hypervisor's figures compared."""

    def __init__(self, cg, d, pool, peer_of):
        super().__init__(daemon=True)
        self.cg, self.d, self.pool, self.peer_of = cg, d, pool, peer_of
        self.stop_ev = threading.Event()
        self.samples = []  # (time, available, {id: vm}) from GET /v1/vms
        self.stable = {n: [] for n in NAMES}  # (time, api_actual, api_target, own_actual, own_target)
        self.states = set()
        self.errors = []

    def own(self, n):
        if n == QEMU:
            return self.pool.actual(QEMU), None
        return self.peer_of[n].sizes()

    def run(self):
        while not self.stop_ev.is_set():
            try:
                t = time.time()
                avail = self.cg.available()
                before = self.d.vms()
                own = {n: self.own(n) for n in NAMES}
                after = self.d.vms()
                self.samples.append((t, avail, after))
                self.states.add(self.d.host()["state"])
                for n in NAMES:
                    a, b = before[n], after[n]
                    if (a["actual_bytes"] is not None and a["actual_bytes"] == b["actual_bytes"]
                            and a["target_bytes"] == b["target_bytes"]
                            and abs(b["actual_bytes"] - b["target_bytes"]) <= TOL):
                        self.stable[n].append((t, b["actual_bytes"], b["target_bytes"], own[n][0], own[n][1]))
            except Exception as e:  # keep sampling; reported at the end
                self.errors.append(repr(e))
            self.stop_ev.wait(0.15)

    def stop(self):
        self.stop_ev.set()
        self.join(60)

    def qemu_below(self, vms):
        v = vms[QEMU]
        return v["target_bytes"] is not None and v["actual_bytes"] is not None and \
            v["target_bytes"] < ASSIGNED[QEMU] - DEAD_BAND and v["actual_bytes"] < ASSIGNED[QEMU] - DEAD_BAND

    def deepest(self, before):
        """The sample where the fleet had given the most (targets summed), among those taken before
        `before` where the QEMU VM was below its assigned size; of those with the same targets, the
        one where the balloons had moved the furthest (the first may catch them still moving)."""
        cands = [s for s in self.samples if s[0] < before and self.qemu_below(s[2])]
        if not cands:
            return None
        return min(cands, key=lambda s: (sum(s[2][n]["target_bytes"] for n in NAMES),
                                         sum(s[2][n]["actual_bytes"] for n in NAMES)))

    def trace(self, limit, every=1.0):
        out, last = [], 0
        t0 = self.samples[0][0] if self.samples else 0
        for t, a, v in list(self.samples):
            if t - last >= every:
                out.append(f"{t - t0:.0f}s: avail {a / limit * 100:.0f}% " +
                           " ".join(f"{n} {mib(v[n]['target_bytes'])}/{mib(v[n]['actual_bytes'])}" for n in NAMES))
                last = t
        return "\n".join(out)


def test_mixed_fleet_pressure_is_split_by_shares_and_given_back(mem_cgroup, pool, peers, daemons, hogs):  # noqa: F811
    cg = mem_cgroup
    # The QEMU guest, born inside the cgroup (memory.move_charge_at_immigrate cannot be set on this
    # kernel: QEMU must start there), free page reporting off; it dirties and frees 300 MiB, so that
    # the host holds free guest memory the balloon can give back.
    pool.start([QEMU], ASSIGNED[QEMU] // MiB, "--free-page-reporting", "off", cgroup=cg.path)
    assert pool.vms[QEMU]["qemu_pid"] in cg.procs(), (cg.procs(), pool.vms)
    fill = pool.ctl.agent(QEMU, "fill", "300", timeout=300)
    assert fill.get("ok") and "handle" in fill, fill
    rel = pool.ctl.agent(QEMU, "release", str(fill["handle"]), timeout=120)
    assert rel.get("ok"), rel

    def settled_usage():
        prev = cg.usage()
        for _ in range(50):
            time.sleep(0.3)
            cur = cg.usage()
            if abs(cur - prev) <= 2 * MiB:
                return cur
            prev = cur
        return cur

    used = settled_usage()
    limit = (int(used / (1 - START_AVAILABLE)) + MiB - 1) // MiB * MiB
    cg.set_limit(limit)
    assert cg.limit() == limit

    fc = peers("firecracker", FC, ASSIGNED[FC])
    chv = peers("cloud-hypervisor", CHV, ASSIGNED[CHV])
    peer_of = {FC: fc, CHV: chv}
    print(f"cgroup {cg.path}: QEMU VM using {used / MiB:.0f} MiB after its 300 MiB job; limit {limit / MiB:.0f} MiB "
          f"({cg.available() / limit * 100:.0f}% available); peers {fc.path}, {chv.path}")

    d = daemons({
        "pressure": {"scope": f"cgroup:{cg.path}", "sample_interval": "250ms"},
        "policy": {"low_watermark": f"{LOW:.0%}", "high_watermark": f"{HIGH:.0%}",
                   "critical_watermark": f"{CRITICAL:.0%}"},
        "driver": {"op_timeout": "5s", "stats_period": "1s"},
        "log": {"level": os.environ.get("BALLAST_TEST_LOG_LEVEL", "info")},
    }).start()
    sockets = {QEMU: pool.qmp(QEMU), FC: fc.path, CHV: chv.path}
    for n in NAMES:
        v = d.register(n, sockets[n], ASSIGNED[n], floor=FLOOR[n], shares=SHARES[n], driver=DRIVER[n],
                       expected_uid=os.geteuid())
        assert v["driver"] == DRIVER[n], v
    vms = d.wait_status(NAMES, "ok", timeout=60)
    h = d.host()
    assert h["scope"] == f"cgroup:{cg.path}" and h["total_bytes"] == limit, h
    assert h["state"] == "healthy", h
    for n in NAMES:
        assert vms[n]["target_bytes"] == ASSIGNED[n] and vms[n]["actual_bytes"] == ASSIGNED[n], vms[n]
        assert vms[n]["hypervisor_pid"], vms[n]
    assert vms[FC]["hypervisor_pid"] == fc.proc.pid and vms[CHV]["hypervisor_pid"] == chv.proc.pid, vms
    failcnt0 = cg.int("memory.failcnt")

    mon = Monitor(cg, d, pool, peer_of)
    mon.start()
    avail0 = cg.available()
    total = int(avail0 - HOG_DOWN_TO * limit) // (4 * MiB) * (4 * MiB)
    hog = hogs(cg.path, "--bytes", total, "--report-below", LOW, "--step", 4 * MiB, "--interval", 0.02)
    try:
        hog.wait_event("joined", 30)
        holding = hog.wait_event("holding", 120)
        t_hog = time.time()
        print(f"hog: {holding['allocated'] / MiB:.0f} MiB, cgroup available "
              f"{(holding['limit'] - holding['usage']) / limit * 100:.1f}% when it finished allocating")

        # 1. The reclaim reaches the QEMU VM, whose balloon is the one that returns host memory
        # (the plan takes first where the host gains; the peers are asked when it cannot cover the
        # gap alone, which depends on how far the hog got before ballastd reacted).
        try:
            d.wait_vms(mon.qemu_below, 120, "the QEMU VM's target and actual below its assigned size", interval=0.2)
        except AssertionError as e:
            raise AssertionError(f"{e}\n{mon.trace(limit, every=10)}\nhost {d.host()}") from None
        t_split = time.time()

        # 2. The cgroup is relieved with nobody OOM-killed: out of the zone under the low watermark
        # and at least halfway back to the high one. (Only the QEMU guest's balloon reaches the
        # cgroup, and once it is at its floor the peers' reclaim relieves nothing: it may stay short
        # of the high watermark.)
        relief_level = LOW + 0.5 * (HIGH - LOW)

        def relieved():
            return cg.available() >= relief_level * limit

        try:
            wait_until(relieved, 120, 0.1, f"cgroup available >= {relief_level:.1%} of {limit / MiB:.0f} MiB")
        except AssertionError as e:
            raise AssertionError(f"{e}\n{mon.trace(limit)}\nhost {d.host()}\n{d.log_tail(40)}") from None
        t_relief = time.time()
        try:
            wait_until(lambda: cg.available() >= HIGH * limit, 30, 0.1, "the high watermark")
            t_high = time.time()
        except AssertionError:
            t_high = None
        best = max([a for t, a, _ in mon.samples if t >= t_relief] or [cg.available()])
        assert hog.alive(), f"the hog died ({hog.proc.returncode}): OOM-killed?"
        oc = cg.oom_control()
        assert oc.get("oom_kill", 0) == 0 and oc["under_oom"] == 0, f"OOM in the cgroup: {oc}"
        assert cg.int("memory.failcnt") == failcnt0, "the cgroup hit its limit"
        guest_now = pool.guest_size(QEMU)
        assert guest_now < ASSIGNED[QEMU] - DEAD_BAND, \
            f"the QEMU guest's own size is {guest_now / MiB:.0f} MiB at relief: its balloon gave nothing"
        print(f"every VM below its assigned size {t_split - t_hog:+.1f} s from the hog holding; cgroup at "
              f"{relief_level:.1%} {t_relief - t_hog:+.1f} s, at the {HIGH:.0%} high watermark "
              + (f"{t_high - t_hog:+.1f} s" if t_high else f"never within 30 s more (best {best / limit:.2%})")
              + f"; QEMU guest's own size now {guest_now / MiB:.0f} MiB")

        # 3. The hog goes away: every VM gets its memory back, as the daemon and each hypervisor say.
        still = {n: v["target_bytes"] for n, v in d.vms().items() if v["target_bytes"] < ASSIGNED[n]}
        hog.release()
        t_exit = time.time()

        def all_back():
            vms = d.vms()
            if not all(vms[n]["target_bytes"] == ASSIGNED[n] and abs(vms[n]["actual_bytes"] - ASSIGNED[n]) <= TOL
                       for n in NAMES):
                return None
            own = {n: mon.own(n)[0] for n in NAMES}
            return (vms, own) if all(abs(own[n] - ASSIGNED[n]) <= TOL for n in NAMES) else None

        try:
            back_vms, back_own = wait_until(all_back, 90, 0.25, "every VM back at its assigned size")
        except AssertionError as e:
            raise AssertionError(f"{e}\n{mon.trace(limit)}\n{d.log_tail(40)}") from None
        t_back = time.time()
        guest_back = pool.guest_size(QEMU)
    finally:
        hog.kill()
        mon.stop()

    # --- what was seen ---
    print(mon.trace(limit))
    deep = mon.deepest(before=t_exit)
    assert deep is not None, "no sample with the QEMU VM below its assigned size"
    t_deep, avail_deep, vd = deep
    print("deepest split (MiB: assigned / floor / shares -> target, actual, desired; kept above floor per 1000 shares):")
    kept_per_share = {}
    for n in NAMES:
        v = vd[n]
        floor = v["effective_floor_bytes"]
        kept_per_share[n] = (v["desired_bytes"] - floor) / SHARES[n] * 1000
        print(f"  {n} ({DRIVER[n]}): {mib(ASSIGNED[n])} / {mib(floor)} / {SHARES[n]} -> {mib(v['target_bytes'])}, "
              f"{mib(v['actual_bytes'])}, {mib(v['desired_bytes'])}; reclaimed {mib(ASSIGNED[n] - v['actual_bytes'])}, "
              f"kept {mib(v['desired_bytes'] - floor)} ({kept_per_share[n] / MiB:.0f} per 1000 shares)")
    print(f"  cgroup available then {avail_deep / limit * 100:.1f}%, {t_deep - t_hog:+.1f} s from the hog holding; "
          f"states seen {sorted(mon.states)}")
    print(f"given back {t_back - t_exit:.1f} s after the hog exited (reclaimed at that moment: "
          f"{ {n: mib(ASSIGNED[n] - t) for n, t in still.items()} } MiB); QEMU guest's own size {guest_back / MiB:.0f} MiB; "
          f"own views {({n: mib(v) for n, v in back_own.items()})}")

    assert not mon.errors, mon.errors[:5]
    assert "pressure" in mon.states or "critical" in mon.states, mon.states

    # The QEMU VM gave well beyond the dead band; no VM went below its floor.
    assert ASSIGNED[QEMU] - vd[QEMU]["actual_bytes"] >= 2 * DEAD_BAND, vd[QEMU]
    for n in NAMES:
        v = vd[n]
        assert v["target_bytes"] >= v["effective_floor_bytes"] >= FLOOR[n], (n, v)

    # Shares: the plan water-fills what each VM can return to the host above its floor (docs/policy.md):
    # for the peers, which hold no guest memory, that is their size; for the QEMU VM, its resident
    # guest memory, which the test cannot predict to the MiB. So the two peers, alike in everything,
    # must keep the same above their floors, and every VM keeps something above its floor while the
    # QEMU VM, the only one whose balloon relieves the cgroup, gives more than either peer.
    kq, kf, kc = (vd[n]["desired_bytes"] - vd[n]["effective_floor_bytes"] for n in (QEMU, FC, CHV))
    assert kf >= 0 and abs(kc - kf) <= TOL, (kq, kf, kc)
    gq, gf, gc = (ASSIGNED[n] - vd[n]["target_bytes"] for n in (QEMU, FC, CHV))
    assert gq > gf and abs(gc - gf) <= TOL, f"reclaimed (targets) {gq / MiB:.0f}, {gf / MiB:.0f}, {gc / MiB:.0f} MiB"

    # Cross-checks: while a VM stood at its target, the daemon's actual is the hypervisor's own, and
    # the peers hold the target the daemon sent (converted: Firecracker rounds to MiB, Cloud
    # Hypervisor to pages, both in the guest's favour).
    for n in NAMES:
        reclaimed = [s for s in mon.stable[n] if s[1] < ASSIGNED[n] - DEAD_BAND]
        if n == QEMU:
            assert reclaimed, f"{n}: no stable sample while reclaimed ({len(mon.stable[n])} stable samples)"
        bad = [s for s in mon.stable[n] if abs(s[1] - s[3]) > TOL]
        assert not bad, f"{n}: the daemon's actual and the hypervisor's disagree: {bad[:5]}"
        if n != QEMU:
            unit = MiB if n == FC else 4096
            off = [s for s in mon.stable[n] if not (s[2] <= s[4] < s[2] + unit)]
            assert not off, f"{n}: the peer's target is not the daemon's (converted): {off[:5]}"
        print(f"{n}: {len(mon.stable[n])} stable samples agree with the hypervisor, {len(reclaimed)} while reclaimed "
              f"(lowest actual {mib(min(s[3] for s in reclaimed)) if reclaimed else '-'} MiB by the hypervisor's "
              f"own count)")
    # The QEMU guest itself saw it: smaller while reclaimed, whole again at the end.
    assert guest_back >= ASSIGNED[QEMU] - TOL, guest_back
    for n in NAMES:
        assert back_vms[n]["status"] == "ok", back_vms[n]
    assert fc.alive() and chv.alive()
    assert cg.oom_control().get("oom_kill", 0) == 0
    d.stop()
