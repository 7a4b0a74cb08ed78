# SPDX-License-Identifier: MIT
"""Shared fixtures of the real-VM suite: boots guests from the guest kit under QEMU (TCG here),
drives them through ballastctl, and guarantees that no QEMU process or VM directory survives a
test, whatever happens."""

import json
import os
import shutil
import subprocess
import tempfile
import time

import pytest

SRC = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BUILD = os.environ.get("BALLAST_BUILDDIR", os.path.join(SRC, "build"))
CTL = os.path.join(BUILD, "src", "ballastctl")
IMAGE = os.environ.get("BALLAST_IMAGE_DIR", os.path.join(SRC, "build", "guest", "image"))
MiB = 1 << 20


def wait_until(cond, timeout, interval=0.05, what="condition"):
    """Polls cond() until it returns something truthy; fails with `what` at the deadline."""
    deadline = time.monotonic() + timeout
    last = None
    while True:
        last = cond()
        if last:
            return last
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what} (last: {last!r})")
        time.sleep(interval)


def pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is dead for our purposes.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def rss_bytes(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for pid {pid}")


def settled_rss(pid, tolerance=2 * MiB, timeout=10):
    """RSS once two reads 300 ms apart agree within tolerance (QEMU frees asynchronously)."""
    prev = rss_bytes(pid)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        time.sleep(0.3)
        cur = rss_bytes(pid)
        if abs(cur - prev) <= tolerance:
            return cur
        prev = cur
    return prev


def qemu_pids_under(root):
    """QEMU processes whose working directory is under root (the launcher runs them there)."""
    found = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/comm") as f:
                if not f.read().startswith("qemu"):
                    continue
            cwd = os.readlink(f"/proc/{d}/cwd")
        except OSError:
            continue
        if cwd.startswith(root):
            found.append(int(d))
    return found


class Ctl:
    """Runs ballastctl with this test's run directory."""

    def __init__(self, run_dir):
        self.env = dict(os.environ, BALLAST_RUN_DIR=run_dir, BALLAST_IMAGE_DIR=IMAGE)
        self.run_dir = run_dir

    def run(self, *args, check=True, timeout=180, json_out=False):
        argv = [CTL] + (["--json"] if json_out else []) + [str(a) for a in args]
        p = subprocess.run(argv, env=self.env, capture_output=True, text=True, timeout=timeout)
        if check and p.returncode != 0:
            raise AssertionError(f"{' '.join(argv)} exited {p.returncode}\nstdout: {p.stdout}\nstderr: {p.stderr}")
        if json_out and p.stdout.strip():
            p.json = json.loads(p.stdout)
        return p

    def json(self, *args, **kw):
        return self.run(*args, json_out=True, **kw).json

    def agent(self, name, cmd, *args, **kw):
        return self.json("vm", cmd, name, *args, **kw)

    def meminfo(self, name):
        return self.agent(name, "meminfo")["meminfo"]

    def actual(self, name):
        return self.json("balloon", "get", "--vm", name)["actual"]

    def qemu_pid(self, name):
        return self.json("vm", "info", name)["qemu_pid"]


@pytest.fixture(scope="session")
def image():
    if not (os.path.exists(os.path.join(IMAGE, "vmlinuz")) and os.path.exists(os.path.join(IMAGE, "initramfs.cpio.gz"))):
        msg = f"no guest image in {IMAGE}: build it with 'make image'"
        if os.environ.get("BALLAST_REQUIRE_VM"):
            pytest.fail(msg)
        pytest.skip(msg)
    if not shutil.which("qemu-system-x86_64"):
        msg = "qemu-system-x86_64 is not installed"
        if os.environ.get("BALLAST_REQUIRE_VM"):
            pytest.fail(msg)
        pytest.skip(msg)
    return IMAGE


@pytest.fixture
def ctl(image):
    # Short path: Unix socket paths must stay under 108 bytes.
    run_dir = tempfile.mkdtemp(prefix="bt-", dir="/tmp")
    c = Ctl(run_dir)
    try:
        yield c
    finally:
        # Stop every VM this test started, then prove nothing is left.
        subprocess.run([CTL, "vm", "stop", "--all", "--grace", "5s"], env=c.env, capture_output=True, timeout=120)
        for pid in qemu_pids_under(run_dir):
            os.kill(pid, 9)
        leftovers = qemu_pids_under(run_dir)
        shutil.rmtree(run_dir, ignore_errors=True)
        assert not leftovers, f"QEMU processes left behind: {leftovers}"


@pytest.fixture
def vm(ctl):
    """Factory: vm("name", "--memory", "512M", ...) boots a VM and waits for its agent."""

    def start(name, *opts):
        out = ctl.json("vm", "start", name, *opts, "--boot-timeout", "120s", timeout=200)
        assert out["ready"], out
        return out

    return start
