# SPDX-License-Identifier: MIT
"""Text from across a trust boundary does not trick ballast: a fake QEMU whose error message is 600
bytes of multibyte characters with newlines and terminal escapes. No VM is started.

- GET /v1/vms and /v1/vms/{id} keep "last_error" (cut at a character boundary, valid UTF-8, no
  control characters) for the VM in 'error';
- the daemon log has no raw ESC or other control byte (escaped as \\xHH instead) and no forged line;
- `ballastctl vm show` and `ballastctl vms` print no raw control bytes, and `vm show` shows the
  error."""

import json
import os
import socket
import subprocess
import threading

from conftest import CTL, MiB
from conftest_daemon import ballastd, daemons  # noqa: F401 (fixtures)

# 600 bytes: "é€" blocks with newlines, colour and title escapes, a line that would look like a log
# record of its own, then 4-byte characters. Two fakes, their texts one byte apart: the daemon's
# 511-byte cut falls inside a 4-byte character for at least one of them.
def hostile(pad):
    s = (pad + "\x1b[31m" + "é€é€\n" * 20 + "\nballastd: VM other: forged line\n\x1b]0;title\x07" + "😀" * 100)
    return s.encode()[:600].decode("utf-8", "ignore")
CONTROLS = {c for c in range(0x20)} | {0x7f}


class HostileQemu:
    """Greets like QEMU, accepts qmp_capabilities and answers every other command with a
    GenericError whose description is HOSTILE."""

    def __init__(self, path, text):
        self.path = path
        self.text = text
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(path)
        self.sock.listen(8)
        self.closed = False
        self.conns = []
        threading.Thread(target=self.accept, daemon=True).start()

    def accept(self):
        while not self.closed:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            self.conns.append(c)
            threading.Thread(target=self.serve, args=(c,), daemon=True).start()

    def serve(self, c):
        try:
            c.sendall(b'{"QMP": {"version": {"qemu": {"micro": 0, "minor": 2, "major": 7}, "package": "fake"}, '
                      b'"capabilities": []}}\r\n')
            buf = b""
            while True:
                data = c.recv(65536)
                if not data:
                    return
                buf += data
                while b"\n" in buf:
                    line, buf = buf.split(b"\n", 1)
                    if not line.strip():
                        continue
                    cmd = json.loads(line)
                    if cmd.get("execute") == "qmp_capabilities":
                        r = {"return": {}}
                    else:
                        r = {"error": {"class": "GenericError", "desc": self.text}}
                    if "id" in cmd:
                        r["id"] = cmd["id"]
                    c.sendall(json.dumps(r).encode() + b"\r\n")
        except OSError:
            pass

    def close(self):
        self.closed = True
        self.sock.close()
        for c in self.conns:
            try:
                c.close()
            except OSError:
                pass


def assert_clean_text(s, what):
    b = s.encode("utf-8") if isinstance(s, str) else s
    b.decode("utf-8")  # raises on invalid UTF-8
    bad = sorted({c for c in b if c in CONTROLS} - {0x0a})
    assert not bad, f"{what} holds control bytes {[hex(c) for c in bad]}: {b[:300]!r}"


def test_hostile_error_text(daemons, tmp_path):  # noqa: F811
    fakes = [HostileQemu(str(tmp_path / f"qmp{i}.sock"), hostile(pad)) for i, pad in enumerate(("", "x"))]
    assert all(597 <= len(f.text.encode()) <= 600 for f in fakes)
    try:
        d = daemons().start()
        for i, f in enumerate(fakes):
            d.register(f"evil{i}", f.path, 512 * MiB)
        vms = d.wait_vms(lambda v: all(v[f"evil{i}"]["status"] == "error" for i in range(2)), 30,
                         "both VMs to be 'error'")
        for i in range(2):
            assert vms[f"evil{i}"].get("last_error") is not None, \
                f"VM evil{i} is 'error' but its last_error is gone: {vms[f'evil{i}']}"
        for i in range(2):
            err = vms[f"evil{i}"]["last_error"]
            assert_clean_text(err, "last_error")
            assert "\n" not in err
            assert "QEMU refused" in err and "é€é€" in err, err
            assert 400 < len(err.encode()) < 512, (len(err.encode()), err)
            assert d.vm(f"evil{i}")["last_error"] == err

        # The raw body too: no control characters escaped as \u00XX either.
        raw = d.request("GET", "/v1/vms").body
        assert b"\\u001b" not in raw.lower() and b"\\n" not in raw, raw[:400]

        # The CLI: vm show prints the error, nothing raw reaches the terminal.
        env = dict(os.environ, BALLAST_API=d.socket)
        for args in (["vm", "show", "evil0"], ["vm", "show", "evil1"], ["vms"]):
            p = subprocess.run([CTL] + args, env=env, capture_output=True, timeout=30)
            assert p.returncode == 0, p
            assert_clean_text(p.stdout, "ballastctl " + " ".join(args))
        for i in range(2):
            show = subprocess.run([CTL, "vm", "show", f"evil{i}"], env=env, capture_output=True,
                                  timeout=30).stdout.decode()
            line = [ln for ln in show.splitlines() if ln.startswith("last error:")]
            assert line and "QEMU refused" in line[0] and "é€" in line[0], show

        # The log: one warning line, ESC escaped, no forged record.
        d.stop()
        log = d.log_text()
        assert "\x1b" not in log and "\x07" not in log, log[-2000:]
        assert not any(ln.startswith("ballastd: VM other") for ln in log.splitlines()), log[-2000:]
    finally:
        for f in fakes:
            f.close()


class FakeBallastd:
    """Answers every request on a Unix socket with one fixed JSON body: what a compromised or buggy
    daemon, or an older one, might send to ballastctl."""

    def __init__(self, path, body):
        self.path = path
        self.body = json.dumps(body).encode()
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(path)
        self.sock.listen(8)
        threading.Thread(target=self.serve, daemon=True).start()

    def serve(self):
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            with c:
                buf = b""
                while b"\r\n\r\n" not in buf:
                    data = c.recv(65536)
                    if not data:
                        break
                    buf += data
                c.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n"
                          + f"Content-Length: {len(self.body)}\r\n\r\n".encode() + self.body)

    def close(self):
        self.sock.close()


def test_ballastctl_escapes_what_the_daemon_says(tmp_path):
    """ballastctl does not trust the daemon's strings either: control characters in any of them
    (here JSON-escaped, so valid JSON) never reach the terminal raw."""
    evil = "\x1b[2J\x1b]0;owned\x07line1\nforged: yes\r\x9b31m\u202eend"
    vm = {"id": "v\x1bm", "driver": "qemu", "socket": "/run/\x1b[31m.sock", "status": "error",
          "assigned_bytes": 512 * MiB, "floor_bytes": 0, "shares": 1000, "target_bytes": None,
          "actual_bytes": None, "reason": evil, "last_error": evil, "errors": 1, "updated": None,
          "extra\x1b": evil}
    for path, args in (("/v1/vms/x", ["vm", "show", "x"]), ("/v1/vms", ["vms"])):
        sock = str(tmp_path / f"fake{len(args)}.sock")
        fake = FakeBallastd(sock, vm if len(args) == 3 else {"vms": [vm]})
        try:
            p = subprocess.run([CTL] + args, env=dict(os.environ, BALLAST_API=sock), capture_output=True, timeout=30)
            assert p.returncode == 0, p
            assert_clean_text(p.stdout, "ballastctl " + " ".join(args))
            assert "\u202e" not in p.stdout.decode() and "\x9b" not in p.stdout.decode()
            out = p.stdout.decode()
            assert "line1 forged: yes" in out, out
            if args[0] == "vm":
                assert any(ln.startswith("last error:") and "line1" in ln for ln in out.splitlines()), out
        finally:
            fake.close()
