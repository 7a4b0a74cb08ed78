#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""Cost of a /metrics scrape on the daemon's single loop thread, with N VMs, for one ballastd
binary or two (before and after a change) against the same fleet in one run.

The fleet: with --peers, N QMP test peers (BUILD/tests/qmp-peer, 1 GiB each; measured once every
VM is adopted and has reported guest statistics: every per-VM series present); without, N VMs against sockets that do not exist (status error, the
series of sizes absent). For each binary: one ballastd on the host scope, the N VMs registered,
then
1. the daemon's CPU time per GET /metrics: the on-CPU time of its threads (/proc/PID/task/*/schedstat)
   over REPEAT sequential scrapes, less its own work over the same time without requests,
   divided by REPEAT; the wall time per scrape and the exposition's size;
2. GET /v1/health (one every 5 ms on fresh connections) for --window s while another process
   scrapes back to back: what the scrapes cost the requests behind them.
With --before OLD, OLD is measured first and then BUILD/src/ballastd (or --ballastd), and the ratio
of the CPU per scrape is printed. The peers serve one daemon at a time (like QEMU), so the second
daemon adopts the same VMs.

usage: bench/metrics-scrape.py [N] [--peers] [--repeat R] [--window S] [--before OLD] [--ballastd NEW]
       (defaults 1000, no peers, 100, 5, none, BUILD/src/ballastd)
"""

import argparse
import glob
import json
import multiprocessing
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

TOP = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUILD = os.environ.get("BALLAST_BUILDDIR", os.path.join(TOP, "build"))


def http(sock, method, path, body=None):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(30)
    s.connect(sock)
    data = json.dumps(body).encode() if body is not None else b""
    hdr = f"{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
    if body is not None:
        hdr += f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n"
    s.sendall(hdr.encode() + b"\r\n" + data)
    out = bytearray()
    while (b := s.recv(1 << 20)):
        out += b
    s.close()
    head, _, payload = bytes(out).partition(b"\r\n\r\n")
    return int(head.split()[1]), payload


def cpu_ns(pid):
    """On-CPU time of every thread of pid, in ns."""
    t = 0
    for p in glob.glob(f"/proc/{pid}/task/*/schedstat"):
        try:
            t += int(open(p).read().split()[0])
        except (OSError, ValueError, IndexError):
            pass
    return t


def scraper(sock, stop, count):
    while not stop.is_set():
        http(sock, "GET", "/metrics")
        with count.get_lock():
            count.value += 1


def small_latencies(sock, window):
    lat = []
    end = time.monotonic() + window
    while time.monotonic() < end:
        t = time.monotonic()
        st, _ = http(sock, "GET", "/v1/health")
        assert st == 200, st
        lat.append((time.monotonic() - t) * 1000)
        time.sleep(0.005)
    return lat


def summary(lat):
    lat = sorted(lat)
    p99 = lat[min(len(lat) - 1, int(len(lat) * 0.99))]
    return f"median {statistics.median(lat):.2f} ms, p99 {p99:.2f} ms, max {lat[-1]:.2f} ms ({len(lat)} requests)"


def measure(binary, a, work, tag):
    sock = f"{work}/api-{tag}.sock"
    conf = f"{work}/ballastd-{tag}.conf"
    with open(conf, "w") as f:
        f.write(f"[api]\nsocket = {sock}\n[state]\ndirectory = {work}/state-{tag}\n[pressure]\nscope = host\n"
                "[log]\nlevel = error\n")
    bd = subprocess.Popen([binary, "--config", conf])
    try:
        deadline = time.monotonic() + 30
        while not os.path.exists(sock):
            if bd.poll() is not None or time.monotonic() > deadline:
                sys.exit(f"metrics-scrape.py: {binary} did not start")
            time.sleep(0.05)
        for i in range(a.n):
            st, _ = http(sock, "POST", "/v1/vms", {"id": f"vm{i:04d}", "driver": "qemu",
                                                   "socket": f"{work}/vm{i}.sock", "assigned_bytes": 1 << 30})
            assert st == 201, st
        want = "ok" if a.peers else "error"
        deadline = time.monotonic() + 300
        while True:
            st, body = http(sock, "GET", "/v1/vms")
            vms = json.loads(body)["vms"]
            # With peers, the guests' statistics too (read every 30 s or so): they are eleven of
            # the per-VM series, half the exposition; both binaries are measured with them.
            if all(v["status"] == want and (not a.peers or v["guest"]["total_bytes"] is not None) for v in vms):
                break
            if time.monotonic() > deadline:
                sys.exit(f"metrics-scrape.py: not every VM reached '{want}'" + (" with guest statistics" if a.peers else ""))
            time.sleep(0.5)
        time.sleep(3)  # let the adoption burst settle

        c0 = cpu_ns(bd.pid)
        t0 = time.monotonic()
        for _ in range(a.repeat):
            st, body = http(sock, "GET", "/metrics")
            assert st == 200
        wall_s = time.monotonic() - t0
        c1 = cpu_ns(bd.pid)
        time.sleep(wall_s)  # the same time without requests: the daemon's own work
        idle = cpu_ns(bd.pid) - c1
        cpu = max(0, c1 - c0 - idle) / 1e6 / a.repeat

        # The scrapes come from another process: no GIL between the two clients.
        stop = multiprocessing.Event()
        count = multiprocessing.Value("i", 0)
        th = multiprocessing.Process(target=scraper, args=(sock, stop, count))
        th.start()
        time.sleep(0.2)
        loaded = small_latencies(sock, a.window)
        stop.set()
        th.join()
        print(f"{binary}: ballastd with {a.n} VMs ({'qmp-peer, adopted' if a.peers else 'no peers, all in error'})")
        print(f"  GET /metrics: {len(body)} bytes, {cpu:.2f} ms of daemon CPU and {wall_s / a.repeat * 1000:.2f} ms "
              f"wall per scrape ({a.repeat} sequential)")
        print(f"  GET /v1/health behind GET /metrics: {summary(loaded)}; {count.value} scrapes meanwhile")
        sys.stdout.flush()
        return cpu
    finally:
        bd.send_signal(signal.SIGTERM)
        bd.wait(timeout=60)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("n", nargs="?", type=int, default=1000)
    ap.add_argument("--peers", action="store_true")
    ap.add_argument("--repeat", type=int, default=100)
    ap.add_argument("--window", type=float, default=5)
    ap.add_argument("--before")
    ap.add_argument("--ballastd", default=os.path.join(BUILD, "src/ballastd"))
    a = ap.parse_args()
    work = tempfile.mkdtemp(prefix="ballast-bench-metrics-")
    peers = []
    try:
        if a.peers:
            for i in range(a.n):
                peers.append(subprocess.Popen([os.path.join(BUILD, "tests/qmp-peer"), "--socket",
                                               f"{work}/vm{i}.sock", "--ram", "1G"],
                                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            deadline = time.monotonic() + 120
            while not all(os.path.exists(f"{work}/vm{i}.sock") for i in range(a.n)):
                if time.monotonic() > deadline:
                    sys.exit("metrics-scrape.py: peers did not start")
                time.sleep(0.1)
        before = measure(a.before, a, work, "before") if a.before else None
        after = measure(a.ballastd, a, work, "after")
        if before is not None:
            print(f"daemon CPU per scrape: {before:.2f} ms before, {after:.2f} ms after "
                  f"({before / after if after else float('inf'):.1f}x)")
    finally:
        for p in peers:
            p.send_signal(signal.SIGTERM)
        for p in peers:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
        subprocess.run(["rm", "-rf", work])


if __name__ == "__main__":
    main()
