# SPDX-License-Identifier: MIT
"""ballastctl under valgrind against a real VM: no leaks, no invalid reads or writes."""

import os
import shutil
import subprocess

import pytest

from conftest import SRC

PLAIN_CTL = os.path.join(os.environ.get("BALLAST_PLAIN_BUILDDIR", os.path.join(SRC, "build")), "src", "ballastctl")


@pytest.mark.skipif(not shutil.which("valgrind"), reason="valgrind is not installed")
def test_ballastctl_is_valgrind_clean(ctl, vm):
    assert os.path.exists(PLAIN_CTL), f"{PLAIN_CTL} missing: the valgrind run needs the non-sanitizer build"
    vm("vg", "--memory", "384M")
    commands = [
        ["balloon", "get", "--vm", "vg"],
        ["balloon", "caps", "--vm", "vg"],
        ["balloon", "stats", "--vm", "vg", "--period", "1"],
        ["--json", "balloon", "set", "--vm", "vg", "--wait", "256M"],
        ["balloon", "set", "--vm", "vg", "384M"],
        ["--json", "vm", "list"],
        ["vm", "exec", "vg", "--", "true"],
        ["vm", "meminfo", "vg"],
        ["balloon", "get", "--vm", "vg", "--expected-uid", "4242"],  # an error path
        ["balloon", "get", "--qmp", "/nonexistent.sock"],             # another
    ]
    for argv in commands:
        p = subprocess.run(["valgrind", "-q", "--leak-check=full", "--errors-for-leak-kinds=all",
                            "--error-exitcode=99", PLAIN_CTL] + argv,
                           env=ctl.env, capture_output=True, text=True, timeout=300)
        assert p.returncode != 99, f"valgrind found errors in {argv}:\n{p.stderr}"
        assert p.returncode in (0, 1), (argv, p.returncode, p.stderr)


PLAIN_D = os.path.join(os.path.dirname(PLAIN_CTL), "ballastd")


@pytest.mark.skipif(not shutil.which("valgrind"), reason="valgrind is not installed")
def test_ballastd_is_valgrind_clean(ctl, vm, tmp_path):
    """ballastd under valgrind managing a real VM through registration, a manual hold, a park and
    an unpark, bad requests, metrics and history, then SIGTERM: no leak, no invalid access, exit 0."""
    import json
    import signal
    import socket
    import time

    assert os.path.exists(PLAIN_D), f"{PLAIN_D} missing: the valgrind run needs the non-sanitizer build"
    vm("vgd", "--memory", "384M")
    api = str(tmp_path / "api.sock")
    conf = tmp_path / "ballastd.conf"
    conf.write_text(f"[api]\nsocket = {api}\n[state]\ndirectory = {tmp_path}/state\n[pressure]\nscope = host\n"
                    "[driver]\nstats_period = 1s\n")
    # Leaks of ours are definite or indirect; "still reachable" blocks at exit are the libraries'
    # own process-wide state (glib's constructors, loaded as a libvirt dependency), not ballastd's.
    d = subprocess.Popen(["valgrind", "-q", "--leak-check=full", "--errors-for-leak-kinds=definite,indirect",
                          "--show-leak-kinds=definite,indirect", "--error-exitcode=99",
                          PLAIN_D, "--config", str(conf)], stderr=subprocess.PIPE, text=True)

    def req(method, path, body=None, raw=None):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(120)
        s.connect(api)
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else b"")
        head = f"{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
        if data:
            head += f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n"
        s.sendall(head.encode() + b"\r\n" + data)
        out = b""
        while (b := s.recv(65536)):
            out += b
        s.close()
        return int(out.split()[1]), out.partition(b"\r\n\r\n")[2]

    try:
        end = time.monotonic() + 120  # valgrind is slow to start
        while not os.path.exists(api):
            assert d.poll() is None, f"ballastd exited early: {d.stderr.read()}"
            assert time.monotonic() < end, "ballastd under valgrind did not start its API in 120 s"
            time.sleep(0.2)
        qmp = os.path.join(ctl.run_dir, "vgd", "qmp.sock")
        st, _ = req("POST", "/v1/vms", {"id": "vgd", "driver": "qemu", "socket": qmp, "expected_uid": os.getuid(),
                                        "assigned_bytes": 384 << 20, "floor_bytes": 96 << 20})
        assert st == 201, st
        end = time.monotonic() + 60
        while json.loads(req("GET", "/v1/vms/vgd")[1])["actual_bytes"] is None:
            assert time.monotonic() < end, "the VM was not adopted"
            time.sleep(0.2)
        assert req("POST", "/v1/memory/reclaim", {"reclaim_bytes": 64 << 20, "hold_for": "30s",
                                                  "reason": "valgrind"})[0] == 200
        assert req("POST", "/v1/memory/reclaim", {"reclaim_bytes": 1, "hold_for": "0s"})[0] == 200
        assert req("POST", "/v1/vms/vgd/park", {"size_bytes": 192 << 20})[0] == 200
        assert req("POST", "/v1/vms/vgd/unpark", {"wait": True})[0] == 200
        for bad in (b"{bad", b"[]", b'{"id": 5}', b"\x00"):
            assert 400 <= req("POST", "/v1/vms", raw=bad)[0] < 500
        assert req("GET", "/v1/vms/vgd/stats")[0] == 200
        assert req("GET", "/metrics")[0] == 200
        assert req("GET", "/v1/history")[0] == 200
        assert req("DELETE", "/v1/vms/vgd")[0] == 200
    finally:
        d.send_signal(signal.SIGTERM)
        try:
            rc = d.wait(timeout=120)
        except subprocess.TimeoutExpired:
            d.kill()
            rc = d.wait()
        err = d.stderr.read()
    assert rc != 99, f"valgrind found errors in ballastd:\n{err}"
    assert rc == 0, (rc, err)
