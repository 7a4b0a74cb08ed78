#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""Snapshot size and restore time of a parked VM against the same VM unparked.

One 512 MiB launcher VM (free page reporting on, as the launcher starts them) is made warm: it
holds 192 MiB of file data in its page cache (an ext4 file system on a zram device in the guest,
a file of non-zero text written and read), as a VM that has run a job keeps what it read. Each
round then measures the same VM twice:

  unparked  at full size, page cache warm
  parked    the balloon inflated to 128 MiB (the park size of docs/parking.md; the guest drops its
            page cache to get there)

For each: `ballastctl vm snapshot --stop` (file size, seconds), then `ballastctl vm start
--restore` twice, from the snapshot file still in the host's page cache (warm) and after dropping
it from there (cold, posix_fadvise DONTNEED on that file only). Restore time is the command's own
figure: from the start of the restore to the guest agent answering. After the parked rounds the VM
is unparked (balloon back to 512 MiB) and its file read again, for the next round.

usage: bench/snapshot.py [ROUNDS]    (default 3; needs a build and a guest image; root or not)
"""

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile

TOP = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUILD = os.environ.get("BALLAST_BUILDDIR", os.path.join(TOP, "build"))
CTL = os.path.join(BUILD, "src", "ballastctl")
MiB = 1 << 20
NAME = "snapbench"
PARK = 128


def main():
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 3
    run_dir = tempfile.mkdtemp(prefix="bsb-", dir="/tmp")
    snap_dir = tempfile.mkdtemp(prefix="bsb-snap-", dir="/var/tmp")
    env = dict(os.environ, BALLAST_RUN_DIR=run_dir)

    def ctl(*args, check=True, timeout=600):
        p = subprocess.run([CTL, "--json", *map(str, args)], env=env, capture_output=True, text=True,
                           timeout=timeout)
        if check and p.returncode != 0:
            raise SystemExit(f"ballastctl {' '.join(map(str, args))} exited {p.returncode}: {p.stderr.strip()}")
        return json.loads(p.stdout) if p.stdout.strip() else None

    def sh(cmd, timeout="300s"):
        r = ctl("vm", "exec", NAME, "--timeout", timeout, "--", "sh", "-c", cmd, timeout=400)
        if r["exit_code"] != 0:
            raise SystemExit(f"guest command failed ({r['exit_code']}): {cmd}\n{r['stderr']}")
        return r["stdout"]

    def cached():
        return ctl("vm", "meminfo", NAME)["meminfo"]["Cached"]

    def rss():
        pid = ctl("vm", "info", NAME)["qemu_pid"]
        with open(f"/proc/{pid}/status") as f:
            return next(int(l.split()[1]) * 1024 for l in f if l.startswith("VmRSS:"))

    def measure(kind, path):
        actual = ctl("balloon", "get", "--vm", NAME)["actual"]
        s = ctl("vm", "snapshot", NAME, path, "--stop")
        row = {"kind": kind, "actual": actual, "bytes": s["bytes"], "snapshot_s": s["seconds"]}
        r = ctl("vm", "start", NAME, "--restore", path, "--boot-timeout", "120s")
        row["restore_warm_s"] = r["seconds"]
        row["load_warm_s"] = r["load_seconds"]
        row["rss"] = rss()
        ctl("vm", "stop", NAME)
        fd = os.open(path, os.O_RDONLY)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        os.close(fd)
        r = ctl("vm", "start", NAME, "--restore", path, "--boot-timeout", "120s")
        row["restore_cold_s"] = r["seconds"]
        os.unlink(path)
        print(f"  {kind:9s} guest {actual / MiB:4.0f} MiB  file {row['bytes'] / MiB:6.1f} MiB  "
              f"snapshot {row['snapshot_s']:5.2f} s  restore warm {row['restore_warm_s']:5.2f} s  "
              f"cold {row['restore_cold_s']:5.2f} s  (stream loaded in {row['load_warm_s']:5.2f} s)  "
              f"restored RSS {row['rss'] / MiB:4.0f} MiB  load average {os.getloadavg()[0]:.1f}", flush=True)
        return row

    rows = []
    try:
        out = ctl("vm", "start", NAME, "--memory", "512M", "--boot-timeout", "180s")
        print(f"VM booted ({out['accel']}); writing 192 MiB of file data into its page cache", flush=True)
        sh("set -e; n=$(cat /sys/class/zram-control/hot_add); echo lz4 > /sys/block/zram$n/comp_algorithm; "
           "echo 512M > /sys/block/zram$n/disksize; mke2fs -q /dev/zram$n >/dev/null 2>&1; mkdir -p /data; "
           "mount -t ext4 /dev/zram$n /data; yes 'ballast snapshot benchmark: page cache of a warm guest' | "
           "head -c 1048576 > /tmp/chunk; i=0; while [ $i -lt 192 ]; do cat /tmp/chunk; i=$((i+1)); done "
           "> /data/blob; rm /tmp/chunk; sync; cat /data/blob > /dev/null")
        for i in range(rounds):
            print(f"round {i + 1}/{rounds} (page cache {cached() / MiB:.0f} MiB)", flush=True)
            rows.append(measure("unparked", os.path.join(snap_dir, "unparked.snap")))
            ctl("balloon", "set", "--vm", NAME, "--wait", "--timeout", "180s", f"{PARK}M", check=False)
            rows.append(measure("parked", os.path.join(snap_dir, "parked.snap")))
            ctl("balloon", "set", "--vm", NAME, "--wait", "--timeout", "180s", "512M")
            sh("cat /data/blob > /dev/null")
    finally:
        subprocess.run([CTL, "vm", "stop", "--all"], env=env, capture_output=True, timeout=120)
        shutil.rmtree(run_dir, ignore_errors=True)
        shutil.rmtree(snap_dir, ignore_errors=True)

    def med(kind, key):
        return statistics.median(r[key] for r in rows if r["kind"] == kind)

    print(f"\nmedians of {rounds} rounds      unparked     parked   parked/unparked")
    for key, label, unit, scale in (("bytes", "snapshot file", "MiB", MiB), ("snapshot_s", "snapshot time", "s", 1),
                                    ("restore_warm_s", "restore, file cached", "s", 1),
                                    ("restore_cold_s", "restore, file cold", "s", 1),
                                    ("load_warm_s", "  of which stream load", "s", 1),
                                    ("rss", "restored QEMU RSS", "MiB", MiB)):
        u, p = med("unparked", key) / scale, med("parked", key) / scale
        print(f"  {label:22s} {u:8.2f} {unit:3s} {p:8.2f} {unit:3s}   {p / u:.2f}")


if __name__ == "__main__":
    main()
