# SPDX-License-Identifier: MIT
"""The I/O-free half of the client, shared by Client and AsyncClient: where ballastd is, the bytes
of a request, an incremental HTTP/1.1 response parser, and what an answer means (a value or an
exception). One request per connection (`Connection: close`): nothing is shared between calls, so
both clients may be used from many threads or tasks at once."""

from __future__ import annotations

import datetime
import json
import os
import urllib.parse
from dataclasses import dataclass
from typing import Any

from .errors import TransportError, error_for

DEFAULT_SOCKET = "/run/ballast/api.sock"
USER_AGENT = "ballast-python/0.1.0"
MAX_HEAD = 64 * 1024
MAX_BODY = 64 * 1024 * 1024


@dataclass(frozen=True)
class Address:
    """Where ballastd listens: a Unix socket path, or a TCP host and port."""

    unix: str | None = None
    host: str | None = None
    port: int | None = None

    @property
    def is_tcp(self) -> bool:
        return self.unix is None

    def host_header(self) -> str:
        if self.unix is not None:
            return "localhost"
        h = f"[{self.host}]" if ":" in (self.host or "") else self.host
        return f"{h}:{self.port}"

    def __str__(self) -> str:
        return self.unix if self.unix is not None else f"http://{self.host_header()}"


def parse_address(address: Any = None) -> Address:
    """None: $BALLAST_API when set and not empty, else /run/ballast/api.sock. A str starting with
    "/" (or "unix:") is a socket path; "http://HOST:PORT", "HOST:PORT" and "[::1]:PORT" are TCP; so
    is a (host, port) tuple."""
    if address is None:
        address = os.environ.get("BALLAST_API") or DEFAULT_SOCKET
    if isinstance(address, os.PathLike):
        address = os.fspath(address)
    if isinstance(address, tuple) and len(address) == 2:
        return Address(host=str(address[0]), port=int(address[1]))
    if not isinstance(address, str) or not address:
        raise ValueError(f"not a ballastd address: {address!r}")
    if address.startswith("unix:"):
        address = address[5:]
        if address.startswith("//"):
            address = address[2:]
    if address.startswith("/") or address.startswith("."):
        return Address(unix=address)
    u = urllib.parse.urlsplit(address if "://" in address else "http://" + address)
    if u.scheme != "http" or not u.hostname or u.port is None or u.path not in ("", "/"):
        raise ValueError(f"not a ballastd address (a socket path, or http://HOST:PORT): {address!r}")
    return Address(host=u.hostname, port=u.port)


def duration(value: Any) -> str:
    """A duration for the API: a str is sent as it is ("90s", "5m", "1m30s", "250ms"); a number is
    seconds; a datetime.timedelta is what it says."""
    if isinstance(value, str):
        return value
    if isinstance(value, datetime.timedelta):
        value = value.total_seconds()
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"a duration is a str such as '60s', a number of seconds or a timedelta: {value!r}")
    if value < 0:
        raise ValueError(f"a negative duration: {value!r}")
    us = round(value * 1_000_000)
    if us % 1_000_000 == 0:
        return f"{us // 1_000_000}s"
    if us % 1000 == 0:
        return f"{us // 1000}ms"
    return f"{us}us"


def duration_seconds(value: Any) -> float | None:
    """Seconds of a duration as duration() accepts it (None when it cannot be read)."""
    if value is None:
        return None
    if isinstance(value, datetime.timedelta):
        return value.total_seconds()
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    units = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0}
    s, total, num = str(value).strip(), 0.0, ""
    if s.isdigit():
        return float(s)
    i = 0
    while i < len(s):
        if s[i].isdigit():
            num += s[i]
            i += 1
            continue
        j = i
        while j < len(s) and s[j].isalpha():
            j += 1
        unit = s[i:j]
        if not num or unit not in units:
            return None
        total += int(num) * units[unit]
        num, i = "", j
    return None if num else total


def vm_path(vm_id: str, suffix: str = "") -> str:
    if not isinstance(vm_id, str) or not vm_id:
        raise ValueError(f"a VM id is a non-empty str: {vm_id!r}")
    return "/v1/vms/" + urllib.parse.quote(vm_id, safe="") + suffix


def build_request(addr: Address, method: str, path: str, body: Any = None, token: str | None = None) -> bytes:
    """The bytes of one request; body (a dict) is sent as JSON, None sends no body."""
    for what, text in (("method", method), ("path", path)):
        if not text or any(not (0x21 <= ord(ch) <= 0x7e) for ch in text):
            raise ValueError(f"the request {what} must be printable ASCII without spaces: {text!r}")
    head = [f"{method} {path} HTTP/1.1", f"Host: {addr.host_header()}", f"User-Agent: {USER_AGENT}",
            "Accept: application/json, text/plain", "Connection: close"]
    if token is not None:
        if any(c in token for c in "\r\n\0") or not token:
            raise ValueError("a bearer token is one line of text")
        head.append(f"Authorization: Bearer {token}")
    data = b""
    if body is not None:
        data = json.dumps(body, separators=(",", ":")).encode()
        head += ["Content-Type: application/json", f"Content-Length: {len(data)}"]
    return ("\r\n".join(head) + "\r\n\r\n").encode("ascii") + data


@dataclass
class RawResponse:
    status: int
    reason: str
    headers: dict[str, str]
    body: bytes


class ResponseParser:
    """Feed it the bytes of the connection; .response is set once one whole answer has come."""

    def __init__(self, method: str):
        self.method = method
        self.buf = bytearray()
        self.response: RawResponse | None = None
        self._head: tuple[int, str, dict[str, str]] | None = None
        self._length: int | None = None  # body length; None: chunked or until EOF
        self._chunked = False
        self._chunks = bytearray()

    def feed(self, data: bytes) -> bool:
        """True once the answer is complete."""
        self.buf += data
        return self._advance(eof=False)

    def feed_eof(self) -> RawResponse:
        """The connection closed: the answer, if whole, else TransportError."""
        if self.response is None and not self._advance(eof=True):
            if self._head is None and not self.buf:
                raise TransportError("ballastd closed the connection without answering")
            raise TransportError("ballastd closed the connection in the middle of its answer")
        assert self.response is not None
        return self.response

    def _advance(self, eof: bool) -> bool:
        if self.response is not None:
            return True
        while self._head is None:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                if len(self.buf) > MAX_HEAD:
                    raise TransportError("the answer's header is too long")
                return False
            self._parse_head(bytes(self.buf[:end]))
            del self.buf[:end + 4]
        status, reason, headers = self._head
        if self._chunked:
            return self._advance_chunked()
        if self._length is not None:
            if len(self.buf) >= self._length:
                self._done(bytes(self.buf[:self._length]))
                return True
            return False
        if len(self.buf) > MAX_BODY:
            raise TransportError("the answer is too long")
        if eof:
            self._done(bytes(self.buf))
            return True
        return False

    def _parse_head(self, raw: bytes) -> None:
        try:
            text = raw.decode("latin-1")
            lines = text.split("\r\n")
            version, _, rest = lines[0].partition(" ")
            code, _, reason = rest.partition(" ")
            if not version.startswith("HTTP/1.") or len(code) != 3 or not code.isdigit():
                raise ValueError(lines[0])
            status = int(code)
        except (ValueError, IndexError):
            raise TransportError(f"not an HTTP answer: {raw[:80]!r}") from None
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if not sep:
                raise TransportError(f"a malformed header line in the answer: {line[:80]!r}")
            name, value = name.strip().lower(), value.strip()
            headers[name] = f"{headers[name]}, {value}" if name in headers else value
        if 100 <= status < 200:
            return  # an interim answer: the real one follows
        self._head = (status, reason, headers)
        if self.method == "HEAD" or status in (204, 304):
            self._length = 0
        elif "chunked" in headers.get("transfer-encoding", "").lower():
            self._chunked = True
        elif "content-length" in headers:
            try:
                self._length = int(headers["content-length"])
            except ValueError:
                raise TransportError(f"a bad Content-Length: {headers['content-length']!r}") from None
            if self._length < 0 or self._length > MAX_BODY:
                raise TransportError(f"a bad Content-Length: {self._length}")

    def _advance_chunked(self) -> bool:
        while True:
            if self._length is None:  # expecting a chunk-size line
                end = self.buf.find(b"\r\n")
                if end < 0:
                    return False
                size = bytes(self.buf[:end]).split(b";")[0].strip()
                try:
                    n = int(size, 16)
                except ValueError:
                    raise TransportError(f"a bad chunk size in the answer: {size[:20]!r}") from None
                del self.buf[:end + 2]
                if n == 0:
                    self._length = -1  # trailers follow
                else:
                    self._length = n
                    if len(self._chunks) + n > MAX_BODY:
                        raise TransportError("the answer is too long")
            elif self._length == -1:  # trailers, up to an empty line
                if self.buf.startswith(b"\r\n"):
                    self._done(bytes(self._chunks))
                    return True
                end = self.buf.find(b"\r\n\r\n")
                if end < 0:
                    return False
                self._done(bytes(self._chunks))
                return True
            else:
                if len(self.buf) < self._length + 2:
                    return False
                self._chunks += self.buf[:self._length]
                del self.buf[:self._length + 2]
                self._length = None

    def _done(self, body: bytes) -> None:
        status, reason, headers = self._head  # type: ignore[misc]
        self.response = RawResponse(status, reason, headers, body)


def interpret(resp: RawResponse, method: str, path: str) -> Any:
    """A 2xx answer's value (JSON decoded; text for text/plain), or the APIError for the status."""
    if resp.status >= 300:
        raise error_for(resp.status, resp.body, method=method, path=path, headers=resp.headers)
    ctype = resp.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype == "application/json" or (not ctype and resp.body[:1] in (b"{", b"[")):
        try:
            return json.loads(resp.body)
        except ValueError:
            raise TransportError(f"{method} {path}: ballastd's answer is not JSON: {resp.body[:80]!r}") from None
    return resp.body.decode("utf-8", "replace")
