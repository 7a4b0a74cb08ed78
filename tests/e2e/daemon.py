# SPDX-License-Identifier: MIT
"""Helpers for the ballastd e2e tests: find the daemon, write its INI configuration, start it and
wait for GET /v1/health on its Unix socket, talk HTTP/1.1 to it over that socket (each request
written in one piece on a fresh connection, well-formed or not, and the answer parsed with
http.client), stop it with SIGTERM (and insist on exit 0 and a clean sanitizer log) or SIGKILL it.
A Daemon never outlives its test: close() kills it."""

import datetime
import http.client
import json
import os
import signal
import socket
import subprocess
import time

import pytest

from conftest import BUILD, MiB, wait_until  # noqa: F401 (re-exported)

BALLASTD = os.path.join(BUILD, "src", "ballastd")
GiB = 1 << 30

# Lines a sanitizer or a crash leaves in the daemon's stderr.
SANITIZER_MARKERS = ("ERROR: AddressSanitizer", "ERROR: LeakSanitizer", "runtime error:", "AddressSanitizer:DEADLYSIGNAL",
                     "UndefinedBehaviorSanitizer", "==ERROR")


def require_ballastd():
    """The daemon binary, or a loud skip (locally) / failure (CI sets BALLAST_REQUIRE_VM=1)."""
    if os.path.exists(BALLASTD) and os.access(BALLASTD, os.X_OK):
        return BALLASTD
    msg = (f"ballastd is not built: {BALLASTD} does not exist (BALLAST_BUILDDIR={BUILD}); "
           "the daemon e2e suites cannot run")
    if os.environ.get("BALLAST_REQUIRE_VM"):
        pytest.fail(msg)
    pytest.skip(msg)


def parse_time(s):
    """RFC 3339 UTC ("2026-12-02T15:04:05.123Z") to seconds since the epoch."""
    assert isinstance(s, str), f"not a time string: {s!r}"
    return datetime.datetime.fromisoformat(s.replace("Z", "+00:00")).timestamp()


class Response:
    def __init__(self, status, reason, headers, body, elapsed):
        self.status = status
        self.reason = reason
        self.headers = {k.lower(): v for k, v in headers}
        self.body = body
        self.elapsed = elapsed
        try:
            self.json = json.loads(body) if body else None
        except ValueError:
            self.json = None

    def __repr__(self):
        b = self.body[:600].decode("utf-8", "replace")
        return f"<HTTP {self.status} {self.reason} {self.headers.get('content-type', '')} in {self.elapsed:.3f} s: {b}>"


def build_request(method, path, body=None, headers=None):
    """The bytes of one HTTP/1.1 request. body: dict/list (sent as JSON), str/bytes (sent as is)."""
    hdrs = {"Host": "localhost", "Connection": "close"}
    if body is not None and not isinstance(body, (bytes, str)):
        body = json.dumps(body)
    if isinstance(body, str):
        body = body.encode()
    if body is not None:
        hdrs["Content-Type"] = "application/json"
        hdrs["Content-Length"] = str(len(body))
    hdrs.update(headers or {})
    head = f"{method} {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in hdrs.items()) + "\r\n"
    return head.encode() + (body or b"")


def http_request(sock_path, method, path, body=None, headers=None, timeout=30):
    """One request on a fresh connection, written in one piece (a daemon that answers early, e.g.
    403 before reading the body, must not turn into a broken pipe here)."""
    r = raw_request(sock_path, build_request(method, path, body, headers), timeout, method)
    if r is None:
        raise ConnectionError(f"ballastd closed the connection without answering {method} {path}")
    return r


def raw_request(sock_path, data, timeout=30, method="GET", shut_wr=False):
    """Sends raw bytes on a fresh connection and parses the HTTP response (None if the daemon
    closed the connection without answering). shut_wr: then close our sending side (EOF)."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    t0 = time.monotonic()
    try:
        s.connect(sock_path)
        try:
            s.sendall(data)
            if shut_wr:
                s.shutdown(socket.SHUT_WR)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the daemon may answer (413) and close before reading everything
        r = http.client.HTTPResponse(s, method=method)
        try:
            r.begin()
        except (http.client.RemoteDisconnected, ConnectionResetError):
            return None
        body = r.read()
        return Response(r.status, r.reason, r.getheaders(), body, time.monotonic() - t0)
    finally:
        s.close()


class Daemon:
    """One ballastd process with its own config file, socket and state directory under `root`.

    config: {"section": {"key": "value"}} merged over the defaults below."""

    DEFAULTS = {
        "pressure": {"scope": "host", "sample_interval": "250ms"},
        "policy": {"low_watermark": "10%", "high_watermark": "15%", "critical_watermark": "5%", "dead_band": "32M",
                   "rate_limit": "512M", "dwell": "5s", "floor_fraction": "25%"},
        "driver": {"op_timeout": "5s"},
        "log": {"level": "info"},
    }

    def __init__(self, root, name="d", config=None, binary=None):
        self.root = root
        self.name = name
        self.binary = binary or BALLASTD
        self.socket = os.path.join(root, f"{name}.sock")
        self.state_dir = os.path.join(root, f"{name}-state")
        self.config_path = os.path.join(root, f"{name}.ini")
        self.log_path = os.path.join(root, f"{name}.log")
        self.proc = None
        self.starts = 0
        cfg = {k: dict(v) for k, v in self.DEFAULTS.items()}
        cfg["api"] = {"socket": self.socket}
        cfg["state"] = {"directory": self.state_dir}
        for sec, kv in (config or {}).items():
            cfg.setdefault(sec, {}).update(kv)
        self.config = cfg
        self.write_config()

    def write_config(self):
        os.makedirs(self.state_dir, mode=0o700, exist_ok=True)
        with open(self.config_path, "w") as f:
            for sec, kv in self.config.items():
                f.write(f"[{sec}]\n")
                for k, v in kv.items():
                    f.write(f"{k} = {v}\n")
                f.write("\n")

    # --- process control ---

    def start(self, timeout=60):
        assert self.proc is None or self.proc.poll() is not None, "ballastd already running"
        self.starts += 1
        log = open(self.log_path, "ab")
        log.write(f"\n===== start #{self.starts} at {time.time():.3f} =====\n".encode())
        log.flush()
        self.proc = subprocess.Popen([self.binary, "--config", self.config_path], stdin=subprocess.DEVNULL,
                                     stdout=log, stderr=log, start_new_session=True)
        log.close()
        self.started_at = time.time()

        def ready():
            if self.proc.poll() is not None:
                raise AssertionError(f"ballastd exited with {self.proc.returncode} while starting\n{self.log_tail()}")
            try:
                r = self.request("GET", "/v1/health", timeout=5)
            except OSError:
                return None
            return r if r.status == 200 else None

        r = wait_until(ready, timeout, 0.05, "ballastd to answer GET /v1/health")
        assert r.json and r.json.get("status") == "ok", r
        return self

    def running(self):
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout=60):
        """SIGTERM; the daemon must exit 0 within timeout with no sanitizer finding."""
        assert self.running(), f"ballastd is not running (exit {self.proc and self.proc.returncode})\n{self.log_tail()}"
        self.proc.send_signal(signal.SIGTERM)
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(30)
            raise AssertionError(f"ballastd did not exit within {timeout} s of SIGTERM\n{self.log_tail()}")
        self.check_log()
        assert rc == 0, f"ballastd exited {rc} after SIGTERM\n{self.log_tail()}"

    def kill(self):
        """SIGKILL, as a crash would."""
        assert self.running()
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)

    def restart(self):
        self.stop()
        return self.start()

    def close(self):
        """Finalizer: never leaves the process behind."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                pass

    def log_text(self):
        try:
            with open(self.log_path, "rb") as f:
                return f.read().decode("utf-8", "replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, n=60):
        lines = self.log_text().splitlines()
        return f"--- {self.log_path} (last {min(n, len(lines))} lines) ---\n" + "\n".join(lines[-n:])

    def check_log(self):
        text = self.log_text()
        bad = [m for m in SANITIZER_MARKERS if m in text]
        assert not bad, f"sanitizer report in the ballastd log ({bad})\n{self.log_tail(200)}"

    # --- HTTP ---

    def request(self, method, path, body=None, headers=None, timeout=30):
        return http_request(self.socket, method, path, body, headers, timeout)

    def raw(self, data, timeout=30, method="GET", shut_wr=False):
        return raw_request(self.socket, data, timeout, method, shut_wr)

    def ok(self, method, path, body=None, status=200, timeout=30):
        r = self.request(method, path, body, timeout=timeout)
        assert r.status == status, f"{method} {path} {json.dumps(body) if body is not None else ''}: expected {status}, got {r!r}"
        return r.json

    def get(self, path):
        return self.ok("GET", path)

    def health(self):
        return self.get("/v1/health")

    def host(self):
        return self.get("/v1/host")

    def vms(self):
        """{id: VM} from GET /v1/vms (also checks the list is sorted by id)."""
        lst = self.get("/v1/vms")["vms"]
        ids = [v["id"] for v in lst]
        assert ids == sorted(ids), f"GET /v1/vms is not sorted by id: {ids}"
        return {v["id"]: v for v in lst}

    def vm(self, vm_id):
        return self.get(f"/v1/vms/{vm_id}")

    def register(self, vm_id, socket_path, assigned, floor=None, shares=None, driver="qemu", expected_uid=None):
        body = {"id": vm_id, "driver": driver, "socket": socket_path, "assigned_bytes": assigned}
        if floor is not None:
            body["floor_bytes"] = floor
        if shares is not None:
            body["shares"] = shares
        if expected_uid is not None:
            body["expected_uid"] = expected_uid
        return self.ok("POST", "/v1/vms", body, status=201)

    def reclaim(self, reclaim_bytes, hold_for=None, dry_run=None, reason=None, status=200, timeout=60):
        body = {"reclaim_bytes": reclaim_bytes}
        if hold_for is not None:
            body["hold_for"] = hold_for
        if dry_run is not None:
            body["dry_run"] = dry_run
        if reason is not None:
            body["reason"] = reason
        return self.ok("POST", "/v1/memory/reclaim", body, status=status, timeout=timeout)

    def wait_vms(self, pred, timeout, what, interval=0.1):
        """Polls GET /v1/vms until pred({id: VM}) is truthy; the failure shows the last list."""
        deadline = time.monotonic() + timeout
        while True:
            v = self.vms()
            if pred(v):
                return v
            if time.monotonic() >= deadline:
                raise AssertionError(f"timed out after {timeout} s waiting for {what}; last GET /v1/vms:\n"
                                     + json.dumps(v, indent=1) + "\n" + self.log_tail(30))
            if not self.running():
                raise AssertionError(f"ballastd died while waiting for {what}\n{self.log_tail()}")
            time.sleep(interval)

    def wait_status(self, ids, status="ok", timeout=60):
        return self.wait_vms(lambda v: all(i in v and v[i]["status"] == status for i in ids), timeout,
                             f"VMs {ids} to be '{status}'")

    def history(self, limit=1000):
        return self.get(f"/v1/history?limit={limit}")["entries"]
