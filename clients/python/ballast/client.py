# SPDX-License-Identifier: MIT
"""Client (blocking) and the routes both clients share.

Every route of the API is one method of _Routes; a method builds its request and hands it to
_call(), which Client runs at once and AsyncClient (ballast.aio) turns into a coroutine. So
`client.park("vm1")` and `await aclient.park("vm1")` take the same arguments and give the same
result."""

from __future__ import annotations

import os
import socket
import time
from typing import Any, Callable, Optional

from . import _http
from ._http import Address, build_request, duration, duration_seconds, interpret, parse_address, vm_path
from .errors import BallastError, BallastTimeout, TransportError


def transport_error(e: OSError, addr: Address, method: str, path: str) -> TransportError:
    msg = f"cannot talk to ballastd at {addr} ({method} {path}): {e.strerror or e}"
    return TransportError(e.errno, msg) if e.errno else TransportError(msg)
from .types import VM, Capacity, Health, HistoryEntry, Host, ParkResult, ReclaimResult, VmStats

__all__ = ["Client", "DEFAULT_TIMEOUT"]

DEFAULT_TIMEOUT = 30.0
# A park (or an unpark with wait) is answered when the guest gets there or when its own wait
# (`within`, ballastd's default 60 s, at most 10 min) ends; the call waits that long plus this.
WAIT_MARGIN = 15.0
PARK_DEFAULT_WITHIN = 60.0
PARK_MAX_WITHIN = 600.0

Post = Optional[Callable[[Any, float], Any]]


class _Routes:
    """The API's routes. `timeout` (seconds) bounds each whole call: connect, send, answer."""

    address: Address
    token: Optional[str]
    timeout: float

    def __init__(self, address: Any = None, *, token: Optional[str] = None, timeout: float = DEFAULT_TIMEOUT):
        """address: a Unix socket path, "http://127.0.0.1:PORT" (or "127.0.0.1:PORT", "[::1]:PORT",
        a (host, port) tuple); default $BALLAST_API when set and not empty, else
        /run/ballast/api.sock.
        token: the bearer token for TCP (default $BALLAST_TOKEN); never sent on the Unix socket,
        where ballastd goes by the caller's uid.
        timeout: the default timeout of a call, in seconds."""
        self.address = parse_address(address)
        if token is None and self.address.is_tcp:
            token = os.environ.get("BALLAST_TOKEN") or None
        self.token = token if self.address.is_tcp else None
        if not timeout or timeout <= 0:
            raise ValueError(f"the timeout must be a positive number of seconds: {timeout!r}")
        self.timeout = float(timeout)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.address)!r}{', token=...' if self.token else ''})"

    def _call(self, method: str, path: str, body: Any = None, timeout: Optional[float] = None, post: Post = None):
        raise NotImplementedError

    # --- the routes of the API (docs/api.md) ---

    def request(self, method: str, path: str, body: Optional[dict] = None, *, timeout: Optional[float] = None):
        """Any request: the decoded answer (JSON, or text), or the APIError of its status."""
        return self._call(method.upper(), path, body, timeout)

    def health(self, *, timeout: Optional[float] = None) -> Health:
        """GET /v1/health: {"status": "ok", "version", "uptime_s"}."""
        return self._call("GET", "/v1/health", None, timeout)

    def host(self, *, timeout: Optional[float] = None) -> Host:
        """GET /v1/host: available memory, PSI, pressure state, watermarks, reclaim stages, hold."""
        return self._call("GET", "/v1/host", None, timeout)

    def vms(self, *, timeout: Optional[float] = None) -> list[VM]:
        """GET /v1/vms: every registered VM, sorted by id."""
        return self._call("GET", "/v1/vms", None, timeout, lambda v, _: v["vms"])

    def vm(self, vm_id: str, *, timeout: Optional[float] = None) -> VM:
        """GET /v1/vms/{id}."""
        return self._call("GET", vm_path(vm_id), None, timeout)

    def add_vm(self, vm_id: str, driver: str, *, assigned_bytes: int, socket: Optional[str] = None,
               floor_bytes: Optional[int] = None, shares: Optional[int] = None, expected_uid: Optional[int] = None,
               uri: Optional[str] = None, domain: Optional[str] = None, timeout: Optional[float] = None) -> VM:
        """POST /v1/vms: registers a VM and returns it (status "connecting" until its actual size is
        read; see wait_ready). driver: qemu | firecracker | cloud-hypervisor (give `socket`) |
        libvirt (give `domain`, optionally `uri`). ConflictError when the id is taken."""
        body: dict[str, Any] = {"id": vm_id, "driver": driver, "assigned_bytes": assigned_bytes}
        for k, v in (("socket", socket), ("uri", uri), ("domain", domain), ("expected_uid", expected_uid),
                     ("floor_bytes", floor_bytes), ("shares", shares)):
            if v is not None:
                body[k] = v
        return self._call("POST", "/v1/vms", body, timeout)

    def update_vm(self, vm_id: str, *, floor_bytes: Optional[int] = None, shares: Optional[int] = None,
                  assigned_bytes: Optional[int] = None, timeout: Optional[float] = None) -> VM:
        """PATCH /v1/vms/{id}: changes any of floor_bytes, shares, assigned_bytes (at least one)."""
        body = {k: v for k, v in (("floor_bytes", floor_bytes), ("shares", shares), ("assigned_bytes", assigned_bytes))
                if v is not None}
        if not body:
            raise ValueError("update_vm needs at least one of floor_bytes, shares, assigned_bytes")
        return self._call("PATCH", vm_path(vm_id), body, timeout)

    def remove_vm(self, vm_id: str, *, timeout: Optional[float] = None) -> str:
        """DELETE /v1/vms/{id}: gives the VM its full size back (best effort), forgets it; returns
        the id."""
        return self._call("DELETE", vm_path(vm_id), None, timeout, lambda v, _: v["deleted"])

    def set_target(self, vm_id: str, target_bytes: int, *, timeout: Optional[float] = None) -> VM:
        """PUT /v1/vms/{id}/target: sends that balloon target now (within the VM's floor and
        assigned size, else BadRequestError); the VM with its new target."""
        return self._call("PUT", vm_path(vm_id, "/target"), {"target_bytes": target_bytes}, timeout)

    def stats(self, vm_id: str, *, timeout: Optional[float] = None) -> VmStats:
        """GET /v1/vms/{id}/stats: the guest's statistics read now (NotImplementedAPIError when the
        driver has none, UnavailableError when the driver call fails)."""
        return self._call("GET", vm_path(vm_id, "/stats"), None, timeout)

    def park(self, vm_id: str, size_bytes: Optional[int] = None, *, within: Any = None,
             timeout: Optional[float] = None) -> ParkResult:
        """POST /v1/vms/{id}/park: shrinks the VM to size_bytes (default ballastd's [park] size,
        128 MiB) and waits for the guest, at most `within` (a duration: "60s", seconds, a
        timedelta; default 60 s, at most 10 min). The ParkResult says how it ended: reached,
        stalled (the guest's live data is bigger: left where it stopped) or deadline; the VM is
        parked in every case. ConflictError when it is already parked or a park/unpark of it is
        in progress; UnavailableError while its size is not known yet (see wait_ready).
        The call's own timeout defaults to `within` plus 15 s."""
        body: dict[str, Any] = {}
        if size_bytes is not None:
            body["size_bytes"] = size_bytes
        if within is not None:
            body["timeout"] = duration(within)
        t = timeout if timeout is not None else self._wait_timeout(within)
        return self._call("POST", vm_path(vm_id, "/park"), body or None, t,
                          lambda a, ms: ParkResult.from_answer(a, "park", size_bytes, True, ms))

    def unpark(self, vm_id: str, size_bytes: Optional[int] = None, *, wait: bool = False, within: Any = None,
               timeout: Optional[float] = None) -> ParkResult:
        """POST /v1/vms/{id}/unpark: gives the VM size_bytes back (default its size before the
        park), sent to the hypervisor at once, and protects it from automatic reclaim for a while.
        Without wait the answer comes as soon as the hypervisor accepted the command (result
        "sent"): the guest gets its memory while the caller already uses it. With wait=True it
        comes once the guest has it (reached), stalled, or `within` passed (deadline).
        ConflictError when it is not parked or a park/unpark of it is in progress."""
        body: dict[str, Any] = {}
        if size_bytes is not None:
            body["size_bytes"] = size_bytes
        if wait:
            body["wait"] = True
        if within is not None:
            body["timeout"] = duration(within)
        t = timeout if timeout is not None else (self._wait_timeout(within) if wait else self.timeout)
        return self._call("POST", vm_path(vm_id, "/unpark"), body or None, t,
                          lambda a, ms: ParkResult.from_answer(a, "unpark", size_bytes, bool(wait), ms))

    def reclaim(self, reclaim_bytes: int, *, hold_for: Any = None, dry_run: Optional[bool] = None,
                reason: Optional[str] = None, timeout: Optional[float] = None) -> ReclaimResult:
        """POST /v1/memory/reclaim: takes reclaim_bytes from the VMs in total and holds that for
        `hold_for` (default 5 min, at most 1 h); dry_run=True only plans. 0 bytes or hold_for "0s"
        clears the hold. The answer lists what happened to each VM."""
        body: dict[str, Any] = {"reclaim_bytes": reclaim_bytes}
        if hold_for is not None:
            body["hold_for"] = duration(hold_for)
        if dry_run is not None:
            body["dry_run"] = bool(dry_run)
        if reason is not None:
            body["reason"] = reason
        return self._call("POST", "/v1/memory/reclaim", body, timeout)

    def clear_hold(self, *, timeout: Optional[float] = None) -> ReclaimResult:
        """Clears the manual hold (reclaim of 0 for "0s"): automatic pressure alone decides."""
        return self.reclaim(0, hold_for="0s", timeout=timeout)

    def history(self, limit: Optional[int] = None, *, timeout: Optional[float] = None) -> list[HistoryEntry]:
        """GET /v1/history?limit=N: the plan journal, newest first (ballastd's default 50, 1..1000)."""
        path = "/v1/history" if limit is None else f"/v1/history?limit={int(limit)}"
        return self._call("GET", path, None, timeout, lambda v, _: v["entries"])

    def capacity(self, size_bytes: int, *, timeout: Optional[float] = None) -> Capacity:
        """GET /v1/capacity?size=N: the admission hint, how many more VMs of size_bytes fit now
        (fit, and fit_free in free memory alone), each VM counted at its size plus the hypervisor
        overhead ballastd measured."""
        return self._call("GET", f"/v1/capacity?size={int(size_bytes)}", None, timeout)

    def metrics(self, *, timeout: Optional[float] = None) -> str:
        """GET /metrics: the Prometheus text."""
        return self._call("GET", "/metrics", None, timeout)

    # --- helpers ---

    def _wait_timeout(self, within: Any) -> float:
        s = PARK_DEFAULT_WITHIN if within is None else duration_seconds(within)
        if s is None:
            s = PARK_MAX_WITHIN
        return max(self.timeout, s + WAIT_MARGIN)

    @staticmethod
    def _ready(v: VM) -> bool:
        return v.get("actual_bytes") is not None and v.get("status") in ("ok", "parked", "stalled")

    def _timeout_error(self, vm_id: str, what: str, timeout: float, last: Optional[VM]) -> BallastTimeout:
        state = "never answered" if last is None else \
            f"last status {last.get('status')!r}, last_error {last.get('last_error')!r}"
        return BallastTimeout(f"{vm_id} was not {what} within {timeout} s ({state})")


class Client(_Routes):
    """A blocking client of ballastd. Safe to share between threads (one connection per call).

        c = Client()                                         # $BALLAST_API or /run/ballast/api.sock
        c = Client("http://127.0.0.1:9464", token="...")     # TCP with a bearer token
        c.vms(); r = c.park("vm1"); r.result                 # "reached", "stalled", "deadline"
    """

    def _call(self, method, path, body=None, timeout=None, post=None):
        t0 = time.monotonic()
        value = interpret(self._exchange(method, path, body, self.timeout if timeout is None else timeout),
                          method, path)
        return post(value, (time.monotonic() - t0) * 1000) if post else value

    def _exchange(self, method: str, path: str, body: Any, timeout: float) -> _http.RawResponse:
        data = build_request(self.address, method, path, body, self.token)
        deadline = time.monotonic() + timeout
        addr = self.address

        def remaining() -> float:
            left = deadline - time.monotonic()
            if left <= 0:
                raise socket.timeout()
            return left

        try:
            if addr.unix is not None:
                s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                try:
                    s.settimeout(remaining())
                    s.connect(addr.unix)
                except BaseException:
                    s.close()
                    raise
            else:
                s = socket.create_connection((addr.host, addr.port), timeout=remaining())
            with s:
                try:
                    s.settimeout(remaining())
                    s.sendall(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # ballastd may answer (403, 413) and close before reading everything
                parser = _http.ResponseParser(method)
                while True:
                    s.settimeout(remaining())
                    try:
                        chunk = s.recv(65536)
                    except ConnectionResetError:
                        chunk = b""
                    if not chunk:
                        return parser.feed_eof()
                    if parser.feed(chunk):
                        assert parser.response is not None
                        return parser.response
        except socket.timeout:
            raise BallastTimeout(f"{method} {path}: no whole answer from ballastd at {addr} within {timeout:g} s") \
                from None
        except BallastError:
            raise
        except OSError as e:
            raise transport_error(e, addr, method, path) from e

    def wait_vm(self, vm_id: str, pred: Callable[[VM], Any], *, timeout: float = 60.0, interval: float = 0.1,
                what: str = "in the state waited for") -> VM:
        """Polls GET /v1/vms/{id} until pred(vm) is true; BallastTimeout after `timeout` s."""
        deadline = time.monotonic() + timeout
        last = None
        while True:
            last = self.vm(vm_id)
            if pred(last):
                return last
            if time.monotonic() >= deadline:
                raise self._timeout_error(vm_id, what, timeout, last)
            time.sleep(interval)

    def wait_ready(self, vm_id: str, *, timeout: float = 60.0, interval: float = 0.1) -> VM:
        """Waits until ballastd knows the VM's actual size and its driver is connected (status ok,
        parked or stalled): from then on it can be parked, unparked and given targets."""
        return self.wait_vm(vm_id, self._ready, timeout=timeout, interval=interval, what="ready")
