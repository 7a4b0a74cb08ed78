# SPDX-License-Identifier: MIT
"""GET /v1/vms/{id}/stats while the VM is deleted (issue 15): the VM's fake QEMU monitor
(tests/peers/qmp-peer) holds every guest-stats answer for a few seconds; the VM is deleted while the
GET waits for one. The GET must be answered at once with 404 (the VM was removed), not left
unanswered, and the daemon must exit cleanly afterwards (run against a sanitizer build, its leak
check sees the request's state freed)."""

import os
import subprocess
import threading
import time

import pytest

from conftest import BUILD, MiB, wait_until
from conftest_daemon import ballastd, daemons  # noqa: F401 (fixtures)

QMP_PEER = os.path.join(BUILD, "tests", "qmp-peer")
DELAY_MS = 4000  # below the driver's op_timeout (5 s): the answer would come, just late


def stats_lines(path, what="stats"):
    try:
        with open(path) as f:
            return [int(l.split()[0]) / 1e6 for l in f if l.split()[1:] == [what]]
    except FileNotFoundError:
        return []


@pytest.fixture
def slow_peer(tmp_path):
    if not os.access(QMP_PEER, os.X_OK):
        msg = f"qmp-peer is not built: {QMP_PEER}"
        if os.environ.get("BALLAST_REQUIRE_VM"):
            pytest.fail(msg)
        pytest.skip(msg)
    sock = str(tmp_path / "p1.qmp")
    cmdlog = str(tmp_path / "p1.commands")
    log = open(tmp_path / "p1.peer.log", "wb")
    p = subprocess.Popen([QMP_PEER, "--socket", sock, "--ram", str(512 * MiB), "--rate-mib-s", "2000",
                          "--stats-delay-ms", str(DELAY_MS), "--log-commands", cmdlog],
                         stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True)
    log.close()
    try:
        wait_until(lambda: os.path.exists(sock) or p.poll() is not None, 20, 0.05, "qmp-peer to listen")
        assert p.poll() is None, f"qmp-peer exited {p.returncode}"
        yield sock, cmdlog
    finally:
        if p.poll() is None:
            p.kill()
        p.wait(30)


def test_stats_get_answered_when_vm_deleted(daemons, slow_peer):  # noqa: F811
    sock, cmdlog = slow_peer
    d = daemons().start()
    d.register("p1", sock, 512 * MiB)
    d.wait_status(["p1"])
    # The controller's own first read of the guest's statistics (after it sets the period) is
    # answered first: later ones come tens of seconds apart, so the next request is the GET's.
    wait_until(lambda: stats_lines(cmdlog, "stats-reply"), 60, 0.05, "the controller's first statistics read")
    before = len(stats_lines(cmdlog))

    out = {}

    def get():
        t0 = time.monotonic()
        try:
            out["r"] = d.request("GET", "/v1/vms/p1/stats", timeout=20)
        except OSError as e:  # a timeout: never answered
            out["error"] = e
        out["t"] = time.monotonic() - t0

    th = threading.Thread(target=get)
    th.start()
    try:
        # The GET's request has reached the monitor, whose answer is held DELAY_MS.
        wait_until(lambda: len(stats_lines(cmdlog)) > before, 20, 0.02, "the GET's statistics request")
        deleted_at = time.monotonic()
        r = d.request("DELETE", "/v1/vms/p1")
        assert r.status == 200, r
    finally:
        th.join(30)
    answered_after = time.monotonic() - deleted_at
    assert "error" not in out, (f"GET /v1/vms/p1/stats was not answered within 20 s of the VM's deletion: "
                                f"{out['error']!r}\n{d.log_tail(30)}")
    r = out["r"]
    assert r.status == 404, f"expected 404 (the VM was removed meanwhile), got {r!r}"
    assert r.json and r.json["error"]["code"] == "not_found", r
    assert "removed" in r.json["error"]["message"], r
    # At once: not when the held answer arrives (DELAY_MS after the request).
    assert answered_after < DELAY_MS / 1000 / 2, f"answered {answered_after:.2f} s after the DELETE: {r!r}"
    assert d.vms() == {}
    # A clean exit: no leak of the request's state (LeakSanitizer in a sanitizer build).
    d.stop()
