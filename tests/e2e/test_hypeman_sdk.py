# SPDX-License-Identifier: MIT
"""hypeman compatibility, with hypeman's own client: the official TypeScript SDK (npm
@onkernel/hypeman, the exact version pinned in tests/sdk/package.json and package-lock.json) calls
`client.resources.reclaimMemory()` against a real ballastd over loopback TCP with bearer tokens, as
a hypeman deployment would (docs/api.md, `POST /resources/memory/reclaim`).

The SDK is installed with `npm ci` into the build directory ($BALLAST_BUILDDIR/hypeman-sdk; kept
while tests/sdk/ is unchanged, so later runs do not reinstall) and driven by tests/sdk/reclaim.js,
one call per run, which prints what the SDK returned or the error it raised.

ballastd has a fleet of five: a real QEMU guest (512 MiB, booted from the guest kit), the
protocol-faithful peers of QEMU, Firecracker and Cloud Hypervisor (tests/peers; the real programs
need KVM) and a VM whose socket does not exist. Checked through the SDK's returned objects, field
by field, against what ballastd and the hypervisors themselves say:
- a dry run: hypeman's MemoryReclaimResponse exactly (no other keys, no hold_until without a hold),
  the plan for each VM with hypeman's hypervisor names, nothing changed;
- a hold for the Go duration "1m30s": hold_until 90 s ahead, the targets applied (as GET /v1/vms
  and the hypervisors report: QEMU's own query-balloon, the peers' balloon state), a dry run then
  showing the hold;
- clearing it ("0s"): no hold_until, and every VM gets its memory back;
- bad input: the SDK raises BadRequestError (400) with ballast's message naming the field;
- a wrong token: AuthenticationError (401); a read-only token: PermissionDeniedError (403);
- /v1/memory/reclaim keeps ballast's own shape.

Without node/npm, or when the npm registry cannot be reached, the module is skipped with the reason
(it fails instead when BALLAST_REQUIRE_VM is set, as in CI); so it is without the guest image or
QEMU."""

import ctypes
import hashlib
import json
import os
import select
import shutil
import signal
import socket
import subprocess
import tempfile
import time

import pytest

from conftest import BUILD, MiB, wait_until
from conftest_daemon import ballastd, vm_pool  # noqa: F401 (fixtures)
from daemon import Daemon, GiB, http_request, parse_time

SRC = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SDK_SRC = os.path.join(SRC, "tests", "sdk")
SDK_DIR = os.path.join(BUILD, "hypeman-sdk")
REQUIRE = bool(os.environ.get("BALLAST_REQUIRE_VM"))

WRITE_TOKEN = "sdk-write-token-0123456789abcdef"
READ_TOKEN = "sdk-read-token-fedcba9876543210"

# hypeman's MemoryReclaimResponse and MemoryReclaimAction (the SDK's types).
RESPONSE_KEYS = {"requested_reclaim_bytes", "planned_reclaim_bytes", "applied_reclaim_bytes", "host_available_bytes",
                 "host_pressure_state", "actions"}
ACTION_KEYS = {"instance_id", "instance_name", "hypervisor", "assigned_memory_bytes", "protected_floor_bytes",
               "previous_target_guest_memory_bytes", "planned_target_guest_memory_bytes", "target_guest_memory_bytes",
               "applied_reclaim_bytes", "status"}

REAL, QPEER, FC, CHV, BROKEN = "real", "qpeer", "fcpeer", "chvpeer", "broken"
HYPERVISOR = {REAL: "qemu", QPEER: "qemu", FC: "firecracker", CHV: "cloud-hypervisor", BROKEN: "qemu"}
ASSIGNED = {REAL: 512 * MiB, QPEER: 1 * GiB, FC: 1 * GiB, CHV: 1 * GiB, BROKEN: 512 * MiB}
OK_VMS = [REAL, QPEER, FC, CHV]
# The peers' floors leave them 768 MiB in all to give, so that a hold of ASK also reaches the real
# guest (ballast takes first where the host gains, and a peer's whole size counts as resident).
PEER_FLOOR = 768 * MiB
ASK = 896 * MiB
TOL = 16 * MiB


def unavailable(msg):
    if REQUIRE:
        pytest.fail(msg + " (BALLAST_REQUIRE_VM is set: this must run)")
    pytest.skip(msg)


# --- the SDK ---------------------------------------------------------------------------------

def _sdk_stamp():
    h = hashlib.sha256()
    for name in ("package.json", "package-lock.json"):
        with open(os.path.join(SDK_SRC, name), "rb") as f:
            h.update(f.read())
    return h.hexdigest()


NETWORK_ERRORS = ("ENOTFOUND", "EAI_AGAIN", "ECONNREFUSED", "ECONNRESET", "ETIMEDOUT", "ENETUNREACH",
                  "EHOSTUNREACH", "network", "socket hang up", "proxy")


@pytest.fixture(scope="module")
def sdk():
    """The pinned SDK, installed with npm ci into the build directory (reused while tests/sdk/ is
    unchanged). Returns (node, NODE_PATH)."""
    node = shutil.which("node") or shutil.which("nodejs")
    npm = shutil.which("npm")
    if not node or not npm:
        unavailable("node and npm are needed for the hypeman SDK test (Debian packages nodejs and npm, "
                    "in scripts/deps); hypeman's own client is NOT being tested")
    v = subprocess.run([node, "--version"], capture_output=True, text=True, timeout=30).stdout.strip()
    if not v.startswith("v") or int(v[1:].split(".")[0]) < 18:
        unavailable(f"node {v} is too old for the hypeman SDK (18 or later: it uses the built-in fetch)")
    with open(os.path.join(SDK_SRC, "package.json")) as f:
        pinned = json.load(f)["dependencies"]["@onkernel/hypeman"]
    stamp_path = os.path.join(SDK_DIR, ".installed")
    stamp = _sdk_stamp()
    version_js = os.path.join(SDK_DIR, "node_modules", "@onkernel", "hypeman", "version.js")
    try:
        with open(stamp_path) as f:
            cached = f.read().strip() == stamp and os.path.exists(version_js)
    except FileNotFoundError:
        cached = False
    if not cached:
        shutil.rmtree(SDK_DIR, ignore_errors=True)
        os.makedirs(SDK_DIR)
        for name in ("package.json", "package-lock.json"):
            shutil.copy(os.path.join(SDK_SRC, name), SDK_DIR)
        env = dict(os.environ, npm_config_cache=os.path.join(SDK_DIR, ".npm-cache"), npm_config_update_notifier="false")
        t0 = time.monotonic()
        try:
            # --ignore-scripts: nothing of the SDK's dependency tree runs at install time (ssh2's
            # optional native build is not needed by the SDK's HTTP client).
            p = subprocess.run([npm, "ci", "--ignore-scripts", "--no-audit", "--no-fund", "--loglevel=error"],
                               cwd=SDK_DIR, env=env, capture_output=True, text=True, timeout=600)
        except subprocess.TimeoutExpired:
            shutil.rmtree(SDK_DIR, ignore_errors=True)
            unavailable("npm ci of the hypeman SDK took over 10 minutes (is the npm registry reachable?)")
        if p.returncode != 0:
            shutil.rmtree(SDK_DIR, ignore_errors=True)
            out = (p.stdout + p.stderr)[-2000:]
            if any(e in out for e in NETWORK_ERRORS):
                unavailable(f"the npm registry cannot be reached, so the hypeman SDK cannot be installed:\n{out}")
            pytest.fail(f"npm ci in {SDK_DIR} failed ({p.returncode}):\n{out}")
        with open(stamp_path, "w") as f:
            f.write(stamp + "\n")
        print(f"hypeman SDK {pinned} installed with npm ci in {time.monotonic() - t0:.1f} s")
    with open(version_js) as f:
        assert f"'{pinned}'" in f.read(), f"{SDK_DIR} does not hold @onkernel/hypeman {pinned}"
    return node, os.path.join(SDK_DIR, "node_modules")


def sdk_call(sdk, port, token, params):
    """client.resources.reclaimMemory(params) with that token; the SDK's result or error (dict)."""
    node, node_path = sdk
    arg = {"base_url": f"http://127.0.0.1:{port}", "api_key": token, "params": params}
    p = subprocess.run([node, os.path.join(SDK_SRC, "reclaim.js"), json.dumps(arg)],
                       env=dict(os.environ, NODE_PATH=node_path), capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, f"reclaim.js exited {p.returncode}:\n{p.stdout}\n{p.stderr}"
    out = json.loads(p.stdout.strip().splitlines()[-1])
    assert out["sdk_version"] == "0.28.0", out
    return out


def returned(out):
    assert out["ok"], f"the SDK raised {out.get('class')}: {out.get('message')}\n{out}"
    assert out["type"] == "object" and isinstance(out["value"], dict), out
    return out["value"]


def raised(out, cls, status, code, names=None):
    """The SDK raised its typed error: class, HTTP status, and hypeman's {code, message} body."""
    assert not out["ok"], f"expected the SDK to raise {cls}, it returned {out.get('value')}"
    assert out["class"] == cls and {"HypemanError", "APIError", cls} <= set(out["instance_of"]), out
    assert out["status"] == status, out
    assert out["error"] == {"code": code, "message": out["error"]["message"]}, out
    msg = out["error"]["message"]
    assert isinstance(msg, str) and msg, out
    # The SDK reads `message` of the body: its own message is the status and ballast's words.
    assert out["message"] == f"{status} {msg}", out
    if names:
        assert names in msg, f"the message does not name {names!r}: {out}"
    return msg


# --- the peers and the fleet ------------------------------------------------------------------

_libc = ctypes.CDLL(None, use_errno=True)


def _die_with_parent():
    _libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG: never outlive the test run


def _start_peer(argv, log_path, ready_fd_arg=True):
    r, w = os.pipe()
    if ready_fd_arg:
        argv = argv + ["--ready-fd", str(w)]
    log = open(log_path, "ab")
    proc = subprocess.Popen(argv, pass_fds=(w,), stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                            preexec_fn=_die_with_parent)
    log.close()
    os.close(w)
    return proc, r


class Fleet:
    def __init__(self, root):
        self.root = root
        self.procs = []
        self.sock = {}

    def peer(self, name, kind):
        path = os.path.join(self.root, f"{name}.sock")
        exe = os.path.join(BUILD, "tests", {"qemu": "qmp-peer", "firecracker": "fc-peer",
                                            "cloud-hypervisor": "chv-peer"}[kind])
        if not os.access(exe, os.X_OK):
            unavailable(f"{exe} is not built")
        log = os.path.join(self.root, f"{name}.log")
        if kind == "qemu":
            proc, r = _start_peer([exe, "--socket", path, "--ram", str(ASSIGNED[name])], log, ready_fd_arg=False)
            os.close(r)
            wait_until(lambda: os.path.exists(path) or proc.poll() is not None, 30, 0.05, f"{name} to listen")
        else:
            argv = [exe, path, "--pace-mib-per-s", "1024"]
            argv += ["--mem-mib", str(ASSIGNED[name] // MiB)] if kind == "firecracker" else ["--mem", str(ASSIGNED[name])]
            proc, r = _start_peer(argv, log)
            try:
                ready, _, _ = select.select([r], [], [], 30)
                ok = bool(ready) and os.read(r, 1) == b"R"
            finally:
                os.close(r)
            assert ok, f"{name}: {' '.join(argv)} did not start listening (exit {proc.poll()})"
        self.procs.append(proc)
        assert proc.poll() is None, f"{name} exited with {proc.returncode}"
        self.sock[name] = path
        return path

    def peer_size(self, name):
        """The peer's own (actual, target) guest bytes, as docs/drivers.md converts them."""
        path = self.sock[name]
        if name == FC:
            s = http_request(path, "GET", "/balloon/statistics", timeout=10).json
            return ASSIGNED[name] - s["actual_pages"] * 4096, ASSIGNED[name] - s["target_pages"] * 4096
        if name == CHV:
            info = http_request(path, "GET", "/api/v1/vm.info", timeout=10).json
            return info["memory_actual_size"], ASSIGNED[name] - info["config"]["balloon"]["size"]
        raise AssertionError(name)

    def close(self):
        for p in self.procs:
            if p.poll() is None:
                p.kill()
            p.wait(30)


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


@pytest.fixture(scope="module")
def world(sdk, vm_pool, ballastd):  # noqa: F811
    """ballastd on a Unix socket and loopback TCP (a write and a read token) with the fleet."""
    root = tempfile.mkdtemp(prefix="bh-", dir="/tmp")
    fleet = Fleet(root)
    d = None
    try:
        tokens = os.path.join(root, "tokens")
        fd = os.open(tokens, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(f"{WRITE_TOKEN} write\n{READ_TOKEN} read\n")
        port = free_port()
        d = Daemon(root, "d", {"api": {"listen": f"127.0.0.1:{port}", "tokens_file": tokens}}, ballastd)
        d.port = port
        d.sdk = sdk
        d.fleet = fleet
        d.pool = vm_pool
        vm_pool.start([REAL], ASSIGNED[REAL] // MiB)
        fleet.peer(QPEER, "qemu")
        fleet.peer(FC, "firecracker")
        fleet.peer(CHV, "cloud-hypervisor")
        d.start()
        d.register(REAL, vm_pool.qmp(REAL), ASSIGNED[REAL], expected_uid=os.geteuid())
        d.register(QPEER, fleet.sock[QPEER], ASSIGNED[QPEER], floor=PEER_FLOOR)
        d.register(FC, fleet.sock[FC], ASSIGNED[FC], floor=PEER_FLOOR, driver="firecracker")
        d.register(CHV, fleet.sock[CHV], ASSIGNED[CHV], floor=PEER_FLOOR, driver="cloud-hypervisor")
        d.register(BROKEN, os.path.join(root, "absent.sock"), ASSIGNED[BROKEN])
        d.wait_status(OK_VMS, "ok", timeout=90)
        d.wait_status([BROKEN], "error", timeout=60)
        yield d
    finally:
        try:
            if d is not None:
                if d.running():
                    d.stop()
                d.check_log()
        finally:
            if d is not None:
                d.close()
            fleet.close()
            shutil.rmtree(root, ignore_errors=True)


def call(world, params, token=WRITE_TOKEN):
    return sdk_call(world.sdk, world.port, token, params)


def targets(world):
    return {n: v["target_bytes"] for n, v in world.vms().items()}


def check_response(value, hold):
    """hypeman's MemoryReclaimResponse, exactly: its keys (hold_until only while a hold exists)."""
    keys = RESPONSE_KEYS | ({"hold_until"} if hold else set())
    assert set(value) == keys, f"keys {sorted(value)}; hypeman's MemoryReclaimResponse has {sorted(keys)}"
    for k in RESPONSE_KEYS - {"actions", "host_pressure_state"}:
        assert isinstance(value[k], int) and value[k] >= 0, (k, value)
    assert value["host_pressure_state"] in ("healthy", "pressure"), value
    by_id = {}
    for a in value["actions"]:
        extra = {"error"} if "error" in a else set()
        assert set(a) == ACTION_KEYS | extra, f"action keys {sorted(a)}"
        assert a["instance_id"] not in by_id, value
        assert a["hypervisor"] in ("cloud-hypervisor", "firecracker", "qemu", "qemu-microvm", "vz"), a
        by_id[a["instance_id"]] = a
    assert sorted(by_id) == sorted(HYPERVISOR), f"one action per registered VM: {sorted(by_id)}"
    for n, a in by_id.items():
        assert a["instance_name"] == n and a["hypervisor"] == HYPERVISOR[n], a
        assert a["assigned_memory_bytes"] == ASSIGNED[n], a
    b = by_id[BROKEN]
    assert b["status"] == "error" and "absent.sock" in b["error"], b
    assert all(b[k] == 0 for k in ACTION_KEYS - {"instance_id", "instance_name", "hypervisor",
                                                  "assigned_memory_bytes", "status"}), b
    for n in OK_VMS:
        a = by_id[n]
        assert "error" not in a, a
        assert a["protected_floor_bytes"] <= a["planned_target_guest_memory_bytes"] <= ASSIGNED[n], a
        assert a["protected_floor_bytes"] <= a["target_guest_memory_bytes"] <= ASSIGNED[n], a
    planned = sum(ASSIGNED[n] - by_id[n]["planned_target_guest_memory_bytes"] for n in OK_VMS)
    assert value["planned_reclaim_bytes"] == planned, value
    assert value["applied_reclaim_bytes"] == sum(by_id[n]["applied_reclaim_bytes"] for n in OK_VMS), value
    return by_id


def check_available(world, value):
    """host_available_bytes is the scope's available memory (the sample moves: within 512 MiB)."""
    avail = world.host()["available_bytes"]
    assert abs(value["host_available_bytes"] - avail) <= 512 * MiB, (value["host_available_bytes"], avail)
    assert value["host_pressure_state"] == world.host()["state"] == "healthy", value


def wait_real_sizes(world, timeout=90):
    """Waits until the hypervisors themselves are at ballastd's current targets (QEMU's own
    query-balloon on qmp-ctl.sock for the real guest, the peers' balloon state, the fake QEMU's
    actual as ballastd reads it) and returns those targets."""
    def reached():
        want = targets(world)
        got = {REAL: world.pool.actual(REAL), FC: world.fleet.peer_size(FC)[0], CHV: world.fleet.peer_size(CHV)[0],
               QPEER: world.vm(QPEER)["actual_bytes"]}
        return want if all(abs(got[n] - want[n]) <= TOL for n in OK_VMS) and targets(world) == want else None

    return wait_until(reached, timeout, 0.25, "the hypervisors to reach ballastd's targets")


# --- the tests --------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def w(world):
    """The world, under a short name."""
    return world


def test_dry_run(w):
    """A dry run answers hypeman's MemoryReclaimResponse with the plan, and changes nothing."""
    before = targets(w)
    assert all(before[n] == ASSIGNED[n] for n in OK_VMS), before
    ask = ASK
    v = returned(call(w, {"reclaim_bytes": ask, "dry_run": True, "reason": "sdk dry run"}))
    acts = check_response(v, hold=False)
    assert v["requested_reclaim_bytes"] == ask and v["applied_reclaim_bytes"] == 0, v
    check_available(w, v)
    # The plan takes what was asked (the hold's bytes), above the floors.
    assert ask <= v["planned_reclaim_bytes"] <= ask + 4 * 32 * MiB, v
    assert acts[REAL]["status"] == "planned", v
    for n in OK_VMS:
        a = acts[n]
        assert a["previous_target_guest_memory_bytes"] == ASSIGNED[n], a
        assert a["applied_reclaim_bytes"] == 0, a
        if a["status"] == "planned":
            assert a["target_guest_memory_bytes"] < ASSIGNED[n], a
        else:
            assert a["status"] == "unchanged" and a["target_guest_memory_bytes"] == ASSIGNED[n], a
    # Nothing moved, no hold.
    assert targets(w) == before
    assert w.host()["hold"] is None


def test_hold_for_a_go_duration_then_clear(w):
    """hold_for "1m30s": hold_until 90 s ahead, the plan applied for real; a dry run then shows the
    hold; "0s" clears it (no hold_until) and every VM gets its memory back."""
    try:
        _hold_then_clear(w)
    finally:
        if w.running():  # the next tests start without a hold, even when this one failed
            w.ok("POST", "/v1/memory/reclaim", {"reclaim_bytes": 0, "hold_for": "0s"})


def _hold_then_clear(w):
    ask = ASK
    t0 = time.time()
    v = returned(call(w, {"reclaim_bytes": ask, "hold_for": "1m30s", "reason": "sdk hold"}))
    t1 = time.time()
    acts = check_response(v, hold=True)
    assert v["requested_reclaim_bytes"] == ask, v
    until = parse_time(v["hold_until"])
    assert t0 + 90 - 1 <= until <= t1 + 90 + 1, (v["hold_until"], t0, t1)
    check_available(w, v)
    hold = w.host()["hold"]
    assert hold["bytes"] == ask and parse_time(hold["until"]) == until and hold["reason"] == "sdk hold", hold
    applied = 0
    for n in OK_VMS:
        a = acts[n]
        assert a["previous_target_guest_memory_bytes"] == ASSIGNED[n], a
        t = a["target_guest_memory_bytes"]
        assert a["status"] == ("applied" if t != ASSIGNED[n] else "unchanged"), a
        assert a["applied_reclaim_bytes"] == ASSIGNED[n] - t, a
        applied += ASSIGNED[n] - t
    assert v["applied_reclaim_bytes"] == applied >= ask - 4 * 32 * MiB, v
    assert acts[REAL]["status"] == "applied", f"the real QEMU guest was not asked for memory: {v}"
    # The targets answered are the ones the plan commanded: the decision journal's entry of this call.
    entries = [e for e in w.history(50) if e["trigger"] == "api" and t0 - 1 <= parse_time(e["time"]) <= t1 + 1]
    assert entries, w.history(5)
    moved = entries[-1]["targets"]
    assert moved == {n: acts[n]["target_guest_memory_bytes"] for n in OK_VMS if acts[n]["status"] == "applied"}, \
        (moved, v)
    # The hold stays in force (ballastd keeps re-planning under it: guest-aware floors move), and the
    # hypervisors themselves follow: QEMU's own balloon for the real guest, the peers' state.
    now = wait_real_sizes(w)
    assert now[REAL] <= ASSIGNED[REAL] - 64 * MiB, now
    assert sum(ASSIGNED[n] - now[n] for n in OK_VMS) >= ask - 4 * TOL, now

    # A dry run while the hold exists shows it (as hypeman's does), and still changes nothing.
    before = targets(w)
    v = returned(call(w, {"reclaim_bytes": ask, "dry_run": True}))
    acts = check_response(v, hold=True)
    assert parse_time(v["hold_until"]) == until and v["applied_reclaim_bytes"] == 0, v
    assert all(acts[n]["previous_target_guest_memory_bytes"] == before[n] for n in OK_VMS), (v, before)

    # Clear: "0s" (and 0 bytes); no hold_until, and the memory comes back (after the dwell).
    v = returned(call(w, {"reclaim_bytes": 0, "hold_for": "0s", "reason": "sdk clear"}))
    check_response(v, hold=False)
    assert v["requested_reclaim_bytes"] == 0 and v["planned_reclaim_bytes"] == 0, v
    assert w.host()["hold"] is None
    w.wait_vms(lambda vms: all(vms[n]["target_bytes"] == ASSIGNED[n] for n in OK_VMS), 60,
               "every VM's target back at its assigned size")
    now = wait_real_sizes(w)
    assert all(now[n] == ASSIGNED[n] for n in OK_VMS), now
    v = returned(call(w, {"reclaim_bytes": 0, "dry_run": True}))
    acts = check_response(v, hold=False)
    assert all(acts[n]["status"] == "unchanged" and acts[n]["target_guest_memory_bytes"] == ASSIGNED[n]
               for n in OK_VMS), v


@pytest.mark.parametrize("params,field", [
    ({"reclaim_bytes": -1}, "reclaim_bytes"),
    ({"reclaim_bytes": 1.5}, "reclaim_bytes"),
    ({"reclaim_bytes": 64 * MiB, "hold_for": "90"}, "hold_for"),      # Go needs a unit
    ({"reclaim_bytes": 64 * MiB, "hold_for": "1min"}, "hold_for"),    # not a Go unit
    ({"reclaim_bytes": 64 * MiB, "hold_for": "-1s"}, "hold_for"),
    ({"reclaim_bytes": 64 * MiB, "hold_for": "1h0m1s"}, "hold_for"),  # over 1h
    ({"reclaim_bytes": 64 * MiB, "reason": "x" * 257}, "reason"),
    ({"hold_for": "1m"}, "reclaim_bytes"),
])
def test_bad_input(w, params, field):
    """The SDK raises BadRequestError (400) carrying hypeman's {code, message} with the field."""
    raised(call(w, params), "BadRequestError", 400, "bad_request", f'"{field}"')
    assert w.host()["hold"] is None


def test_wrong_token(w):
    raised(call(w, {"reclaim_bytes": 64 * MiB}, token="not-a-token"), "AuthenticationError", 401, "unauthorized")
    assert w.host()["hold"] is None


def test_read_only_token(w):
    """A read token may not reclaim: PermissionDeniedError (403), nothing changed."""
    before = targets(w)
    raised(call(w, {"reclaim_bytes": 64 * MiB}, token=READ_TOKEN), "PermissionDeniedError", 403, "forbidden")
    raised(call(w, {"reclaim_bytes": 64 * MiB, "dry_run": True}, token=READ_TOKEN), "PermissionDeniedError", 403,
           "forbidden")
    assert w.host()["hold"] is None and targets(w) == before


def test_v1_route_keeps_ballasts_shape(w):
    """/v1/memory/reclaim answers as before (docs/api.md): ballast's fields and nested errors."""
    r = w.request("POST", "/v1/memory/reclaim", {"reclaim_bytes": 64 * MiB, "dry_run": True})
    assert r.status == 200, r
    assert set(r.json) == {"requested_bytes", "planned_bytes", "applied_bytes", "dry_run", "hold_until",
                           "host_available_bytes", "pressure_state", "actions"}, r.json
    assert {a["vm"] for a in r.json["actions"]} == set(HYPERVISOR), r.json
    r = w.request("POST", "/v1/memory/reclaim", {"reclaim_bytes": -1})
    assert r.status == 400 and set(r.json) == {"error"} and r.json["error"]["code"] == "bad_request", r
    r = w.request("POST", "/resources/memory/reclaim", {"reclaim_bytes": -1})
    assert r.status == 400 and r.json == {"code": "bad_request", "message": r.json["message"]}, r
