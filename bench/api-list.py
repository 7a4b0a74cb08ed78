#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""Cost of a large API answer on the daemon's single loop thread: GET /v1/vms with N VMs.

Starts one ballastd on the host scope and registers N VMs: with --peers against N QMP test peers
(build/tests/qmp-peer, adopted, the full VM objects of a working fleet), without against sockets
that do not exist (every VM in 'error', retrying with back-off). Then measures:

1. the daemon's CPU time per GET /v1/vms (utime + stime of ballastd over REPEAT sequential
   requests, divided by REPEAT) and the answer's size;
2. the latency of small requests (GET /v1/health, one every 5 ms on fresh connections) first
   alone, then while another client asks GET /v1/vms back to back: what one big answer costs the
   requests queued behind it on the loop;
3. with --churn K: the wall time of GET /v1/vms (sequential, for --window s) while K processes
   remove the first K VMs and register them again as fast as they are answered. Every such change
   moves the cache entry of every VM after it (the list is in id order), so the cache is never
   complete: the list waits for its time bound (API_VM_LIST_WAIT, src/api/api.c), and did wait
   API_VM_CACHE_TURNS loop turns before that bound existed. GET /v1/health is timed meanwhile.

--ballastd PATH runs another binary (e.g. one built from an older commit) with the same load.

usage: bench/api-list.py [N] [--peers] [--repeat R] [--window S] [--churn K] [--ballastd PATH]
       (defaults 1000, no peers, 50, 5, 0, BUILD/src/ballastd)
"""

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import multiprocessing
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


def hammer(sock, stop, count):
    while not stop.is_set():
        http(sock, "GET", "/v1/vms")
        with count.get_lock():
            count.value += 1


def churn(sock, work, k, stop, count):
    body = {"id": f"vm{k:04d}", "driver": "qemu", "socket": f"{work}/vm{k}.sock", "assigned_bytes": 1 << 30}
    while not stop.is_set():
        st, _ = http(sock, "DELETE", f"/v1/vms/vm{k:04d}")
        assert st == 200, st
        st, _ = http(sock, "POST", "/v1/vms", body)
        assert st == 201, st
        with count.get_lock():
            count.value += 1


def timed_lists(sock, window, stop):
    lat = []
    end = time.monotonic() + window
    while time.monotonic() < end:
        t = time.monotonic()
        st, _ = http(sock, "GET", "/v1/vms")
        assert st == 200, st
        lat.append((time.monotonic() - t) * 1000)
    stop.set()
    return lat


def cpu_ticks(pid):
    f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return int(f[11]) + int(f[12])  # utime + stime


def small_latencies(sock, window, stop=None):
    lat = []
    end = time.monotonic() + window
    while time.monotonic() < end and not (stop and stop.is_set()):
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


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("n", nargs="?", type=int, default=1000)
    ap.add_argument("--peers", action="store_true")
    ap.add_argument("--repeat", type=int, default=50)
    ap.add_argument("--window", type=float, default=5)
    ap.add_argument("--churn", type=int, default=0)
    ap.add_argument("--ballastd", default=os.path.join(BUILD, "src/ballastd"))
    a = ap.parse_args()
    n = a.n
    work = tempfile.mkdtemp(prefix="ballast-bench-api-list-")
    sock = f"{work}/api.sock"
    peers, bd = [], None
    try:
        if a.peers:
            for i in range(n):
                peers.append(subprocess.Popen([os.path.join(BUILD, "tests/qmp-peer"), "--socket",
                                               f"{work}/vm{i}.sock", "--ram", "1G"],
                                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            deadline = time.monotonic() + 120
            while not all(os.path.exists(f"{work}/vm{i}.sock") for i in range(n)):
                if time.monotonic() > deadline:
                    sys.exit("api-list.py: peers did not start")
                time.sleep(0.1)
        conf = f"{work}/ballastd.conf"
        with open(conf, "w") as f:
            f.write(f"[api]\nsocket = {sock}\n[state]\ndirectory = {work}/state\n[pressure]\nscope = host\n"
                    "[log]\nlevel = error\n")
        bd = subprocess.Popen([a.ballastd, "--config", conf])
        while not os.path.exists(sock):
            time.sleep(0.05)
        for i in range(n):
            st, _ = http(sock, "POST", "/v1/vms", {"id": f"vm{i:04d}", "driver": "qemu",
                                                   "socket": f"{work}/vm{i}.sock", "assigned_bytes": 1 << 30})
            assert st == 201, st
        want = "ok" if a.peers else "error"
        deadline = time.monotonic() + 300
        while True:
            st, body = http(sock, "GET", "/v1/vms")
            if all(v["status"] == want for v in json.loads(body)["vms"]):
                break
            if time.monotonic() > deadline:
                sys.exit(f"api-list.py: not every VM reached '{want}'")
            time.sleep(0.5)
        time.sleep(3)  # let the adoption burst settle

        hz = os.sysconf("SC_CLK_TCK")
        base = small_latencies(sock, 1)
        c0 = cpu_ticks(bd.pid)
        t0 = time.monotonic()
        for _ in range(a.repeat):
            st, body = http(sock, "GET", "/v1/vms")
            assert st == 200
        wall = (time.monotonic() - t0) / a.repeat * 1000
        idle0 = cpu_ticks(bd.pid)
        time.sleep(wall * a.repeat / 1000)  # the same time without requests: the daemon's own work
        idle = cpu_ticks(bd.pid) - idle0
        cpu = max(0, idle0 - c0 - idle) / hz / a.repeat * 1000

        # The list requests come from another process: no GIL between the two clients.
        stop = multiprocessing.Event()
        count = multiprocessing.Value("i", 0)
        th = multiprocessing.Process(target=hammer, args=(sock, stop, count))
        th.start()
        time.sleep(0.2)
        loaded = small_latencies(sock, a.window)
        stop.set()
        th.join()
        big = [None] * count.value

        print(f"ballastd with {n} VMs ({'qmp-peer, adopted' if a.peers else 'no peers, all in error'}):")
        print(f"  GET /v1/vms: {len(body)} bytes, {cpu:.2f} ms of daemon CPU and {wall:.2f} ms wall per request "
              f"({a.repeat} sequential)")
        print(f"  GET /v1/health alone:                 {summary(base)}")
        print(f"  GET /v1/health behind GET /v1/vms:    {summary(loaded)}; {len(big)} lists answered meanwhile")

        if a.churn:
            stop = multiprocessing.Event()
            count = multiprocessing.Value("i", 0)
            ch = [multiprocessing.Process(target=churn, args=(sock, work, k, stop, count)) for k in range(a.churn)]
            for p in ch:
                p.start()
            time.sleep(0.2)
            hstop = multiprocessing.Event()
            q = multiprocessing.Queue()
            hp = multiprocessing.Process(target=lambda: q.put(small_latencies(sock, a.window + 60, hstop)))
            hp.start()
            lists = timed_lists(sock, a.window, hstop)
            health = q.get()
            hp.join()
            stop.set()
            for p in ch:
                p.join()
            print(f"  GET /v1/vms while {a.churn} clients remove and register the first {a.churn} VMs "
                  f"({count.value} times): {summary(lists)}")
            print(f"  GET /v1/health meanwhile:             {summary(health)}")
    finally:
        if bd:
            bd.send_signal(signal.SIGTERM)
            bd.wait(timeout=30)
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
