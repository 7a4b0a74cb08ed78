#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""Reaction latency (docs/spec.md "Numbers to beat"): the scope crosses the low watermark → the first
balloon command reaches the hypervisor.

A memory cgroup v1 with a limit is the scope; ballastd watches it. The VM is the QMP test peer
(build/tests/qmp-peer, a protocol-faithful fake QEMU that logs the monotonic time of every
`balloon` command it receives), so rounds are fast and the guest's speed is not measured. A hog in
the cgroup allocates 1 MiB every 2.5 ms and records the monotonic time at which the cgroup's own
figures (limit - usage) first fall below 10% of the limit. The latency of a round is
first balloon command - crossing, both CLOCK_MONOTONIC on this host.

Two configurations, interleaved round by round so machine noise hits both alike:
  events   the default: cgroup v1 usage thresholds at the watermarks wake the controller
  sampling [pressure] psi = off: no event source, only the 250 ms MemAvailable sampling

usage: sudo bench/reaction.py [ROUNDS]     (default 20 per configuration; needs a build)
"""

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time

TOP = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUILD = os.environ.get("BALLAST_BUILDDIR", os.path.join(TOP, "build"))
MiB = 1 << 20
CG_ROOT = "/sys/fs/cgroup/memory"
LIMIT = 512 * MiB


def http(sock, method, path, body=None, timeout=10):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    s.connect(sock)
    data = json.dumps(body).encode() if body is not None else b""
    hdr = f"{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
    if body is not None:
        hdr += f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n"
    s.sendall(hdr.encode() + b"\r\n" + data)
    out = b""
    while True:
        b = s.recv(65536)
        if not b:
            break
        out += b
    s.close()
    head, _, payload = out.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(payload) if payload else None


def wait_for(cond, timeout, what):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        v = cond()
        if v:
            return v
        time.sleep(0.02)
    raise TimeoutError(what)


HOG = r"""
import os, sys, time
cg = sys.argv[1]
open(cg + "/cgroup.procs", "w").write(str(os.getpid()))
lim = int(open(cg + "/memory.limit_in_bytes").read())
def usage(): return int(open(cg + "/memory.usage_in_bytes").read())
chunks = []; crossed = None
# 1 MiB at a time, checked right after each one: the crossing is known to within one chunk.
while crossed is None or time.monotonic() - crossed < 0.5:
    if lim - usage() > lim // 20:
        b = bytearray(1 << 20); b[::4096] = b"\x01" * 256; chunks.append(b)
    if crossed is None and lim - usage() < lim // 10:
        crossed = time.monotonic()
        print(crossed, flush=True)
    time.sleep(0.0025)
sys.stdin.read()
"""


def round_once(work, cg, mode, log):
    """One pressure episode; returns the latency in ms."""
    before = os.path.getsize(log) if os.path.exists(log) else 0
    hog = subprocess.Popen([sys.executable, "-c", HOG, cg], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        line = hog.stdout.readline()
        if not line:
            raise RuntimeError("the hog died before crossing")
        crossed = float(line)

        def first_cmd():
            with open(log) as f:
                f.seek(before)
                for ln in f:
                    t, _, v = ln.split()
                    if int(v) < 4 << 30:
                        return int(t) / 1e6
            return None
        t = wait_for(first_cmd, 10, f"no balloon command ({mode})")
        return (t - crossed) * 1000
    finally:
        hog.stdin.close()
        hog.wait(timeout=30)


def main():
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 20
    if os.geteuid() != 0 or not os.path.isdir(CG_ROOT):
        sys.exit("reaction.py: needs root and the cgroup v1 memory controller")
    work = tempfile.mkdtemp(prefix="ballast-bench-reaction-")
    procs, cgs = [], []
    results = {"events": [], "sampling": []}
    try:
        daemons = {}
        for mode in results:
            cg = f"{CG_ROOT}/ballast-bench-{mode}-{os.getpid()}"
            os.mkdir(cg)
            cgs.append(cg)
            open(cg + "/memory.limit_in_bytes", "w").write(str(LIMIT))
            d = os.path.join(work, mode)
            os.mkdir(d)
            log = os.path.join(d, "peer.log")
            peer = subprocess.Popen([os.path.join(BUILD, "tests/qmp-peer"), "--socket", d + "/qmp.sock", "--ram", "4G",
                                     "--rate-mib-s", "100000", "--log-commands", log])
            procs.append(peer)
            wait_for(lambda: os.path.exists(d + "/qmp.sock"), 10, "qmp-peer socket")
            conf = os.path.join(d, "ballastd.conf")
            with open(conf, "w") as f:
                f.write(f"[api]\nsocket = {d}/api.sock\n[state]\ndirectory = {d}/state\n"
                        f"[pressure]\nscope = cgroup:{cg}\n" + ("psi = off\n" if mode == "sampling" else "") +
                        "[policy]\ndwell = 0s\n[log]\nlevel = warning\n")
            bd = subprocess.Popen([os.path.join(BUILD, "src/ballastd"), "--config", conf])
            procs.append(bd)
            wait_for(lambda: os.path.exists(d + "/api.sock"), 10, "ballastd socket")
            st, _ = http(d + "/api.sock", "POST", "/v1/vms",
                         {"id": "peer", "driver": "qemu", "socket": d + "/qmp.sock", "assigned_bytes": 4 << 30})
            assert st == 201, st
            daemons[mode] = (d, cg, log)

        def full(d):
            st, vm = http(d + "/api.sock", "GET", "/v1/vms/peer")
            return vm["actual_bytes"] == 4 << 30 and vm["target_bytes"] == 4 << 30

        for i in range(rounds):
            for mode, (d, cg, log) in daemons.items():
                wait_for(lambda: full(d), 30, "give-back before the round")
                ms = round_once(work, cg, mode, log)
                results[mode].append(ms)
        print(f"reaction latency, watermark crossed -> first balloon command ({rounds} rounds each, ms):")
        for mode, v in results.items():
            v.sort()
            p = lambda q: v[min(len(v) - 1, int(q * len(v)))]
            print(f"  {mode:8s}  p50 {p(0.50):7.1f}  p90 {p(0.90):7.1f}  p99 {p(0.99):7.1f}  max {v[-1]:7.1f}")
        e, s = sorted(results["events"]), sorted(results["sampling"])
        print(f"  ratio sampling/events at p50: {s[len(s) // 2] / max(e[len(e) // 2], 0.001):.1f}x")
    finally:
        for p in reversed(procs):
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
        for cg in cgs:
            try:
                for pid in open(cg + "/cgroup.procs").read().split():
                    open(CG_ROOT + "/cgroup.procs", "w").write(pid)
                os.rmdir(cg)
            except OSError:
                pass
        subprocess.run(["rm", "-rf", work])


if __name__ == "__main__":
    main()
