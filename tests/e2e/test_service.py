# SPDX-License-Identifier: MIT
"""ballastd as the packaged systemd unit runs it, with real launcher VMs.

systemd is not PID 1 on the test machines, so the unit cannot be started for real. Instead
ServiceSim reads the unit meson generated (build/packaging/ballastd.service) and reproduces what
systemd does with it, by systemd's documented rules: RuntimeDirectory= and StateDirectory= are
created (or re-moded) before ExecStartPre=, which must pass (and, being --quiet, print nothing);
ExecStart= runs with NOTIFY_SOCKET and WATCHDOG_USEC, and the start completes on READY=1
(Type=notify); a stop sends KillSignal=, and the runtime directory is then removed unless
RuntimeDirectoryPreserve= keeps it ("restart" keeps it across restarts only, "yes" always);
Restart=on-failure restarts a killed daemon; ExecReload= sends SIGHUP.

The launcher keeps its VMs where it does for root, in the runtime directory
(RUNTIME/ballast/vms/NAME), so a stop, a restart or a crash of ballastd under these rules must leave
every VM with its sockets, and ballastd must re-adopt each one (status "ok" through the API)."""

import http.client
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time

import pytest

from conftest import BUILD, MiB, SRC, pid_alive, qemu_pids_under, wait_until
from conftest_daemon import VmPool, ballastd  # noqa: F401 (fixtures)
from daemon import SANITIZER_MARKERS, http_request

UNIT = os.path.join(BUILD, "packaging", "ballastd.service")
EXAMPLE_CONF = os.path.join(SRC, "packaging", "ballastd.conf")
NAMES = ["sa", "sb"]
VM_MIB = 512
TOL = 16 * MiB


def parse_unit(path):
    """{key: [values]} of the [Service] section (systemd's syntax: later lines add to a list)."""
    if not os.path.exists(path):
        msg = f"the generated unit {path} is missing (meson configures it from packaging/ballastd.service.in)"
        if os.environ.get("BALLAST_REQUIRE_VM"):
            pytest.fail(msg)
        pytest.skip(msg)
    out, section = {}, None
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line or line[0] in "#;":
                continue
            if line.startswith("["):
                section = line.strip("[]")
                continue
            if section == "Service":
                k, _, v = line.partition("=")
                out.setdefault(k.strip(), []).append(v.strip())
    return out


def seconds(v):
    m = re.fullmatch(r"(\d+)(ms|s|min)?", v)
    assert m, f"unsupported time span {v!r}"
    return int(m[1]) * {"ms": 0.001, None: 1, "s": 1, "min": 60}[m[2]]


class ServiceSim:
    """One service unit, run by systemd's rules for the directives ballastd's unit uses."""

    def __init__(self, unit, root, binary, config):
        self.unit = unit
        self.root = root
        self.binary = binary
        self.config = config
        self.runtime = os.path.join(root, "run")  # stands for /run
        self.state = os.path.join(root, "lib")  # stands for /var/lib
        os.makedirs(self.runtime, mode=0o755)
        os.makedirs(self.state, mode=0o755)
        self.runtime_dir = os.path.join(self.runtime, self.one("RuntimeDirectory"))
        self.state_dir = os.path.join(self.state, self.one("StateDirectory"))
        self.preserve = self.one("RuntimeDirectoryPreserve", "no")
        self.watchdog = seconds(self.one("WatchdogSec", "0"))
        self.log_path = os.path.join(root, "ballastd.log")
        self.notify_path = os.path.join(root, "notify.sock")
        self.notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.notify.bind(self.notify_path)
        self.notify.settimeout(0.2)
        self.messages = []  # (monotonic time, {key: value}) as they arrived
        self.lock = threading.Lock()
        self.closing = False
        self.reader = threading.Thread(target=self.read_notify, daemon=True)
        self.reader.start()
        self.proc = None
        self.starts = 0

    def one(self, key, default=None):
        v = self.unit.get(key)
        if not v:
            assert default is not None, f"the unit has no {key}="
            return default
        return v[-1]

    def read_notify(self):
        while not self.closing:
            try:
                data = self.notify.recv(4096)
            except socket.timeout:
                continue
            except OSError:
                return
            kv = dict(l.split("=", 1) for l in data.decode().splitlines() if "=" in l)
            with self.lock:
                self.messages.append((time.monotonic(), kv))

    def notified(self, key, value=None, since=0.0):
        with self.lock:
            return [(t, m) for t, m in self.messages if t >= since and key in m and (value is None or m[key] == value)]

    def command(self, key):
        """ExecStart=/ExecStartPre= with the built binary and the test's configuration."""
        argv = shlex.split(self.one(key))
        assert argv[0].endswith("/ballastd"), argv
        argv[0] = self.binary
        i = argv.index("--config")
        argv[i + 1] = self.config
        return argv

    def make_dirs(self):
        for d, mode in ((self.runtime_dir, self.one("RuntimeDirectoryMode", "0755")),
                        (self.state_dir, self.one("StateDirectoryMode", "0755"))):
            os.makedirs(d, exist_ok=True)
            os.chmod(d, int(mode, 8))

    def start(self, timeout=90):
        assert not self.running()
        self.make_dirs()
        pre = subprocess.run(self.command("ExecStartPre"), capture_output=True, text=True, timeout=60)
        assert pre.returncode == 0, f"ExecStartPre failed ({pre.returncode}): {pre.stdout}{pre.stderr}"
        assert pre.stdout == "" and pre.stderr == "", \
            f"ExecStartPre printed {len((pre.stdout + pre.stderr).splitlines())} lines at a start:\n{pre.stdout}{pre.stderr}"
        self.starts += 1
        env = dict(os.environ, NOTIFY_SOCKET=self.notify_path)
        if self.watchdog:
            env["WATCHDOG_USEC"] = str(int(self.watchdog * 1e6))
        with open(self.log_path, "ab") as log:
            log.write(f"\n===== start #{self.starts} =====\n".encode())
            log.flush()
            t0 = time.monotonic()
            self.proc = subprocess.Popen(self.command("ExecStart"), env=env, stdin=subprocess.DEVNULL, stdout=log,
                                         stderr=log, start_new_session=True)

        def ready():
            assert self.proc.poll() is None, f"ballastd exited {self.proc.returncode} while starting\n{self.log_tail()}"
            return self.notified("READY", "1", since=t0)

        self.ready_at = wait_until(ready, timeout, 0.05, "READY=1 from ballastd")[0][0]
        self.pid = self.proc.pid
        return self

    def running(self):
        return self.proc is not None and self.proc.poll() is None

    def after_stop(self, restarting):
        """RuntimeDirectoryPreserve=: no removes the directory at every stop, restart keeps it
        across restarts, yes keeps it always."""
        if self.preserve == "yes" or (self.preserve == "restart" and restarting):
            return
        subprocess.run(["rm", "-rf", "--one-file-system", self.runtime_dir], check=True)

    def stop(self, restarting=False, timeout=60):
        sig = getattr(signal, self.one("KillSignal", "SIGTERM"))
        self.proc.send_signal(sig)
        rc = self.proc.wait(timeout)
        assert rc == 0, f"ballastd exited {rc} after {sig.name}\n{self.log_tail()}"
        self.after_stop(restarting)

    def restart(self):
        """systemctl restart."""
        self.stop(restarting=True)
        return self.start()

    def crash_and_auto_restart(self):
        """SIGKILL; Restart=on-failure brings it back (a kill by signal is a failure)."""
        assert self.one("Restart") in ("on-failure", "always", "on-abnormal"), self.unit.get("Restart")
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)
        self.after_stop(restarting=True)
        time.sleep(seconds(self.one("RestartSec", "0")))  # RestartSec=, as systemd waits it
        return self.start()

    def reload(self):
        """systemctl reload: ExecReload= (kill -HUP $MAINPID), then RELOADING=1 ... READY=1."""
        cmd = self.one("ExecReload")
        assert cmd.split()[-2:] == ["-HUP", "$MAINPID"], cmd
        t0 = time.monotonic()
        os.kill(self.pid, signal.SIGHUP)
        wait_until(lambda: self.notified("READY", "1", since=t0), 30, 0.05, "READY=1 after the reload")
        assert self.notified("RELOADING", "1", since=t0), "no RELOADING=1 before the reload's READY=1"

    def api(self, method, path, body=None):
        r = http_request(os.path.join(self.runtime_dir, "api.sock"), method, path, body)
        return r

    def ok(self, method, path, body=None, status=200):
        r = self.api(method, path, body)
        assert r.status == status, f"{method} {path}: {r!r}"
        return r.json

    def vms(self):
        return {v["id"]: v for v in self.ok("GET", "/v1/vms")["vms"]}

    def wait_ok(self, names, timeout=90):
        return wait_until(lambda: (lambda v: v if all(v.get(n, {}).get("status") == "ok" for n in names) else None)(
            self.vms()), timeout, 0.2, f"VMs {names} to be ok again")

    def log_text(self):
        try:
            with open(self.log_path, "rb") as f:
                return f.read().decode("utf-8", "replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, n=40):
        return "--- ballastd log ---\n" + "\n".join(self.log_text().splitlines()[-n:])

    def close(self):
        if self.running():
            self.proc.kill()
            self.proc.wait(30)
        self.closing = True
        self.reader.join(5)
        self.notify.close()
        text = self.log_text()
        bad = [m for m in SANITIZER_MARKERS if m in text]
        assert not bad, f"sanitizer report in the ballastd log ({bad})\n{self.log_tail(200)}"


def write_config(path, runtime_dir, state_dir, extra=""):
    """The shipped example configuration with the test's paths: every key stays at its default."""
    with open(EXAMPLE_CONF) as f:
        text = f.read()
    text = text.replace("#socket = /run/ballast/api.sock", f"socket = {runtime_dir}/api.sock")
    text = text.replace("#directory = /var/lib/ballast", f"directory = {state_dir}")
    assert f"socket = {runtime_dir}/api.sock" in text and f"directory = {state_dir}" in text, \
        "packaging/ballastd.conf no longer has the [api] socket / [state] directory lines this test edits"
    with open(path, "w") as f:
        f.write(text + extra)


@pytest.fixture
def service(ballastd, image):  # noqa: F811
    """A ServiceSim of the generated unit under /tmp/bt-*/ (the launcher's VMs in its runtime
    directory); every process and directory goes at the end."""
    unit = parse_unit(UNIT)
    root = tempfile.mkdtemp(prefix="bt-", dir="/tmp")
    os.chmod(root, 0o755)
    config = os.path.join(root, "ballastd.conf")
    sim = ServiceSim(unit, root, ballastd, config)
    write_config(config, sim.runtime_dir, sim.state_dir)
    pool = VmPool()
    os.rmdir(pool.run_dir)
    pool.run_dir = os.path.join(sim.runtime_dir, "vms")  # where the launcher puts them for root
    pool.ctl.run_dir = pool.run_dir
    pool.ctl.env["BALLAST_RUN_DIR"] = pool.run_dir
    sim.pool = pool
    try:
        yield sim
    finally:
        try:
            sim.close()
        finally:
            try:
                pool.close()  # stops the VMs and removes root/run/ballast/vms
            finally:
                # Whatever happened (a VM directory removed under its QEMU), nothing stays.
                for pid in qemu_pids_under(root):
                    os.kill(pid, signal.SIGKILL)
                wait_until(lambda: not [p for p in qemu_pids_under(root) if pid_alive(p)], 30, 0.1,
                           "QEMU processes to go")
                subprocess.run(["rm", "-rf", "--one-file-system", root])


def vm_sockets(pool):
    return {n: sorted(f for f in os.listdir(os.path.join(pool.run_dir, n)) if f.endswith(".sock")) for n in NAMES}


def check_vms_kept(sim, pids, sockets, what):
    """Every VM still runs (same QEMU), keeps its sockets, answers the CLI, and is re-adopted."""
    pool = sim.pool
    assert vm_sockets(pool) == sockets, f"after {what}: VM sockets changed: {sockets} -> {vm_sockets(pool)}"
    for n in NAMES:
        assert pool.ctl.qemu_pid(n) == pids[n], f"after {what}: {n} has another QEMU"
        assert abs(pool.actual(n) - VM_MIB * MiB) <= TOL, f"after {what}: {n} not at full size"
    vms = sim.wait_ok(NAMES)
    for n in NAMES:
        assert abs(vms[n]["actual_bytes"] - pool.actual(n)) <= TOL, vms[n]
    listed = {v["name"]: v for v in pool.ctl.json("vm", "list")}
    assert set(NAMES) <= set(listed), f"after {what}: ballastctl vm list lost VMs: {listed}"


def test_runtime_directory_rules_are_reproduced(tmp_path):
    """The simulation is not a tautology: under the same rules the old unit's settings
    (no RuntimeDirectoryPreserve=) remove the VMs' directory at a restart, ours keep it."""
    for preserve, kept in ((None, False), ("restart", True), ("yes", True)):
        unit = {"RuntimeDirectory": ["ballast"], "StateDirectory": ["ballast"]}
        if preserve:
            unit["RuntimeDirectoryPreserve"] = [preserve]
        root = tmp_path / f"p-{preserve}"
        root.mkdir()
        sim = ServiceSim(unit, str(root), "/bin/false", "/dev/null")
        try:
            sim.make_dirs()
            os.makedirs(os.path.join(sim.runtime_dir, "vms", "x"))
            sim.after_stop(restarting=True)
            assert os.path.isdir(os.path.join(sim.runtime_dir, "vms", "x")) == kept, preserve
        finally:
            sim.close()
    unit = parse_unit(UNIT)
    assert unit.get("RuntimeDirectoryPreserve") == ["yes"], \
        "the unit must keep /run/ballast at every stop: the launcher's VMs live in it"
    assert unit.get("Type") == ["notify"] and unit.get("WatchdogSec"), unit


def test_vms_survive_restart_and_crash_and_are_readopted(service):
    """Launcher VMs in the unit's runtime directory, registered with ballastd; then systemctl
    restart, a SIGKILL with Restart=on-failure, and a stop followed by a start: each time every
    VM keeps its QEMU and its sockets and is re-adopted. READY=1, STATUS= and WATCHDOG=1 come
    as the unit asks."""
    sim = service
    sim.start()
    sim.pool.start(NAMES, VM_MIB)
    pids = {n: sim.pool.ctl.qemu_pid(n) for n in NAMES}
    sockets = vm_sockets(sim.pool)
    assert all("qmp.sock" in s and "agent.sock" in s for s in sockets.values()), sockets
    for n in NAMES:
        sim.ok("POST", "/v1/vms", {"id": n, "driver": "qemu", "socket": sim.pool.qmp(n),
                                   "assigned_bytes": VM_MIB * MiB, "expected_uid": os.geteuid()}, status=201)
    sim.wait_ok(NAMES)
    t_status = time.monotonic()

    sim.restart()
    check_vms_kept(sim, pids, sockets, "systemctl restart")
    sim.crash_and_auto_restart()
    check_vms_kept(sim, pids, sockets, "SIGKILL and Restart=on-failure")
    sim.stop()
    assert os.path.exists(os.path.join(sim.pool.run_dir, NAMES[0], "qmp.sock")), "a stop removed the VMs' sockets"
    sim.start()
    check_vms_kept(sim, pids, sockets, "systemctl stop; systemctl start")

    # STATUS= follows the fleet (it is refreshed at least every 10 s).
    wait_until(lambda: [m for _, m in sim.notified("STATUS", since=t_status) if "2 VMs (2 ok)" in m["STATUS"]], 30,
               0.2, "STATUS= with 2 VMs ok")
    # The watchdog: this process pings at half of WatchdogSec= at most (10 s here).
    start = time.monotonic()
    wait_until(lambda: sim.notified("WATCHDOG", "1", since=start), sim.watchdog, 0.2, "a WATCHDOG=1 ping")
    pings = [sim.ready_at] + [t for t, _ in sim.notified("WATCHDOG", "1", since=sim.ready_at)]
    gaps = [b - a for a, b in zip(pings, pings[1:])]
    assert gaps and max(gaps) <= sim.watchdog / 2 + 2, f"watchdog pings {gaps} s apart (WatchdogSec {sim.watchdog} s)"
    print(f"{len(pings)} WATCHDOG=1 pings, at most {max(gaps):.1f} s apart; last STATUS: "
          f"{sim.notified('STATUS')[-1][1]['STATUS']}")
    sim.stop()
    assert sim.notified("STOPPING", "1"), "no STOPPING=1"


def host_watermarks(sim):
    h = sim.ok("GET", "/v1/host")
    return h, h["watermarks"]


def test_reload_applies_policy_and_log_level_keeps_vms(service):
    """SIGHUP: new watermarks in GET /v1/host, the new log level in force, the VM untouched
    (the host stays healthy under the new watermarks); a non-reloadable change is named as
    waiting for a restart; an invalid file leaves everything as it was."""
    sim = service
    sim.start()
    sim.pool.start(NAMES[:1], VM_MIB)
    n = NAMES[0]
    sim.ok("POST", "/v1/vms", {"id": n, "driver": "qemu", "socket": sim.pool.qmp(n), "assigned_bytes": VM_MIB * MiB,
                               "expected_uid": os.geteuid()}, status=201)
    sim.wait_ok([n])
    h, wm = host_watermarks(sim)
    total = h["total_bytes"]
    assert h["state"] == "healthy", h
    assert wm["low_bytes"] == total // 10000 * 1000 and wm["high_bytes"] == total // 10000 * 1500, wm
    before_log = len(sim.log_text())

    # Watermarks that keep this host healthy (it has far more than 4% free), debug logging, and a
    # key that only a restart can change.
    with open(sim.config) as f:
        text = f.read()
    text = text.replace("#low_watermark = 10%", "low_watermark = 3%").replace("#high_watermark = 15%",
                                                                               "high_watermark = 4%")
    text = text.replace("#critical_watermark = 5%", "critical_watermark = 2%").replace("#level = info",
                                                                                      "level = debug")
    text = text.replace("#op_timeout = 5s", "op_timeout = 7s")
    with open(sim.config, "w") as f:
        f.write(text)
    sim.reload()
    h2, wm2 = host_watermarks(sim)
    assert wm2["low_bytes"] == h2["total_bytes"] // 10000 * 300, wm2
    assert wm2["high_bytes"] == h2["total_bytes"] // 10000 * 400, wm2
    assert wm2["critical_bytes"] == h2["total_bytes"] // 10000 * 200, wm2
    log = sim.log_text()[before_log:]
    assert re.search(r"Reloaded .*policy\.low_watermark 10% -> 3%.*log\.level info -> debug; 1 change waits for a restart", log), log
    assert "[driver] op_timeout changed (5s -> 7s); it takes effect when ballastd restarts" in log, log
    # Debug lines now appear (the controller's and the API's own).
    wait_until(lambda: "debug:" in sim.log_text()[before_log:], 30, 0.2, "debug lines after the reload")

    # No VM moved: the host is healthy under the new watermarks, the target stays the full size.
    wait_until(lambda: sim.ok("GET", "/v1/host")["state"] == "healthy", 10, 0.1, "a healthy host")
    v = sim.vms()[n]
    assert v["target_bytes"] == VM_MIB * MiB, v
    assert abs(sim.pool.actual(n) - VM_MIB * MiB) <= TOL, "the VM moved at the reload"

    # An invalid file: the old configuration stays, with a clear line.
    before_log = len(sim.log_text())
    with open(sim.config, "w") as f:
        f.write(text.replace("low_watermark = 3%", "low_watermark = 150%"))
    sim.reload()
    assert sim.running()
    log = sim.log_text()[before_log:]
    assert "Reload failed, the running configuration stays in force" in log and "low_watermark" in log, log
    _, wm3 = host_watermarks(sim)
    assert wm3 == wm2, f"an invalid file changed the watermarks: {wm2} -> {wm3}"
    assert sim.vms()[n]["status"] == "ok"
    sim.stop()


# Runs in a private mount namespace (unshare -m): a tmpfs on /run holds a journal socket, as
# journald's, that collects what ballastd sends (the native protocol: KEY=value lines).
JOURNAL_HELPER = r"""
import json, os, signal, socket, subprocess, sys
ballastd, config, log = sys.argv[1:4]
subprocess.run(["mount", "--make-rprivate", "/"], check=True)
subprocess.run(["mount", "-t", "tmpfs", "tmpfs", "/run"], check=True)
os.makedirs("/run/systemd/journal")
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.bind("/run/systemd/journal/socket")
s.settimeout(0.2)
f = open(log, "wb")
st = os.fstat(f.fileno())
env = dict(os.environ, JOURNAL_STREAM=f"{st.st_dev}:{st.st_ino}")
p = subprocess.Popen([ballastd, "--config", config], stdin=subprocess.DEVNULL, stdout=f, stderr=f, env=env)
print(json.dumps({"pid": p.pid}), flush=True)
while True:
    try:
        data = s.recv(65536)
    except socket.timeout:
        if p.poll() is not None:
            break
        continue
    e = dict(l.split("=", 1) for l in data.decode("utf-8", "replace").split("\n") if "=" in l)
    print(json.dumps(e), flush=True)
print(json.dumps({"exit": p.returncode}), flush=True)
"""


def test_journal_entries_carry_priority_and_vm(ballastd, tmp_path):  # noqa: F811
    """With stderr connected to the journal (JOURNAL_STREAM names it), every message is a journal
    entry with PRIORITY= and SYSLOG_IDENTIFIER=, and one about a VM has VM=; nothing goes to
    stderr."""
    probe = subprocess.run(["unshare", "-m", "true"], capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip(f"cannot make a private mount namespace for a stand-in journal: {probe.stderr.strip()}")
    root = str(tmp_path)
    os.chmod(root, 0o755)
    config, log = os.path.join(root, "c.conf"), os.path.join(root, "stderr")
    runtime, state = os.path.join(root, "run"), os.path.join(root, "state")
    os.makedirs(state, mode=0o700)
    write_config(config, runtime, state)
    helper = subprocess.Popen(["unshare", "-m", "/usr/bin/python3", "-c", JOURNAL_HELPER, ballastd, config, log],
                              stdout=subprocess.PIPE, text=True)
    entries, lines = [], []
    reader = threading.Thread(target=lambda: lines.extend(iter(helper.stdout.readline, "")), daemon=True)
    reader.start()
    try:
        pid = wait_until(lambda: lines and json.loads(lines[0]).get("pid"), 30, 0.05, "the helper to start ballastd")
        sock = os.path.join(runtime, "api.sock")
        wait_until(lambda: os.path.exists(sock) and http_request(sock, "GET", "/v1/health").status == 200, 60, 0.1,
                   "ballastd to answer")
        # A VM whose socket is not there: registered, then the driver's failure is logged about it.
        r = http_request(sock, "POST", "/v1/vms", {"id": "jvm", "driver": "qemu", "socket": os.path.join(root, "none"),
                                                   "assigned_bytes": 512 * MiB})
        assert r.status == 201, r

        def vm_entries():
            return [e for e in map(json.loads, list(lines)) if e.get("VM") == "jvm"]

        wait_until(lambda: len(vm_entries()) >= 2, 30, 0.1, "two journal entries about VM jvm")
        os.kill(pid, signal.SIGTERM)
        helper.wait(60)
        reader.join(10)
    finally:
        if helper.poll() is None:
            helper.kill()
            helper.wait(30)
    entries = [json.loads(l) for l in lines[1:]]
    assert entries and entries[-1] == {"exit": 0}, entries[-3:]
    entries = entries[:-1]
    for e in entries:
        assert e.get("SYSLOG_IDENTIFIER") == "ballastd" and e.get("PRIORITY", "").isdigit() and e.get("MESSAGE"), e
    by_msg = {e["MESSAGE"]: e for e in entries}
    ready = [e for m, e in by_msg.items() if " ready: API on " in m]
    assert ready and ready[0]["PRIORITY"] == "6", by_msg.keys()
    vm = [e for e in entries if e.get("VM") == "jvm"]
    assert any(e["MESSAGE"].startswith("VM jvm registered") and e["PRIORITY"] == "6" for e in vm), vm
    assert any(int(e["PRIORITY"]) <= 4 for e in vm), f"no warning or error about the unreachable VM: {vm}"
    assert all("VM" not in e for e in ready), ready
    assert all(e.get("CODE_FILE", "").endswith(".c") and "service.c" not in e["CODE_FILE"] for e in entries), \
        "CODE_FILE= must name the log call's file"
    with open(log) as f:
        assert f.read() == "", "ballastd wrote to stderr although the journal took its messages"
    print(f"{len(entries)} journal entries, {len(vm)} with VM=jvm, e.g. {vm[-1]}")


def test_unit_points_where_meson_installs_verifies_and_is_hardened(ballastd, tmp_path):  # noqa: F811
    """The generated unit runs the binary from where `meson install` puts it and is itself
    installed in a directory systemd reads; `systemd-analyze verify` accepts it (with the built
    binary standing in at the installed path's place) and `systemd-analyze security` rates it
    2.5 or lower."""
    for tool in ("systemd-analyze", "meson"):
        if not shutil.which(tool):
            pytest.skip(f"{tool} is not installed")
    unit = parse_unit(UNIT)
    p = subprocess.run(["meson", "introspect", BUILD, "--installed"], capture_output=True, text=True, check=True)
    installed = json.loads(p.stdout)
    bin_dest = installed.get(os.path.join(BUILD, "src", "ballastd"))
    unit_dest = installed.get(UNIT)
    assert bin_dest and unit_dest, f"meson does not install ballastd and its unit: {installed}"
    for key in ("ExecStart", "ExecStartPre"):
        assert shlex.split(unit[key][-1])[0] == bin_dest, f"{key}= runs {unit[key]}, meson installs {bin_dest}"
    assert os.path.dirname(unit_dest) in ("/etc/systemd/system", "/usr/local/lib/systemd/system",
                                          "/lib/systemd/system", "/usr/lib/systemd/system"), unit_dest
    # The same unit with the built binary and the example configuration in place of the installed ones.
    with open(UNIT) as f:
        text = f.read()
    prefix_conf = shlex.split(unit["ExecStart"][-1])[2]
    text = text.replace(bin_dest, ballastd).replace(prefix_conf, EXAMPLE_CONF)
    copy = tmp_path / "ballastd.service"
    copy.write_text(text)
    v = subprocess.run(["systemd-analyze", "verify", str(copy)], capture_output=True, text=True, timeout=120)
    assert v.returncode == 0 and not v.stderr.strip(), f"systemd-analyze verify: {v.stdout}{v.stderr}"
    s = subprocess.run(["systemd-analyze", "security", "--offline=true", str(copy)], capture_output=True, text=True,
                       timeout=120)
    m = re.search(r"Overall exposure level for ballastd\.service: (\d+\.\d+)", s.stdout + s.stderr)
    assert m, f"no exposure level in:\n{s.stdout}{s.stderr}"
    print(f"systemd-analyze security: {m[1]}")
    assert float(m[1]) <= 2.5, f"exposure {m[1]} > 2.5:\n{s.stdout}"


def test_reload_rereads_tokens(service):
    """With the TCP API on, a reload re-reads the tokens file: a new token works, a removed one is
    refused; a tokens file that cannot be used keeps the previous tokens."""
    sim = service
    tokens = os.path.join(sim.root, "tokens")
    fd = os.open(tokens, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write("old-token-0123456789abcdef read\n")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with open(sim.config) as f:
        text = f.read()
    text = text.replace("#listen =", f"listen = 127.0.0.1:{port}").replace("#tokens_file =", f"tokens_file = {tokens}")
    with open(sim.config, "w") as f:
        f.write(text)
    sim.start()

    def status(token):
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        try:
            c.request("GET", "/v1/health", headers={"Authorization": f"Bearer {token}"})
            return c.getresponse().status
        finally:
            c.close()

    assert status("old-token-0123456789abcdef") == 200
    assert status("new-token-0123456789abcdef") == 401
    with open(tokens, "w") as f:
        f.write("new-token-0123456789abcdef read\n")
    sim.reload()
    assert status("new-token-0123456789abcdef") == 200
    assert status("old-token-0123456789abcdef") == 401
    assert "; 1 API token" in sim.log_text()
    # World-readable: refused, and the tokens in force stay.
    os.chmod(tokens, 0o644)
    sim.reload()
    assert "the previous tokens stay valid" in sim.log_text()
    assert status("new-token-0123456789abcdef") == 200
    sim.stop()
