# SPDX-License-Identifier: MIT
"""Issue 2: the QEMU driver, set-and-wait, the launcher and ballastctl, on real QEMU guests."""

import json
import os
import signal
import socket
import subprocess
import threading
import time

import pytest

from conftest import CTL, MiB, pid_alive, qemu_pids_under, rss_bytes, settled_rss, wait_until


def test_inflate_512_to_256(ctl, vm):
    vm("a", "--memory", "512M")
    before = ctl.meminfo("a")
    assert ctl.actual("a") == 512 * MiB

    out = ctl.json("balloon", "set", "--vm", "a", "--wait", "--tolerance", "1M", "256M")
    assert out["result"] == "reached", out
    print(f"inflate 512->256 MiB: {out['seconds']:.3f} s, {out['polls']} polls")

    # What QEMU reports...
    assert abs(ctl.actual("a") - 256 * MiB) <= 1 * MiB
    # ...and what the guest itself sees: its available memory fell by most of the 256 MiB.
    after = ctl.meminfo("a")
    drop = before["MemAvailable"] - after["MemAvailable"]
    print(f"guest MemAvailable {before['MemAvailable'] // MiB} -> {after['MemAvailable'] // MiB} MiB")
    assert drop >= 0.85 * 256 * MiB, f"MemAvailable fell by only {drop / MiB:.1f} MiB"

    out = ctl.json("balloon", "set", "--vm", "a", "--wait", "--tolerance", "1M", "512M")
    assert out["result"] == "reached", out
    print(f"deflate 256->512 MiB: {out['seconds']:.3f} s")
    back = ctl.meminfo("a")
    assert back["MemAvailable"] - after["MemAvailable"] >= 0.85 * 256 * MiB


def test_rss_returns_after_guest_dirtied_memory(ctl, vm):
    # Free page reporting off: only the balloon can give the host this memory back.
    vm("r", "--memory", "512M", "--free-page-reporting", "off")
    pid = ctl.qemu_pid("r")
    baseline = settled_rss(pid)

    fill = ctl.agent("r", "fill", "300")
    assert fill["ok"], fill
    dirty = settled_rss(pid)
    assert dirty - baseline >= 250 * MiB, f"guest fill did not show in QEMU RSS: {baseline / MiB:.0f} -> {dirty / MiB:.0f} MiB"
    ctl.run("vm", "release", "r", fill["handle"])
    freed = settled_rss(pid)
    # The guest freed it, but without reporting the host still holds it.
    assert freed - baseline >= 250 * MiB

    out = ctl.json("balloon", "set", "--vm", "r", "--wait", "--tolerance", "1M", "128M")
    assert out["result"] == "reached", out
    after = settled_rss(pid)
    print(f"QEMU RSS: baseline {baseline / MiB:.0f}, dirtied {dirty / MiB:.0f}, freed in guest {freed / MiB:.0f}, "
          f"after inflate to 128 MiB {after / MiB:.0f} MiB")
    assert after <= baseline + 16 * MiB, f"RSS {after / MiB:.0f} MiB is not within 16 MiB of baseline {baseline / MiB:.0f}"


def test_inflate_deflate_cycles_land_at_same_rss(ctl, vm):
    vm("c", "--memory", "512M", "--free-page-reporting", "off")
    pid = ctl.qemu_pid("c")
    fill = ctl.agent("c", "fill", "200", "--no-hold")
    assert fill["ok"], fill
    samples = []
    for _ in range(3):
        assert ctl.json("balloon", "set", "--vm", "c", "--wait", "--tolerance", "1M", "192M")["result"] == "reached"
        samples.append(settled_rss(pid))
        assert ctl.json("balloon", "set", "--vm", "c", "--wait", "--tolerance", "1M", "512M")["result"] == "reached"
    print("RSS after each inflate (MiB):", [round(s / MiB) for s in samples])
    assert max(samples) - min(samples) <= 20 * MiB, samples


def fresh_stats(ctl, name, newer_than=None):
    """Guest statistics with last-update after `newer_than` (QEMU reports whole seconds); without
    it, after the update current now, so that the answer was taken wholly after what just happened."""
    if newer_than is None:
        newer_than = ctl.json("balloon", "stats", "--vm", name)["last_update"]
    return wait_until(lambda: (lambda s: s if s["last_update"] > newer_than else None)(
        ctl.json("balloon", "stats", "--vm", name)), 15, 0.2, "a fresh guest statistics update")


def test_guest_statistics_follow_guest_activity(ctl, vm):
    vm("s", "--memory", "512M")
    s0 = ctl.json("balloon", "stats", "--vm", "s", "--period", "1")
    s0 = fresh_stats(ctl, "s", s0["last_update"])
    assert s0["total"] and s0["free"] and s0["available"] is not None

    # Touching memory in the guest shows up as minor faults.
    assert ctl.agent("s", "fill", "64", "--no-hold")["ok"]
    s1 = fresh_stats(ctl, "s")
    assert s1["minor_faults"] > s0["minor_faults"], (s0, s1)

    # Inflating takes free and available memory away; deflating gives it back.
    assert ctl.json("balloon", "set", "--vm", "s", "--wait", "256M")["result"] == "reached"
    s2 = fresh_stats(ctl, "s")
    assert s2["free"] < s1["free"] - 200 * MiB and s2["available"] < s1["available"] - 200 * MiB, (s1, s2)
    assert ctl.json("balloon", "set", "--vm", "s", "--wait", "512M")["result"] == "reached"
    s3 = fresh_stats(ctl, "s")
    assert s3["free"] > s2["free"] + 200 * MiB and s3["available"] > s2["available"] + 200 * MiB, (s2, s3)


def test_peer_uid_mismatch_is_refused(ctl, vm):
    vm("u", "--memory", "256M")
    # QEMU runs as us (root here); insist on another uid.
    p = ctl.run("balloon", "get", "--vm", "u", "--expected-uid", "4242", check=False)
    assert p.returncode == 1, p
    assert "4242" in p.stderr and f"uid {os.geteuid()}" in p.stderr, p.stderr
    # The right uid works on the same socket.
    assert ctl.json("balloon", "get", "--vm", "u", "--expected-uid", str(os.geteuid()))["actual"] == 256 * MiB


class HungPeer:
    """A Unix socket that accepts and then says nothing (greet=False), or greets and then never
    answers a command (greet=True)."""

    def __init__(self, path, greet):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(path)
        self.sock.listen(4)
        self.greet = greet
        self.conns = []
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self):
        try:
            while True:
                c, _ = self.sock.accept()
                self.conns.append(c)
                if self.greet:
                    c.sendall(b'{"QMP": {"version": {"qemu": {"micro": 0, "minor": 2, "major": 7}, '
                              b'"package": ""}, "capabilities": []}}\r\n')
                    cmd = json.loads(c.recv(4096).split(b"\n")[0])  # qmp_capabilities
                    c.sendall(json.dumps({"return": {}, "id": cmd["id"]}).encode() + b"\r\n")
        except OSError:
            pass

    def close(self):
        self.sock.close()
        for c in self.conns:
            c.close()


@pytest.mark.parametrize("greet", [False, True], ids=["silent", "greets-then-hangs"])
def test_hung_qmp_peer_fails_at_deadline(tmp_path, greet):
    path = str(tmp_path / "q.sock")
    peer = HungPeer(path, greet)
    try:
        t0 = time.monotonic()
        p = subprocess.run([CTL, "balloon", "get", "--qmp", path, "--timeout", "1s"], capture_output=True, text=True,
                           timeout=60)
        took = time.monotonic() - t0
    finally:
        peer.close()
    print(f"exit {p.returncode} after {took:.2f} s: {p.stderr.strip()}")
    assert p.returncode == 1
    assert 0.9 <= took < 10, took
    assert ("greeting" in p.stderr) if not greet else ("no reply within" in p.stderr), p.stderr


def test_vm_stop_leaves_nothing(ctl, vm):
    vm("x", "--memory", "256M")
    info = ctl.json("vm", "info", "x")
    assert pid_alive(info["qemu_pid"]) and os.path.isdir(info["dir"])
    ctl.run("vm", "stop", "x")
    assert not pid_alive(info["qemu_pid"])
    assert not os.path.exists(info["dir"])
    assert ctl.json("vm", "list") == []


def test_killing_the_launcher_takes_qemu_down(ctl, vm):
    # Background VM: its launcher is the supervisor process.
    vm("k1", "--memory", "256M")
    info = ctl.json("vm", "info", "k1")
    os.kill(info["supervisor_pid"], signal.SIGKILL)
    wait_until(lambda: not pid_alive(info["qemu_pid"]), 10, what="QEMU to die with its supervisor")
    assert ctl.json("vm", "info", "k1")["state"] in ("stale", "exited")
    ctl.run("vm", "stop", "k1")  # cleans up what the killed supervisor could not
    assert not os.path.exists(info["dir"])

    # Foreground VM: the ballastctl process itself is the launcher.
    proc = subprocess.Popen([CTL, "vm", "start", "k2", "--memory", "256M", "--foreground"], env=ctl.env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert "started" in line, (line, proc.stderr.read() if proc.poll() is not None else "")
        info = ctl.json("vm", "info", "k2")
        proc.kill()
        proc.wait(10)
        wait_until(lambda: not pid_alive(info["qemu_pid"]), 15, what="QEMU to die with its launching process")
        wait_until(lambda: not os.path.exists(info["dir"]), 15, what="the VM directory to be removed")
    finally:
        if proc.poll() is None:
            proc.kill()
    assert qemu_pids_under(ctl.run_dir) == []


def test_cli_errors_are_clear(ctl):
    p = ctl.run("balloon", "set", "--vm", "nosuch", "256M", check=False)
    assert p.returncode == 1 and "no running VM named 'nosuch'" in p.stderr
    p = ctl.run("balloon", "set", "--qmp", "/nonexistent/q.sock", "256M", check=False)
    assert p.returncode == 1 and "/nonexistent/q.sock" in p.stderr
    p = ctl.run("balloon", "set", "--vm", "x", "12Q", check=False)
    assert p.returncode == 2 and "invalid size" in p.stderr
    p = ctl.run("vm", "start", "bad/name", check=False)
    assert p.returncode == 1 and "invalid VM name" in p.stderr
    p = ctl.run("vm", "stop", "nosuch", check=False)
    assert p.returncode == 1 and "no VM named" in p.stderr


def test_exec_exit_codes_and_output(ctl, vm):
    vm("e", "--memory", "256M")
    p = ctl.run("vm", "exec", "e", "--", "sh", "-c", "echo out; echo err >&2; exit 7", check=False)
    assert p.returncode == 7 and p.stdout == "out\n" and "err" in p.stderr
    p = ctl.run("vm", "exec", "e", "--", "sh", "-c", "kill -9 $$", check=False)
    assert p.returncode == 137
