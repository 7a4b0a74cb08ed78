#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""Daemon footprint (docs/spec.md "Numbers to beat": 1,000 VMs, ≤ 16 MiB RSS, ≤ 0.1% of a core when
nothing changes).

Starts N QMP test peers (build/tests/qmp-peer: protocol-faithful fake QEMUs, one process and one
socket each), one ballastd on the host scope, registers the N VMs, waits until every one is
adopted, then measures ballastd alone over a quiet window: resident memory (VmRSS, VmHWM) and CPU
time (utime + stime from /proc/PID/stat) as a share of one core. Nothing changes in the window: the
host is healthy, no target moves; what remains is the 250 ms sampling, each VM's periodic actual
refresh (5 s) and guest statistics polling ([driver] stats_period, 2 s by default).

usage: bench/footprint.py [N] [WINDOW_S] [STATS_PERIOD] [SETTLE_S]   (defaults 1000 30 2s 5)

SETTLE_S is the wait between the last adoption and the window: the first minutes after an adoption
carry one-time work (each VM's first statistics, and one read of its hypervisor's memory map); a
window of 300 s after 150 s covers one whole cycle of the idle fleet's periodic reads.
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


def http(sock, method, path, body=None):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(30)
    s.connect(sock)
    data = json.dumps(body).encode() if body is not None else b""
    hdr = f"{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
    if body is not None:
        hdr += f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n"
    s.sendall(hdr.encode() + b"\r\n" + data)
    out = b""
    while (b := s.recv(1 << 20)):
        out += b
    s.close()
    head, _, payload = out.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(payload) if payload else None


def proc_status(pid, key):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    return 0


def cpu_ticks(pid):
    f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return int(f[11]) + int(f[12])  # utime + stime


def main():
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
    window = float(sys.argv[2]) if len(sys.argv) > 2 else 30
    period = sys.argv[3] if len(sys.argv) > 3 else "2s"
    settle = float(sys.argv[4]) if len(sys.argv) > 4 else 5
    work = tempfile.mkdtemp(prefix="ballast-bench-footprint-")
    peers = []
    bd = None
    try:
        for i in range(n):
            peers.append(subprocess.Popen([os.path.join(BUILD, "tests/qmp-peer"), "--socket", f"{work}/vm{i}.sock",
                                           "--ram", "1G"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        deadline = time.monotonic() + 120
        while not all(os.path.exists(f"{work}/vm{i}.sock") for i in range(n)):
            if time.monotonic() > deadline:
                sys.exit("footprint.py: peers did not start")
            time.sleep(0.1)
        conf = f"{work}/ballastd.conf"
        with open(conf, "w") as f:
            f.write(f"[api]\nsocket = {work}/api.sock\n[state]\ndirectory = {work}/state\n[pressure]\nscope = host\n"
                    f"[driver]\nstats_period = {period}\n[log]\nlevel = warning\n")
        bd = subprocess.Popen([os.path.join(BUILD, "src/ballastd"), "--config", conf])
        while not os.path.exists(f"{work}/api.sock"):
            time.sleep(0.05)
        t0 = time.monotonic()
        for i in range(n):
            st, _ = http(f"{work}/api.sock", "POST", "/v1/vms",
                         {"id": f"vm{i}", "driver": "qemu", "socket": f"{work}/vm{i}.sock", "assigned_bytes": 1 << 30})
            assert st == 201, st
        reg = time.monotonic() - t0
        while True:
            st, vms = http(f"{work}/api.sock", "GET", "/v1/vms")
            if all(v["status"] == "ok" for v in vms["vms"]):
                break
            if time.monotonic() - t0 > 300:
                sys.exit("footprint.py: not every VM was adopted")
            time.sleep(0.5)
        adopt = time.monotonic() - t0
        time.sleep(settle)  # let the adoption burst settle
        hz = os.sysconf("SC_CLK_TCK")
        c0, w0 = cpu_ticks(bd.pid), time.monotonic()
        if os.environ.get("FOOTPRINT_PERF"):
            subprocess.run(["perf", "record", "-g", "-o", os.environ["FOOTPRINT_PERF"], "-p", str(bd.pid), "--", "sleep", str(window)],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        else:
            time.sleep(window)
        c1, w1 = cpu_ticks(bd.pid), time.monotonic()
        cpu = (c1 - c0) / hz / (w1 - w0) * 100
        rss, hwm = proc_status(bd.pid, "VmRSS"), proc_status(bd.pid, "VmHWM")
        roll = {l.split(":")[0]: int(l.split()[1]) * 1024 for l in open(f"/proc/{bd.pid}/smaps_rollup") if l.endswith("kB\n")}
        print(f"ballastd with {n} VMs (qmp-peer), stats_period {period}:")
        print(f"  registered in {reg:.1f} s, all adopted after {adopt:.1f} s")
        print(f"  RSS {rss / MiB:.1f} MiB (peak {hwm / MiB:.1f} MiB): private {roll['Private_Dirty'] / MiB:.1f} MiB "
              f"dirty + {roll['Private_Clean'] / MiB:.1f} MiB clean, {roll['Shared_Clean'] / MiB:.1f} MiB shared "
              f"library pages")
        print(f"  CPU {cpu:.3f}% of one core over {w1 - w0:.0f} s with nothing changing ({settle:.0f} s after adoption)")
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
