# SPDX-License-Identifier: MIT
"""A memory hog for the pressure tests: joins a memory cgroup (v1 or v2) and allocates and touches
memory gradually, in steps, until the cgroup's available memory (limit - usage, as ballastd
computes it) falls below a fraction of the limit, or until a fixed amount is held; then it holds
the memory until its stdin closes or it gets SIGTERM, and exits 0.

It reports on stdout, one JSON object per line:
  {"event": "joined", "pid": P, "cgroup": DIR}
  {"event": "mark", "time": REALTIME_S, "allocated": B, ...}     (--mark: allocated reached BYTES)
  {"event": "crossed", "time": REALTIME_S, "mono": MONOTONIC_S, "allocated": B, "usage": B, "limit": B,
   "available": B}                         (the first time available < FRACTION * limit was seen)
  {"event": "holding", "allocated": B, ...}
  {"event": "exit", "allocated": B}

usage: hog.py --cgroup DIR (--until-below FRACTION | --bytes N) [--report-below FRACTION] [--mark BYTES]
              [--step BYTES] [--interval SECONDS] [--max BYTES]

With --until-below the hog stops at the first sample under the fraction; a controller that frees
memory faster than the hog notices makes it chase, so tests that run one use --bytes N with
--report-below instead: a fixed amount, and the crossing reported as it is seen.
"""

import argparse
import json
import os
import select
import signal
import sys
import time

PAGE = os.sysconf("SC_PAGE_SIZE")


def emit(**kw):
    sys.stdout.write(json.dumps(kw) + "\n")
    sys.stdout.flush()


def read_int(path):
    with open(path) as f:
        s = f.read().strip()
    return None if s == "max" else int(s)


class Cgroup:
    def __init__(self, path):
        self.path = path
        self.v1 = os.path.exists(os.path.join(path, "memory.usage_in_bytes"))

    def limit(self):
        return read_int(os.path.join(self.path, "memory.limit_in_bytes" if self.v1 else "memory.max"))

    def usage(self):
        return read_int(os.path.join(self.path, "memory.usage_in_bytes" if self.v1 else "memory.current"))

    def join(self):
        with open(os.path.join(self.path, "cgroup.procs"), "w") as f:
            f.write(str(os.getpid()))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--cgroup", required=True)
    g = ap.add_mutually_exclusive_group(required=True)
    g.add_argument("--until-below", type=float, help="stop once (limit - usage) < FRACTION * limit")
    g.add_argument("--bytes", type=int, help="allocate this much, then hold")
    ap.add_argument("--step", type=int, default=8 << 20)
    ap.add_argument("--interval", type=float, default=0.02)
    ap.add_argument("--max", type=int, default=None, help="never allocate more than this")
    ap.add_argument("--report-below", type=float, default=None, help="report when (limit - usage) < F * limit")
    ap.add_argument("--mark", type=int, default=None, help="report when this much is allocated")
    a = ap.parse_args()

    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    cg = Cgroup(a.cgroup)
    cg.join()
    emit(event="joined", pid=os.getpid(), cgroup=a.cgroup)

    chunks = []
    allocated = 0
    seed = 1
    crossed = False
    marked = False
    below = a.until_below if a.until_below is not None else a.report_below
    while not stop:
        if below is not None and not crossed:
            limit, usage = cg.limit(), cg.usage()
            avail = max(limit - usage, 0)
            if avail < below * limit:
                crossed = True
                emit(event="crossed", time=time.time(), mono=time.monotonic(), allocated=allocated, usage=usage,
                     limit=limit, available=avail)
                if a.until_below is not None:
                    break
        if a.bytes is not None and allocated >= a.bytes:
            break
        if a.max is not None and allocated + a.step > a.max:
            emit(event="max", allocated=allocated)
            break
        b = bytearray(a.step)  # fresh anonymous zero pages: not resident until touched
        # Touch every page with a different non-zero byte: resident, not same-filled.
        n = len(range(0, a.step, PAGE))
        b[::PAGE] = bytes(((seed + i) % 255) + 1 for i in range(n))
        seed += n
        chunks.append(b)
        allocated += a.step
        if a.mark is not None and not marked and allocated >= a.mark:
            marked = True
            emit(event="mark", time=time.time(), mono=time.monotonic(), allocated=allocated, usage=cg.usage())
        time.sleep(a.interval)
    # A fixed amount may end before the crossing was sampled: look once more.
    if below is not None and not crossed:
        limit, usage = cg.limit(), cg.usage()
        if limit - usage < below * limit:
            emit(event="crossed", time=time.time(), mono=time.monotonic(), allocated=allocated, usage=usage,
                 limit=limit, available=max(limit - usage, 0))

    emit(event="holding", allocated=allocated, usage=cg.usage(), limit=cg.limit())
    # Hold until SIGTERM or stdin closes (the test's end of the pipe).
    while not stop:
        try:
            r, _, _ = select.select([sys.stdin], [], [], 0.5)
        except InterruptedError:
            continue
        if r and not os.read(sys.stdin.fileno(), 4096):
            break
    emit(event="exit", allocated=allocated)
    return 0


if __name__ == "__main__":
    sys.exit(main())
