#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""What open API connections cost ballastd in resident memory.

Starts one ballastd with no VMs, reads its VmRSS, opens N connections to the Unix API socket (each
sends the first line of a request and stops there, the way a slow or stalled client does), waits
until the daemon has seen them, reads VmRSS again, then closes them and reads it a third time.

usage: bench/conn-rss.py [N] [SEND]   (default 100 and a request line; SEND "" opens idle connections,
"head" sends a whole request head but its last empty line, "body" a head and part of its body,
"keepalive" a whole request, reads the answer and keeps the connection; BALLAST_BUILDDIR selects
the build)
"""

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time

TOP = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUILD = os.environ.get("BALLAST_BUILDDIR", os.path.join(TOP, "build"))
KiB = 1024


def rss(pid):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * KiB
    return 0


def health(sock):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(10)
    s.connect(sock)
    s.sendall(b"GET /v1/health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    out = b""
    while (b := s.recv(65536)):
        out += b
    s.close()
    return out.split(b" ", 2)[1] == b"200"


def settle(pid):
    """VmRSS once it has stopped moving (three equal readings 100 ms apart, at most 5 s)."""
    last, same = -1, 0
    deadline = time.monotonic() + 5
    while same < 3 and time.monotonic() < deadline:
        now = rss(pid)
        same = same + 1 if now == last else 0
        last = now
        time.sleep(0.1)
    return last


def main():
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 100
    send = sys.argv[2] if len(sys.argv) > 2 else "line"
    data = {"line": b"GET /v1/health HTTP/1.1\r\n", "": b"",
            "head": b"GET /v1/health HTTP/1.1\r\nHost: localhost\r\nUser-Agent: bench\r\nAccept: */*\r\n",
            "keepalive": b"GET /v1/vms HTTP/1.1\r\nHost: localhost\r\n\r\n",
            "body": b"POST /v1/reclaim HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
                    b"Content-Length: 64\r\n\r\n{\"bytes\": "}[send]
    work = tempfile.mkdtemp(prefix="ballast-bench-conn-rss-")
    bd = None
    conns = []
    try:
        conf = f"{work}/ballastd.conf"
        with open(conf, "w") as f:
            f.write(f"[api]\nsocket = {work}/api.sock\n[state]\ndirectory = {work}/state\n[pressure]\nscope = host\n"
                    f"[log]\nlevel = warning\n")
        bd = subprocess.Popen([os.path.join(BUILD, "src/ballastd"), "--config", conf])
        deadline = time.monotonic() + 30
        while not os.path.exists(f"{work}/api.sock"):
            if time.monotonic() > deadline or bd.poll() is not None:
                sys.exit("conn-rss.py: ballastd did not start")
            time.sleep(0.05)
        for _ in range(20):  # warm up: the first requests allocate what every request needs
            health(f"{work}/api.sock")
        before = settle(bd.pid)
        for _ in range(n):
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.settimeout(10)
            s.connect(f"{work}/api.sock")
            if data:
                s.sendall(data)
            if send == "keepalive":  # a whole request, answered; the client keeps the connection
                got = b""
                while b"\r\n\r\n" not in got:
                    got += s.recv(65536)
            conns.append(s)
        assert health(f"{work}/api.sock")  # answered after all of the above were accepted
        held = settle(bd.pid)
        for s in conns:
            s.close()
        conns = []
        assert health(f"{work}/api.sock")
        after = settle(bd.pid)
        print(f"[{send or 'idle'}] ballastd VmRSS: {before / KiB:.0f} KiB idle, {held / KiB:.0f} KiB with {n} open connections "
              f"(+{(held - before) / KiB:.0f} KiB, {(held - before) / n / KiB:.1f} KiB each), "
              f"{after / KiB:.0f} KiB after they closed")
    finally:
        for s in conns:
            s.close()
        if bd:
            bd.send_signal(signal.SIGTERM)
            bd.wait(timeout=30)
        subprocess.run(["rm", "-rf", work])


if __name__ == "__main__":
    main()
