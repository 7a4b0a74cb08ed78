# SPDX-License-Identifier: MIT
"""Fixtures of the ballastd suites (test_daemon.py, test_pressure.py), imported by name from those
modules: the daemon binary (skip or fail loudly when it is missing), a factory of Daemon processes
that are always killed at the end of the test, a module-scoped pool of real VMs shared by the
tests of a module, and memory cgroups (v1) that are always removed."""

import json
import os
import queue
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from conftest import CTL, Ctl, MiB, qemu_pids_under
from daemon import Daemon, require_ballastd

CGROUP_V1_ROOT = "/sys/fs/cgroup/memory"


@pytest.fixture(scope="session")
def ballastd():
    return require_ballastd()


@pytest.fixture
def daemons(ballastd):
    """Factory: daemons(config={...}, name="d") -> a configured, not yet started Daemon. Every one is
    killed (if still running) and its files removed when the test ends; a sanitizer report in any
    of their logs fails the test."""
    # The directory is world-traversable so that a non-root client can reach the socket.
    root = tempfile.mkdtemp(prefix="bd-", dir="/tmp")
    os.chmod(root, 0o755)
    made = []

    def make(config=None, name=None):
        d = Daemon(root, name or f"d{len(made)}", config, ballastd)
        made.append(d)
        return d

    try:
        yield make
    finally:
        for d in made:
            d.close()
        try:
            for d in made:
                d.check_log()
        finally:
            if os.environ.get("BALLAST_KEEP_DAEMON_LOGS"):
                print(f"daemon files kept in {root}")
            else:
                shutil.rmtree(root, ignore_errors=True)


# --- a test's own QMP client on a VM's qmp-ctl.sock (QEMU serves one client per socket: connect,
# ask, close, so ballastctl and other tests can use it too) ---------------------------------------


class Qmp:
    def __init__(self, path, timeout=10):
        self.s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.s.settimeout(timeout)
        self.s.connect(path)
        self.buf = b""
        self.n = 0
        assert "QMP" in self._read()
        self.cmd("qmp_capabilities")

    def _read(self):
        while b"\n" not in self.buf:
            chunk = self.s.recv(65536)
            if not chunk:
                raise ConnectionError("QMP socket closed")
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        return json.loads(line)

    def cmd(self, name, **args):
        self.n += 1
        msg = {"execute": name, "id": self.n}
        if args:
            msg["arguments"] = args
        self.s.sendall(json.dumps(msg).encode() + b"\n")
        while True:
            r = self._read()
            if r.get("id") != self.n:
                continue
            if "error" in r:
                raise AssertionError(f"QMP {name}: {r['error']}")
            return r["return"]

    def actual(self):
        return self.cmd("query-balloon")["actual"]

    def guest_stats(self):
        return self.cmd("qom-get", path="/machine/peripheral/balloon0", property="guest-stats")

    def close(self):
        self.s.close()


def qmp_ctl(pool, name):
    return os.path.join(pool.vms[name]["dir"], "qmp-ctl.sock")


def with_qmp(pool, name, fn):
    q = Qmp(qmp_ctl(pool, name))
    try:
        return fn(q)
    finally:
        q.close()


class VmPool:
    """Real VMs started with ballastctl under one run directory, shared by the tests of a module.

    Guests are started with deflate-on-oom off by default: with it on, ballooned pages stay in the
    guest's MemTotal, and the tests read the guest's own size from its MemTotal."""

    def __init__(self):
        # Short path: Unix socket paths must stay under 108 bytes. The bt- prefix puts the pool under
        # test_zz_hygiene's watch.
        self.run_dir = tempfile.mkdtemp(prefix="bt-", dir="/tmp")
        self.ctl = Ctl(self.run_dir)
        self.vms = {}

    def start(self, names, memory_mib, *opts, cgroup=None):
        """Boots the VMs in parallel (inside `cgroup`, a v1 memory cgroup directory, if given: the
        launcher's processes are born there, so all of QEMU's memory is charged to it)."""

        def one(name):
            argv = [CTL, "--json", "vm", "start", name, "--memory", f"{memory_mib}M", "--deflate-on-oom", "off",
                    *opts, "--boot-timeout", "180s"]
            pre = None
            if cgroup:
                def pre():
                    with open(os.path.join(cgroup, "cgroup.procs"), "w") as f:
                        f.write(str(os.getpid()))
            t0 = time.monotonic()
            p = subprocess.run(argv, env=self.ctl.env, capture_output=True, text=True, timeout=300, preexec_fn=pre)
            assert p.returncode == 0, f"{' '.join(argv)} exited {p.returncode}\n{p.stdout}\n{p.stderr}"
            out = json.loads(p.stdout)
            assert out["ready"], out
            return name, time.monotonic() - t0

        with ThreadPoolExecutor(len(names)) as ex:
            boots = dict(ex.map(one, names))
        for name in names:
            info = self.ctl.json("vm", "info", name)
            mt = self.ctl.meminfo(name)["MemTotal"]
            self.vms[name] = {
                "name": name, "assigned": memory_mib * MiB, "dir": info["dir"], "qemu_pid": info["qemu_pid"],
                "qmp": os.path.join(info["dir"], "qmp.sock"),
                # What the guest kernel keeps for itself: guest size = MemTotal + offset.
                "offset": memory_mib * MiB - mt, "boot_s": boots[name],
            }
        print("booted " + ", ".join(f"{n} in {boots[n]:.1f} s (MemTotal offset {self.vms[n]['offset'] / MiB:.1f} MiB)"
                                    for n in names))
        return [self.vms[n] for n in names]

    def qmp(self, name):
        return self.vms[name]["qmp"]

    def actual(self, name):
        """actual as QEMU reports it (query-balloon on qmp-ctl.sock, not ballastd's socket)."""
        return self.ctl.actual(name)

    def guest_size(self, name):
        """The guest's own view of its memory (MemTotal + the kernel's fixed reservation)."""
        return self.ctl.meminfo(name)["MemTotal"] + self.vms[name]["offset"]

    def guest(self, name):
        """(guest size, oom_kill counter) from the agent's meminfo."""
        m = self.ctl.agent(name, "meminfo")
        return m["meminfo"]["MemTotal"] + self.vms[name]["offset"], m["vmstat"]["oom_kill"]

    def each(self, fn, names=None):
        names = list(names or self.vms)
        with ThreadPoolExecutor(len(names)) as ex:
            return dict(zip(names, ex.map(fn, names)))

    def reset(self, names=None):
        """Every VM back to its full size, waited for (no daemon may hold its QMP socket: the
        tool uses qmp-ctl.sock, so it can run alongside one)."""

        def one(n):
            out = self.ctl.json("balloon", "set", "--vm", n, "--wait", "--timeout", "60s",
                                f"{self.vms[n]['assigned'] // MiB}M")
            assert out["result"] == "reached", out

        self.each(one, names)

    def close(self):
        subprocess.run([CTL, "vm", "stop", "--all", "--grace", "5s"], env=self.ctl.env, capture_output=True,
                       timeout=120)
        for pid in qemu_pids_under(self.run_dir):
            try:
                os.kill(pid, 9)
            except ProcessLookupError:
                pass
        left = qemu_pids_under(self.run_dir)
        shutil.rmtree(self.run_dir, ignore_errors=True)
        assert not left, f"QEMU processes left behind: {left}"


@pytest.fixture(scope="module")
def vm_pool(image, ballastd):
    """A module-wide VmPool (VMs booted on demand with pool.start); everything stopped at the end."""
    pool = VmPool()
    try:
        yield pool
    finally:
        pool.close()


class MemCgroup:
    """A v1 memory cgroup directly under the hierarchy's root, removed at the end (its processes
    moved to the root cgroup first)."""

    def __init__(self, prefix="ballast-e2e-"):
        if not os.path.exists(os.path.join(CGROUP_V1_ROOT, "memory.usage_in_bytes")):
            pytest.skip(f"no cgroup v1 memory hierarchy at {CGROUP_V1_ROOT}")
        self.path = tempfile.mkdtemp(prefix=prefix, dir=CGROUP_V1_ROOT)  # mkdir in cgroupfs creates the group

    def read(self, name):
        with open(os.path.join(self.path, name)) as f:
            return f.read()

    def int(self, name):
        return int(self.read(name).strip())

    def usage(self):
        return self.int("memory.usage_in_bytes")

    def limit(self):
        return self.int("memory.limit_in_bytes")

    def available(self):
        """What ballastd calls available in a v1 cgroup: limit - usage (usage counts page cache)."""
        return max(self.limit() - self.usage(), 0)

    def set_limit(self, b):
        with open(os.path.join(self.path, "memory.limit_in_bytes"), "w") as f:
            f.write(str(b))

    def oom_control(self):
        return {l.split()[0]: int(l.split()[1]) for l in self.read("memory.oom_control").splitlines() if l.strip()}

    def stat(self):
        return {l.split()[0]: int(l.split()[1]) for l in self.read("memory.stat").splitlines() if l.strip()}

    def procs(self):
        return [int(x) for x in self.read("cgroup.procs").split()]

    def remove(self, timeout=30):
        deadline = time.monotonic() + timeout
        while True:
            for pid in self.procs():
                try:
                    with open(os.path.join(CGROUP_V1_ROOT, "cgroup.procs"), "w") as f:
                        f.write(str(pid))
                except OSError:
                    pass  # gone meanwhile
            try:
                os.rmdir(self.path)
                return
            except FileNotFoundError:
                return
            except OSError:
                if time.monotonic() >= deadline:
                    raise
                time.sleep(0.1)


@pytest.fixture
def mem_cgroup():
    cg = MemCgroup()
    try:
        yield cg
    finally:
        cg.remove()


class Hog:
    """tests/e2e/hog.py as a child process; its JSON events are read by a thread."""

    PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "hog.py")

    def __init__(self, cgroup_path, *args):
        self.proc = subprocess.Popen([sys.executable, self.PATH, "--cgroup", cgroup_path, *map(str, args)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.events = queue.Queue()
        self.seen = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.proc.stdout:
            try:
                self.events.put(json.loads(line))
            except ValueError:
                self.events.put({"event": "garbage", "line": line})
        self.events.put({"event": "eof"})

    def wait_event(self, name, timeout):
        deadline = time.monotonic() + timeout
        while True:
            try:
                ev = self.events.get(timeout=max(deadline - time.monotonic(), 0.01))
            except queue.Empty:
                raise AssertionError(f"no '{name}' event from the hog within {timeout} s (seen: {self.seen})")
            self.seen.append(ev)
            if ev["event"] == name:
                return ev
            if ev["event"] == "eof":
                raise AssertionError(f"the hog exited ({self.proc.wait(10)}) before '{name}' (seen: {self.seen})")

    def alive(self):
        return self.proc.poll() is None

    def release(self, timeout=30):
        """Closes its stdin: the hog frees its memory and exits 0."""
        self.proc.stdin.close()
        ev = self.wait_event("exit", timeout)
        rc = self.proc.wait(timeout)
        assert rc == 0, f"hog exited {rc}"
        return ev

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(30)


@pytest.fixture
def hogs():
    """Factory: hogs(cgroup_path, *args) -> a running Hog; all killed at the end of the test."""
    made = []

    def make(path, *args):
        h = Hog(path, *args)
        made.append(h)
        return h

    try:
        yield make
    finally:
        for h in made:
            h.kill()
