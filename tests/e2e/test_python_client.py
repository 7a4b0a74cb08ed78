# SPDX-License-Identifier: MIT
"""The Python client (clients/python, package `ballast`) against a real ballastd.

1. Fast, no real VM: one ballastd per module on a Unix socket and a loopback TCP port with a read
   and a write token, and four VMs behind the test peers: `vm-ok` (qmp-peer, a fake QEMU monitor
   with a simulated guest), `vm-floor` (qmp-peer whose guest cannot go below 400 MiB: parks stall
   there), `vm-fc` (fc-peer with the balloon's statistics off: GET …/stats is 501) and
   `vm-err` (a socket that does not exist: 503). Every route of docs/api.md through Client and
   AsyncClient, the typed errors (status, code, message) of 400/401/403/404/405/409/413/414/501/503,
   tokens (none, unknown, read-only on writes), timeouts and an unreachable daemon. What the client
   changes is read back with the suite's own HTTP helper (tests/e2e/daemon.py), not with the client.
2. Real VMs: two QEMU guests (512 MiB, deflate-on-oom off so the guest's MemTotal follows its
   balloon) registered through the client, parked and unparked with Client and with the warm pool
   of clients/python/examples/warm_pool.py (in-process and as a command); the effects are read
   where they happen: QEMU's balloon (query-balloon on qmp-ctl.sock, through ballastctl) and the
   guest's own MemTotal (through its agent).

The client is imported from clients/python by path: nothing needs installing."""

import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

import pytest

from conftest import BUILD, SRC, MiB, wait_until
from conftest_daemon import ballastd, daemons, vm_pool  # noqa: F401 (fixtures)
from daemon import Daemon, require_ballastd

sys.path.insert(0, os.path.join(SRC, "clients", "python"))
sys.path.insert(0, os.path.join(SRC, "clients", "python", "examples"))

import ballast  # noqa: E402
from ballast import (APIError, AsyncClient, BadRequestError, BallastTimeout, Client, ConflictError,  # noqa: E402
                     ForbiddenError, GiB, MethodNotAllowedError, NotFoundError, NotImplementedAPIError,
                     ParkOutcomeError, ParkResult, PayloadTooLargeError, TransportError, UnauthorizedError,
                     UnavailableError, URITooLongError)

QMP_PEER = os.path.join(BUILD, "tests", "qmp-peer")
FC_PEER = os.path.join(BUILD, "tests", "fc-peer")
TOL = 16 * MiB  # ballastd's [driver] tolerance
READ_TOKEN = "pyclient-read-0123456789abcdef"
WRITE_TOKEN = "pyclient-write-fedcba9876543210"


# ---------------------------------------------------------------------------------------------
# 1. The fast part: one ballastd with test peers
# ---------------------------------------------------------------------------------------------

def free_tcp_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class World:
    def __init__(self, root, daemon, port):
        self.root = root
        self.d = daemon
        self.port = port
        self.tcp = f"http://127.0.0.1:{port}"

    def client(self, **kw):
        return Client(self.d.socket, **kw)

    def aclient(self, **kw):
        return AsyncClient(self.d.socket, **kw)

    def raw_vm(self, vm_id):
        """The VM as the suite's own HTTP helper reads it (not through the client)."""
        return self.d.vm(vm_id)

    def unparked(self, vm_id):
        """Leaves the VM unparked and at its full size (a test that stopped half-way must not leave
        it parked for the next one)."""
        if self.d.vm(vm_id)["parked"]:
            r = self.d.request("POST", f"/v1/vms/{vm_id}/unpark", {"wait": True, "timeout": "30s"}, timeout=60)
            assert r.status == 200, r


def _peer(root, argv, sock, procs):
    log = open(os.path.join(root, os.path.basename(sock) + ".log"), "wb")
    p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True)
    log.close()
    procs.append(p)
    wait_until(lambda: os.path.exists(sock) or p.poll() is not None, 20, 0.02, f"{argv[0]} to listen")
    assert p.poll() is None, f"{' '.join(argv)} exited with {p.returncode}"


@pytest.fixture(scope="module")
def world():
    binary = require_ballastd()
    for peer in (QMP_PEER, FC_PEER):
        if not os.access(peer, os.X_OK):
            msg = f"{peer} is not built: the Python client cannot be tested without the test peers"
            if os.environ.get("BALLAST_REQUIRE_VM"):
                pytest.fail(msg)
            pytest.skip(msg)
    root = tempfile.mkdtemp(prefix="bp-", dir="/tmp")
    os.chmod(root, 0o711)
    procs = []
    d = None
    try:
        tokens = os.path.join(root, "tokens")
        fd = os.open(tokens, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(f"# the client's tests\n{READ_TOKEN} read\n{WRITE_TOKEN} write\n")
        socks = {n: os.path.join(root, f"{n}.sock") for n in ("qmp", "qmp-floor", "fc")}
        _peer(root, [QMP_PEER, "--socket", socks["qmp"], "--ram", str(GiB), "--rate-mib-s", "2048"], socks["qmp"],
              procs)
        _peer(root, [QMP_PEER, "--socket", socks["qmp-floor"], "--ram", str(GiB), "--rate-mib-s", "2048",
                     "--floor", str(400 * MiB)], socks["qmp-floor"], procs)
        _peer(root, [FC_PEER, socks["fc"], "--mem-mib", "1024", "--stats-interval", "0"], socks["fc"], procs)
        port = free_tcp_port()
        d = Daemon(root, "d", {"api": {"listen": f"127.0.0.1:{port}", "tokens_file": tokens},
                               "driver": {"stall_window": "1s"}, "park": {"protect_for": "1s"},
                               "policy": {"dwell": "0s"}}, binary)
        d.start()
        uid = os.geteuid()
        d.register("vm-ok", socks["qmp"], GiB, expected_uid=uid)
        d.register("vm-floor", socks["qmp-floor"], GiB, expected_uid=uid)
        d.register("vm-fc", socks["fc"], GiB, driver="firecracker")
        d.register("vm-err", os.path.join(root, "absent.sock"), 512 * MiB)
        # vm-fc is in error too: Firecracker reports the balloon's size only with statistics on.
        d.wait_vms(lambda v: all(v[n]["status"] == "ok" and v[n]["actual_bytes"] for n in ("vm-ok", "vm-floor"))
                   and v["vm-err"]["status"] == "error" and v["vm-fc"]["status"] == "error", 30,
                   "the QMP peers' VMs ok, vm-err and vm-fc in error")
        yield World(root, d, port)
        d.stop()
    finally:
        if d is not None:
            d.close()
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(10)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait(10)
        shutil.rmtree(root, ignore_errors=True)


def assert_api_error(exc_info, cls, status, code, *words):
    e = exc_info.value
    assert type(e) is cls, f"expected {cls.__name__}, got {type(e).__name__}: {e}"
    assert isinstance(e, APIError) and isinstance(e, ballast.BallastError)
    assert (e.status, e.code) == (status, code), (e.status, e.code, e.message)
    assert e.message and all(w in e.message for w in words), f"the message does not say {words}: {e.message!r}"
    return e


def test_health_host_metrics(world):
    c = world.client()
    h = c.health()
    assert h["status"] == "ok" and h["version"] and h["uptime_s"] >= 0, h
    host = c.host()
    assert host["scope"] == "host" and host["vm_count"] == 4 and host["state"] in ("healthy", "pressure", "critical")
    assert set(host["reclaim"]) >= {"requested_bytes", "planned_bytes", "commanded_bytes"}, host
    m = c.metrics()
    assert isinstance(m, str) and "# TYPE ballast_" in m, m[:300]
    with pytest.raises(BadRequestError) as ei:
        c.history(0)
    assert_api_error(ei, BadRequestError, 400, "bad_request", "limit")
    cap = c.capacity(512 * MiB)
    assert cap["size_bytes"] == 512 * MiB and cap["vm_count"] == 4, cap
    assert cap["fit"] == (cap["free_bytes"] + cap["returnable_bytes"]) // (512 * MiB + cap["overhead_bytes"]), cap
    with pytest.raises(BadRequestError) as ei:
        c.capacity(0)
    assert_api_error(ei, BadRequestError, 400, "bad_request", "size")


def test_vm_registry_routes(world):
    c = world.client()
    sock = os.path.join(world.root, "scratch.sock")  # nothing listens there
    v = c.add_vm("scratch-1", "qemu", socket=sock, assigned_bytes=512 * MiB, floor_bytes=64 * MiB, shares=500,
                 expected_uid=107)
    assert (v["id"], v["driver"], v["socket"], v["assigned_bytes"], v["floor_bytes"], v["shares"], v["expected_uid"]) \
        == ("scratch-1", "qemu", sock, 512 * MiB, 64 * MiB, 500, 107), v
    try:
        assert world.raw_vm("scratch-1")["shares"] == 500
        with pytest.raises(ConflictError) as ei:
            c.add_vm("scratch-1", "qemu", socket=sock, assigned_bytes=512 * MiB)
        assert_api_error(ei, ConflictError, 409, "conflict", "scratch-1")

        ids = [x["id"] for x in c.vms()]
        assert ids == sorted(ids) and {"scratch-1", "vm-ok", "vm-err"} <= set(ids), ids
        assert c.vm("scratch-1")["id"] == "scratch-1"

        v = c.update_vm("scratch-1", shares=2000, floor_bytes=128 * MiB)
        assert v["shares"] == 2000 and v["floor_bytes"] == 128 * MiB, v
        assert world.raw_vm("scratch-1")["shares"] == 2000
        with pytest.raises(BadRequestError) as ei:
            c.update_vm("scratch-1", floor_bytes=GiB)  # above assigned
        assert_api_error(ei, BadRequestError, 400, "bad_request", "floor_bytes")
        with pytest.raises(ValueError):
            c.update_vm("scratch-1")

        with pytest.raises(BadRequestError) as ei:
            c.add_vm("scratch-2", "bhyve", socket=sock, assigned_bytes=512 * MiB)
        assert_api_error(ei, BadRequestError, 400, "bad_request", "driver")
        with pytest.raises(BadRequestError) as ei:
            c.add_vm("scratch-2", "qemu", socket=sock, assigned_bytes=1)
        assert_api_error(ei, BadRequestError, 400, "bad_request", "assigned_bytes")
    finally:
        assert c.remove_vm("scratch-1") == "scratch-1"
    with pytest.raises(NotFoundError) as ei:
        c.vm("scratch-1")
    assert_api_error(ei, NotFoundError, 404, "not_found")
    assert world.d.request("GET", "/v1/vms/scratch-1").status == 404
    with pytest.raises(NotFoundError):
        c.remove_vm("scratch-1")
    # An id that is not a plain path segment is sent escaped: it names no VM, it reaches no other route.
    with pytest.raises(NotFoundError):
        c.vm("vm-ok/park")


def test_target_and_stats(world):
    c = world.client()
    world.unparked("vm-ok")
    v = c.set_target("vm-ok", 768 * MiB)
    assert v["id"] == "vm-ok" and v["target_bytes"] == 768 * MiB, v
    assert world.raw_vm("vm-ok")["target_bytes"] == 768 * MiB
    with pytest.raises(BadRequestError) as ei:
        c.set_target("vm-ok", 2 * GiB)
    assert_api_error(ei, BadRequestError, 400, "bad_request", "target_bytes")
    with pytest.raises(UnavailableError) as ei:
        c.set_target("vm-err", 256 * MiB)
    assert_api_error(ei, UnavailableError, 503, "unavailable")
    c.set_target("vm-ok", GiB)

    s = c.stats("vm-ok")
    assert s["id"] == "vm-ok" and "period_s" in s["stats"] and "last_update" in s, s
    with pytest.raises(NotImplementedAPIError) as ei:
        c.stats("vm-fc")
    assert_api_error(ei, NotImplementedAPIError, 501, "not_implemented")
    with pytest.raises(UnavailableError) as ei:
        c.stats("vm-err")
    assert_api_error(ei, UnavailableError, 503, "unavailable")


def test_park_and_unpark_results(world):
    c = world.client()
    world.unparked("vm-ok")
    before = world.raw_vm("vm-ok")["target_bytes"]

    r = c.park("vm-ok", 128 * MiB, within="30s")
    assert isinstance(r, ParkResult) and r.operation == "park" and r.vm == "vm-ok" and r.waited, r
    # The peer's guest may show a working set above 128 MiB in its statistics: then the park aims
    # above it and says `stalled` (with its reason in the message).
    assert r.result in ("reached", "stalled"), r
    assert r.previous_bytes == before and r.requested_bytes == 128 * MiB and r.target_bytes >= 128 * MiB, r
    # (On a loaded machine the peer may be too slow and be found stalled short of the target.)
    assert (r.gap_bytes <= TOL or r.stalled) and r.freed_bytes > 0 and r.elapsed_ms <= r.round_trip_ms, r
    assert r.ok == r.reached and r.as_dict()["result"] == r.result
    v = world.raw_vm("vm-ok")
    assert v["parked"] and v["status"] == "parked" and v["park_previous_bytes"] == before, v

    with pytest.raises(ConflictError) as ei:
        c.park("vm-ok")
    assert_api_error(ei, ConflictError, 409, "conflict", "parked")
    # docs/api.yaml: 409 while parked (docs/api.md says 503 there).
    with pytest.raises(ConflictError):
        c.set_target("vm-ok", 512 * MiB)

    r = c.unpark("vm-ok")
    assert (r.operation, r.result, r.waited, r.ok, r.sent) == ("unpark", "sent", False, True, True), r
    assert r.target_bytes == before and r.check() is r, r
    v = world.raw_vm("vm-ok")
    assert not v["parked"] and v["protected_until"] is not None, v
    with pytest.raises(ConflictError) as ei:
        c.unpark("vm-ok")
    assert_api_error(ei, ConflictError, 409, "conflict", "not parked")

    # The wait's time runs out before the guest gets there: `deadline`, parked where it was.
    world.d.wait_vms(lambda v: v["vm-ok"]["actual_bytes"] >= GiB - TOL, 20, "vm-ok back at full size")
    r = c.park("vm-ok", 128 * MiB, within=0.001)
    assert r.result == "deadline" and r.timed_out and not r.ok and r.reached_bytes > 128 * MiB + TOL, r
    assert world.raw_vm("vm-ok")["parked"]
    with pytest.raises(ParkOutcomeError) as ei:
        r.check()
    assert ei.value.result is r and "deadline" in str(ei.value)
    r = c.unpark("vm-ok", wait=True, within="30s")
    assert r.result == "reached" and r.waited and abs(r.reached_bytes - GiB) <= TOL, r

    # A guest that cannot go below 400 MiB: the park stops there, `stalled`, and stays parked.
    world.unparked("vm-floor")
    r = c.park("vm-floor", within="30s")
    assert r.result == "stalled" and r.stalled and r.requested_bytes is None, r
    assert 400 * MiB - TOL <= r.reached_bytes < GiB - TOL and r.reached_bytes >= r.target_bytes - TOL, r
    assert r.check("reached", "stalled") is r
    with pytest.raises(ParkOutcomeError):
        r.check()
    assert world.raw_vm("vm-floor")["parked"]
    r = c.unpark("vm-floor", 512 * MiB, wait=True, within=30)
    assert r.result == "reached" and r.target_bytes == 512 * MiB and r.requested_bytes == 512 * MiB, r

    # A VM whose size is not known: 503; an unknown VM: 404.
    with pytest.raises(UnavailableError) as ei:
        c.park("vm-err")
    assert_api_error(ei, UnavailableError, 503, "unavailable")
    with pytest.raises(NotFoundError):
        c.unpark("no-such-vm")


def test_reclaim_hold_dry_run_and_clear(world):
    c = world.client()
    a = c.reclaim(256 * MiB, dry_run=True)
    assert a["dry_run"] is True and a["hold_until"] is None and a["requested_bytes"] == 256 * MiB, a
    assert {x["action"] for x in a["actions"]} <= {"planned", "unchanged", "error", "stalled", "unsupported"}, a
    assert world.d.host()["hold"] is None, "a dry run stored a hold"

    # A hold that must move a target (unparked VMs are protected from reclaim for a while, 1 s here,
    # and no dwell holds back a VM whose target just went up).
    world.d.wait_vms(lambda v: all(v[n]["protected_until"] is None for n in ("vm-ok", "vm-floor")), 10,
                     "the unpark protection to end")
    want = world.d.host()["reclaim"]["commanded_bytes"] + 96 * MiB
    a = c.reclaim(want, hold_for="2m", reason="pyclient hold")
    try:
        assert a["dry_run"] is False and a["hold_until"] is not None, a
        assert a["applied_bytes"] > 0 and any(x["action"] == "applied" for x in a["actions"]), a
        hold = world.d.host()["hold"]
        assert hold["bytes"] == want and hold["reason"] == "pyclient hold" and 0 < hold["remaining_s"] <= 120, hold
        # The hold moved targets: the journal has it; history() is newest first and honours its limit.
        entries = wait_until(lambda: c.history(), 10, 0.05, "a journal entry")
        assert {"time", "trigger", "state", "targets"} <= set(entries[0]), entries[0]
        assert any(e["trigger"] == "api" for e in entries), entries
        assert [e["time"] for e in entries] == sorted((e["time"] for e in entries), reverse=True), entries
        one = c.history(1)
        assert len(one) == 1 and one[0] in world.d.history(1000), one
    finally:
        a = c.clear_hold()
    assert a["hold_until"] is None and world.d.host()["hold"] is None, a
    # hypeman's route: the same reclaim in hypeman's shape (docs/api.md).
    a = c.request("POST", "/resources/memory/reclaim", {"reclaim_bytes": 0, "dry_run": True})
    assert a["requested_reclaim_bytes"] == 0 and a["applied_reclaim_bytes"] == 0, a
    with pytest.raises(BadRequestError) as ei:
        c.reclaim(-1)
    assert_api_error(ei, BadRequestError, 400, "bad_request", "reclaim_bytes")
    with pytest.raises(BadRequestError) as ei:
        c.reclaim(0, hold_for="2h")
    assert_api_error(ei, BadRequestError, 400, "bad_request", "hold_for")


def test_transport_level_errors(world):
    c = world.client()
    with pytest.raises(MethodNotAllowedError) as ei:
        c.request("DELETE", "/v1/health")
    e = assert_api_error(ei, MethodNotAllowedError, 405, "method_not_allowed")
    assert e.allow == ["GET"], e.headers
    with pytest.raises(NotFoundError):
        c.request("GET", "/v1/nothing")
    with pytest.raises(PayloadTooLargeError) as ei:
        c.request("POST", "/v1/memory/reclaim", {"reclaim_bytes": 0, "reason": "x" * (70 * 1024)})
    assert_api_error(ei, PayloadTooLargeError, 413, "payload_too_large")
    with pytest.raises(URITooLongError) as ei:
        c.request("GET", "/v1/history?limit=1&pad=" + "x" * 5000)
    assert_api_error(ei, URITooLongError, 414, "uri_too_long")


def test_tcp_tokens(world):
    w = Client(world.tcp, token=WRITE_TOKEN)
    assert repr(w) == f"Client('{world.tcp}', token=...)"
    assert w.health()["status"] == "ok" and {v["id"] for v in w.vms()} >= {"vm-ok", "vm-err"}
    world.unparked("vm-ok")
    r = w.park("vm-ok", 256 * MiB)
    assert r.result in ("reached", "stalled") and world.raw_vm("vm-ok")["parked"], r
    assert w.unpark("vm-ok", wait=True).result == "reached"

    ro = Client(("127.0.0.1", world.port), token=READ_TOKEN)
    assert ro.vm("vm-ok")["id"] == "vm-ok" and ro.history(1) is not None and ro.metrics()
    for call in (lambda: ro.park("vm-ok"), lambda: ro.unpark("vm-ok"), lambda: ro.reclaim(0, dry_run=True),
                 lambda: ro.add_vm("x1", "qemu", socket="/x", assigned_bytes=GiB),
                 lambda: ro.update_vm("vm-ok", shares=5), lambda: ro.remove_vm("vm-ok"),
                 lambda: ro.set_target("vm-ok", GiB)):
        with pytest.raises(ForbiddenError) as ei:
            call()
        assert_api_error(ei, ForbiddenError, 403, "forbidden")
    assert not world.raw_vm("vm-ok")["parked"] and world.raw_vm("vm-ok")["shares"] == 1000

    for bad in (Client(world.tcp, token="not-a-token"), Client(f"127.0.0.1:{world.port}")):
        with pytest.raises(UnauthorizedError) as ei:
            bad.health()
        e = assert_api_error(ei, UnauthorizedError, 401, "unauthorized")
        assert e.headers.get("www-authenticate") == 'Bearer realm="ballast"', e.headers

    # $BALLAST_TOKEN for TCP; never sent on the Unix socket.
    old = os.environ.get("BALLAST_TOKEN")
    os.environ["BALLAST_TOKEN"] = READ_TOKEN
    try:
        assert Client(world.tcp).health()["status"] == "ok"
        assert Client(world.d.socket).token is None
    finally:
        if old is None:
            del os.environ["BALLAST_TOKEN"]
        else:
            os.environ["BALLAST_TOKEN"] = old


def test_default_address_and_unreachable_daemon(world, monkeypatch):
    monkeypatch.setenv("BALLAST_API", world.d.socket)
    assert Client().health()["status"] == "ok"
    monkeypatch.delenv("BALLAST_API")
    assert str(Client().address) == "/run/ballast/api.sock"
    missing = os.path.join(world.root, "missing.sock")
    with pytest.raises(TransportError) as ei:
        Client(missing).health()
    assert isinstance(ei.value, OSError) and not isinstance(ei.value, BallastTimeout) and missing in str(ei.value)
    with pytest.raises(TransportError):
        asyncio.run(AsyncClient(missing).health())
    with pytest.raises(ValueError):
        Client("ftp://127.0.0.1:1")
    with pytest.raises(ValueError):  # nothing can be smuggled into the request line
        Client(world.d.socket).request("GET", "/v1/health HTTP/1.1\r\nX-Evil: 1\r\n")


def test_timeouts(world):
    """A daemon that accepts and never answers: every call ends with BallastTimeout at its timeout."""
    path = os.path.join(world.root, "silent.sock")
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(path)
    srv.listen(16)
    conns = []
    stop = threading.Event()

    def accept():
        srv.settimeout(0.1)
        while not stop.is_set():
            try:
                conns.append(srv.accept()[0])
            except OSError:
                pass

    t = threading.Thread(target=accept, daemon=True)
    t.start()
    try:
        c = Client(path, timeout=0.3)
        t0 = time.monotonic()
        with pytest.raises(BallastTimeout) as ei:
            c.health()
        took = time.monotonic() - t0
        assert isinstance(ei.value, TimeoutError) and 0.25 <= took < 2, took
        t0 = time.monotonic()
        with pytest.raises(BallastTimeout):
            c.park("vm-ok", timeout=0.2)  # a per-call timeout wins over the default
        assert time.monotonic() - t0 < 1.5

        async def run():
            a = AsyncClient(path, timeout=5)
            t0 = time.monotonic()
            with pytest.raises(BallastTimeout):
                await a.vms(timeout=0.3)
            return time.monotonic() - t0

        assert 0.25 <= asyncio.run(run()) < 2
    finally:
        stop.set()
        t.join(5)
        for s in conns:
            s.close()
        srv.close()


def test_async_client_every_route(world):
    world.unparked("vm-ok")
    world.unparked("vm-floor")

    async def run():
        c = world.aclient()
        tcp_w = AsyncClient(world.tcp, token=WRITE_TOKEN)
        tcp_r = AsyncClient(world.tcp, token=READ_TOKEN)
        h, host, vms, m, hist = await asyncio.gather(c.health(), c.host(), c.vms(), c.metrics(), c.history(5))
        assert h["status"] == "ok" and host["vm_count"] >= 4 and "ballast_" in m and isinstance(hist, list)
        assert [v["id"] for v in vms] == sorted(v["id"] for v in vms)

        v = await c.add_vm("ascratch", "qemu", socket=os.path.join(world.root, "none.sock"), assigned_bytes=GiB)
        assert v["status"] in ("connecting", "error"), v
        assert (await c.update_vm("ascratch", shares=3))["shares"] == 3
        assert (await c.vm("ascratch"))["shares"] == 3
        with pytest.raises(ConflictError):
            await c.add_vm("ascratch", "qemu", socket="/none", assigned_bytes=GiB)
        assert await c.remove_vm("ascratch") == "ascratch"
        with pytest.raises(NotFoundError):
            await c.vm("ascratch")

        assert (await c.set_target("vm-ok", 900 * MiB))["target_bytes"] == 900 * MiB
        await c.set_target("vm-ok", GiB)
        assert (await c.stats("vm-ok"))["id"] == "vm-ok"
        with pytest.raises(NotImplementedAPIError):
            await c.stats("vm-fc")

        # Two parks at once, one over TCP; a read token is refused.
        await c.wait_vm("vm-ok", lambda v: v["actual_bytes"] >= GiB - TOL, timeout=20)
        with pytest.raises(ForbiddenError):
            await tcp_r.park("vm-ok")
        p_ok, p_floor = await asyncio.gather(c.park("vm-ok", 256 * MiB, within="30s"),
                                             tcp_w.park("vm-floor", 128 * MiB, within="30s"))
        assert p_ok.result in ("reached", "stalled") and (p_ok.gap_bytes <= TOL or p_ok.stalled), p_ok
        assert p_floor.result == "stalled" and p_floor.reached_bytes >= 400 * MiB - TOL, p_floor
        assert (await c.wait_ready("vm-ok"))["status"] == "parked"
        with pytest.raises(ConflictError):
            await c.park("vm-ok")
        u_ok, u_floor = await asyncio.gather(c.unpark("vm-ok"), c.unpark("vm-floor", wait=True, within="30s"))
        assert u_ok.result == "sent" and u_floor.result == "reached", (u_ok, u_floor)

        d = await c.reclaim(128 * MiB, dry_run=True, reason="async")
        assert d["dry_run"] is True
        assert (await c.clear_hold())["hold_until"] is None
        with pytest.raises(UnauthorizedError):
            await AsyncClient(world.tcp, token="nope").host()

    asyncio.run(run())


def test_pip_install_into_a_venv(world, tmp_path):
    """`pip install ./clients/python` as its README gives it for a machine without network access
    (a venv over Debian's setuptools and wheel, no index, no isolated build): the installed copy,
    not the checkout, answers from a real ballastd."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], check=True,
                   capture_output=True, timeout=120)
    pip = subprocess.run([str(venv / "bin" / "pip"), "install", "--no-index", "--no-build-isolation",
                          os.path.join(SRC, "clients", "python")], capture_output=True, text=True, timeout=300)
    assert pip.returncode == 0, f"pip install failed:\n{pip.stdout}\n{pip.stderr}"
    code = ("import ballast, json, sys; c = ballast.Client(sys.argv[1]); "
            "print(json.dumps([ballast.__file__, c.health()['status'], sorted(v['id'] for v in c.vms())]))")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = subprocess.run([str(venv / "bin" / "python"), "-c", code, world.d.socket], capture_output=True, text=True,
                         timeout=60, cwd=str(tmp_path), env=env)
    assert out.returncode == 0, out.stderr
    path, status, ids = json.loads(out.stdout)
    assert path.startswith(str(venv)) and "site-packages" in path, f"imported {path}, not the installed copy"
    assert status == "ok"
    assert ids == sorted(["vm-ok", "vm-floor", "vm-fc", "vm-err"])


def test_response_parser_framing():
    """What ballastd does not send today but HTTP/1.1 allows: chunked bodies, interim 100 answers,
    bodies up to EOF, answers cut short."""
    from ballast._http import ResponseParser

    p = ResponseParser("GET")
    data = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n" \
           b"Content-Type: application/json\r\n\r\n4\r\n{\"a\"\r\n3;x=1\r\n: 1\r\n1\r\n}\r\n0\r\n\r\n"
    done = False
    for i in range(len(data)):  # one byte at a time
        done = p.feed(data[i:i + 1])
    assert done and p.response.status == 200 and p.response.body == b'{"a": 1}', p.response

    p = ResponseParser("GET")
    assert not p.feed(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nhello ")
    assert not p.feed(b"world")
    assert p.feed_eof().body == b"hello world"

    p = ResponseParser("GET")
    assert not p.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort")
    with pytest.raises(TransportError):
        p.feed_eof()
    with pytest.raises(TransportError):
        ResponseParser("GET").feed_eof()
    with pytest.raises(TransportError):
        ResponseParser("GET").feed(b"SSH-2.0-OpenSSH\r\n\r\n")

    # Every status of docs/api.md's error table, with the API's body: its class, code and message.
    table = {400: ("bad_request", BadRequestError), 401: ("unauthorized", UnauthorizedError),
             403: ("forbidden", ForbiddenError), 404: ("not_found", NotFoundError),
             405: ("method_not_allowed", MethodNotAllowedError), 409: ("conflict", ConflictError),
             413: ("payload_too_large", PayloadTooLargeError), 414: ("uri_too_long", URITooLongError),
             415: ("unsupported_media_type", ballast.UnsupportedMediaTypeError),
             500: ("internal", ballast.InternalServerError), 501: ("not_implemented", NotImplementedAPIError),
             503: ("unavailable", UnavailableError)}
    for status, (code, cls) in table.items():
        body = ('{"error": {"code": "%s", "message": "m%d"}}' % (code, status)).encode()
        e = ballast.errors.error_for(status, body, method="GET", path="/p")
        assert type(e) is cls and (e.status, e.code, e.message) == (status, code, f"m{status}"), e
        assert str(e) == f"GET /p: {status} {code}: m{status}"
    e = ballast.errors.error_for(418, b'{"error": {"code": "teapot", "message": "no"}}')
    assert type(e) is APIError and (e.status, e.code, e.message) == (418, "teapot", "no")
    e = ballast.errors.error_for(400, b"<html><body>Bad Content-Length</body></html>")
    assert type(e) is BadRequestError and e.code == "bad_request" and "Bad Content-Length" in e.message


# ---------------------------------------------------------------------------------------------
# 2. Real VMs
# ---------------------------------------------------------------------------------------------

ASSIGNED = 512 * MiB
PARK = 128 * MiB


def test_real_vms_park_unpark_and_warm_pool(vm_pool, daemons):  # noqa: F811
    """Two idle 512 MiB guests registered through the client. Client.park() at 128 MiB: `reached`,
    and QEMU's balloon and the guest's own size say 128 MiB; unpark(wait=True): `reached`, and the
    guest is back at 512 MiB. Then the warm pool of examples/warm_pool.py parks both; acquire()
    unparks one (`sent`), the guest gets its memory back within seconds and runs a command while
    the other stays parked; release() parks it again. Last, the example as a command runs 3 jobs
    on the 2 VMs and exits 0, leaving both parked."""
    import warm_pool

    names = ["pc1", "pc2"]
    vms = {v["name"]: v for v in vm_pool.start(names, ASSIGNED // MiB)}
    d = daemons().start()
    c = Client(d.socket)
    for n in names:
        v = c.add_vm(n, "qemu", socket=vms[n]["qmp"], assigned_bytes=ASSIGNED, expected_uid=os.geteuid())
        assert v["id"] == n and v["status"] in ("connecting", "ok"), v
    for n in names:
        v = c.wait_ready(n, timeout=60)
        assert v["hypervisor_pid"] == vms[n]["qemu_pid"] and abs(v["actual_bytes"] - ASSIGNED) <= TOL, v

    def sizes(n):
        return vm_pool.actual(n), vm_pool.guest_size(n)

    def fmt(b):
        return f"{b / MiB:.0f} MiB"

    def check_parked(r, n):
        """A park of an idle guest ends at 128 MiB (`reached`), or, when the guest's statistics show
        a bigger working set, at that set plus a margin (`stalled`, the reason in the message).
        Right after an unpark that can be almost the whole guest (the statistics lag behind: see
        the report printed). Either way the answer says where the VM is: QEMU's balloon and the
        guest's own size agree with it, and the VM is parked."""
        q, g = sizes(n)
        assert r.operation == "park" and r.vm == n and r.gap_bytes <= TOL, r
        if r.result == "reached":
            assert r.target_bytes == PARK, r
        else:
            assert r.result == "stalled" and PARK < r.target_bytes <= ASSIGNED and r.message, r
        assert abs(q - r.reached_bytes) <= TOL and abs(g - q) <= TOL, (n, r, fmt(q), fmt(g))
        v = c.vm(n)
        assert v["parked"] and v["status"] == "parked", v
        return q, g

    # Client.park / unpark on pc1.
    r = c.park("pc1", PARK, within="60s")
    qemu, guest = check_parked(r, "pc1")
    print(f"\npark pc1: {r.result} at {fmt(r.reached_bytes)} (target {fmt(r.target_bytes)}) in {r.elapsed_ms:.0f} "
          f"ms (round trip {r.round_trip_ms:.0f} ms); QEMU {fmt(qemu)}, guest {fmt(guest)} {r.message}")
    assert r.previous_bytes == ASSIGNED and r.requested_bytes == PARK and r.freed_bytes >= 300 * MiB, r
    assert c.vm("pc1")["park_previous_bytes"] == ASSIGNED

    r = c.unpark("pc1", wait=True, within="60s")
    qemu, guest = sizes("pc1")
    print(f"unpark pc1 (wait): {r.result} at {fmt(r.reached_bytes)} in {r.elapsed_ms:.0f} ms; QEMU {fmt(qemu)}, "
          f"guest {fmt(guest)}")
    assert r.result == "reached" and r.target_bytes == ASSIGNED and abs(r.reached_bytes - ASSIGNED) <= TOL, r
    assert qemu >= ASSIGNED - TOL and guest >= ASSIGNED - TOL, (fmt(qemu), fmt(guest))
    assert c.vm("pc1")["protected_until"] is not None

    # The warm pool (asyncio) from the example.
    async def pool_flow():
        pool = warm_pool.WarmPool(AsyncClient(d.socket), PARK, within="60s")
        parked = await asyncio.gather(*(pool.add(n) for n in names))
        for n, p in zip(names, parked):
            check_parked(p, n)
            assert pool.results[n] is p
            print(f"warm pool: {n} parked: {p.result} at {fmt(p.reached_bytes)} (target {fmt(p.target_bytes)}) "
                  f"{p.message}")
        # pc2 was never unparked: its statistics are settled, and it gives most of its memory back.
        assert parked[1].reached_bytes <= ASSIGNED - 256 * MiB, parked[1]
        t0 = time.monotonic()
        vm_id, r = await pool.acquire()
        acquire_ms = (time.monotonic() - t0) * 1000
        assert r.result == "sent" and r.target_bytes == ASSIGNED and pool.results[vm_id] is r, r
        return pool, vm_id, r, acquire_ms

    pool, got, r, acquire_ms = asyncio.run(pool_flow())
    other = next(n for n in names if n != got)
    t0 = time.monotonic()
    wait_until(lambda: sizes(got)[1] >= ASSIGNED - TOL, 20, 0.05, f"{got}'s guest back at 512 MiB")
    back_s = time.monotonic() - t0
    ex = vm_pool.ctl.run("vm", "exec", got, "--", "cat", "/proc/meminfo")
    assert "MemTotal" in ex.stdout
    q, g = check_parked(pool.results[other], other)
    print(f"warm pool: acquired {got} in {acquire_ms:.1f} ms (ballastd {r.elapsed_ms:.1f} ms, {r.result}); its "
          f"guest was at full size {back_s:.2f} s later; {other} still at QEMU {fmt(q)}, guest {fmt(g)}")
    assert c.vm(other)["parked"], c.vm(other)

    rel = asyncio.run(pool.release(got))
    q, g = check_parked(rel, got)
    print(f"warm pool: {got} released and parked again: {rel.result} at {fmt(rel.reached_bytes)} "
          f"(target {fmt(rel.target_bytes)}) {rel.message}")
    assert [c.vm(n)["parked"] for n in names] == [True, True]

    # The example as a command: both unparked first (it parks what it is given).
    for n in names:
        assert c.unpark(n, wait=True, within="60s").result == "reached"
    t0 = time.monotonic()
    p = subprocess.run([sys.executable, os.path.join(SRC, "clients", "python", "examples", "warm_pool.py"),
                        "--api", d.socket, "--jobs", "3", "--job-seconds", "0.2", *names],
                       capture_output=True, text=True, timeout=180)
    print(f"examples/warm_pool.py: exit {p.returncode} in {time.monotonic() - t0:.1f} s\n{p.stdout}{p.stderr}")
    assert p.returncode == 0, (p.stdout, p.stderr)
    assert p.stderr.count("unparked (sent)") == 3 and p.stderr.count("job ") == 3, p.stderr
    for n in names:
        v = c.vm(n)
        assert v["parked"] and abs(sizes(n)[0] - v["actual_bytes"]) <= TOL, v
        assert f"{n}: park reached" in p.stdout or f"{n}: park stalled" in p.stdout, p.stdout
    d.stop()
