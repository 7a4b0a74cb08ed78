# SPDX-License-Identifier: MIT
"""The exceptions of the ballast client.

    BallastError
    ├── TransportError (also an OSError): ballastd could not be reached, or its answer was not HTTP
    │   └── BallastTimeout (also a TimeoutError): the call did not finish within its timeout
    ├── APIError: ballastd answered with an error status; .status, .code, .message
    │   ├── BadRequestError            400 bad_request
    │   ├── UnauthorizedError          401 unauthorized (TCP: no token or an unknown one)
    │   ├── ForbiddenError             403 forbidden (a write without write permission)
    │   ├── NotFoundError              404 not_found (no such VM or route)
    │   ├── MethodNotAllowedError      405 method_not_allowed (.allow: the path's methods)
    │   ├── ConflictError              409 conflict (VM id taken; park/unpark state)
    │   ├── PayloadTooLargeError       413 payload_too_large
    │   ├── URITooLongError            414 uri_too_long
    │   ├── UnsupportedMediaTypeError  415 unsupported_media_type
    │   ├── InternalServerError        500 internal
    │   ├── NotImplementedAPIError     501 not_implemented (the driver has no guest statistics)
    │   └── UnavailableError           503 unavailable (driver failed, size not known yet, ...)
    └── ParkOutcomeError: ParkResult.check() on a park/unpark that did not end as asked (.result)
"""

from __future__ import annotations

from typing import Any, Mapping

__all__ = [
    "BallastError", "TransportError", "BallastTimeout", "APIError", "BadRequestError", "UnauthorizedError",
    "ForbiddenError", "NotFoundError", "MethodNotAllowedError", "ConflictError", "PayloadTooLargeError",
    "URITooLongError", "UnsupportedMediaTypeError", "InternalServerError", "NotImplementedAPIError",
    "UnavailableError", "ParkOutcomeError", "error_for",
]


class BallastError(Exception):
    """Base class of every exception this package raises."""


class TransportError(BallastError, OSError):
    """ballastd could not be reached (no socket, connection refused, closed early) or its answer
    was not a well-formed HTTP/1.1 response."""


class BallastTimeout(TransportError, TimeoutError):
    """The call did not get its whole answer within its timeout."""


class APIError(BallastError):
    """ballastd answered with an error status.

    status:  the HTTP status (e.g. 409)
    code:    the API's error code (e.g. "conflict"); for an answer without the API's JSON error body
             (libmicrohttpd's own HTML 400), the code that belongs to the status, or None
    message: the API's message (it names the field for a 400), or the start of the body
    method, path: the request
    headers: the answer's headers, names in lower case
    body:    the raw body (bytes)
    """

    status: int = 0
    default_code: str | None = None

    def __init__(self, status: int, code: str | None, message: str, *, method: str = "", path: str = "",
                 headers: Mapping[str, str] | None = None, body: bytes = b""):
        super().__init__(status, code, message)
        self.status = status
        self.code = code
        self.message = message
        self.method = method
        self.path = path
        self.headers = dict(headers or {})
        self.body = body

    def __str__(self) -> str:
        where = f"{self.method} {self.path}: " if self.method else ""
        return f"{where}{self.status} {self.code or 'error'}: {self.message}"

    def __reduce__(self):  # picklable despite the keyword-only arguments
        return _rebuild, (type(self), self.status, self.code, self.message, self.method, self.path, self.headers,
                          self.body)


def _rebuild(cls, status, code, message, method, path, headers, body):
    return cls(status, code, message, method=method, path=path, headers=headers, body=body)


class BadRequestError(APIError):
    status, default_code = 400, "bad_request"


class UnauthorizedError(APIError):
    status, default_code = 401, "unauthorized"


class ForbiddenError(APIError):
    status, default_code = 403, "forbidden"


class NotFoundError(APIError):
    status, default_code = 404, "not_found"


class MethodNotAllowedError(APIError):
    status, default_code = 405, "method_not_allowed"

    @property
    def allow(self) -> list[str]:
        """The methods the path has (from the Allow header)."""
        return [m.strip() for m in self.headers.get("allow", "").split(",") if m.strip()]


class ConflictError(APIError):
    status, default_code = 409, "conflict"


class PayloadTooLargeError(APIError):
    status, default_code = 413, "payload_too_large"


class URITooLongError(APIError):
    status, default_code = 414, "uri_too_long"


class UnsupportedMediaTypeError(APIError):
    status, default_code = 415, "unsupported_media_type"


class InternalServerError(APIError):
    status, default_code = 500, "internal"


class NotImplementedAPIError(APIError):
    status, default_code = 501, "not_implemented"


class UnavailableError(APIError):
    status, default_code = 503, "unavailable"


_BY_STATUS = {c.status: c for c in (BadRequestError, UnauthorizedError, ForbiddenError, NotFoundError,
                                    MethodNotAllowedError, ConflictError, PayloadTooLargeError, URITooLongError,
                                    UnsupportedMediaTypeError, InternalServerError, NotImplementedAPIError,
                                    UnavailableError)}
_BY_CODE = {c.default_code: c for c in _BY_STATUS.values()}


def error_for(status: int, body: bytes, *, method: str = "", path: str = "",
              headers: Mapping[str, str] | None = None) -> APIError:
    """The exception for an error answer: chosen by status (by the body's code for a status this
    package does not know), carrying the API's code and message."""
    code: str | None = None
    message = ""
    parsed: Any = None
    try:
        import json
        parsed = json.loads(body) if body else None
    except ValueError:
        parsed = None
    err = parsed.get("error") if isinstance(parsed, dict) else None
    if isinstance(err, dict):
        code = err.get("code") if isinstance(err.get("code"), str) else None
        message = err.get("message") if isinstance(err.get("message"), str) else ""
    cls = _BY_STATUS.get(status) or _BY_CODE.get(code) or APIError
    if code is None:
        code = _BY_STATUS[status].default_code if status in _BY_STATUS else None
    if not message:
        text = body.decode("utf-8", "replace").strip()
        message = " ".join(text.split())[:300] or f"HTTP {status}"
    return cls(status, code, message, method=method, path=path, headers=headers, body=body)


class ParkOutcomeError(BallastError):
    """A park or unpark answered 200 but did not end as the caller required (see ParkResult.check);
    .result is the ParkResult."""

    def __init__(self, result: Any, wanted: tuple[str, ...]):
        super().__init__(result, wanted)
        self.result = result
        self.wanted = wanted

    def __str__(self) -> str:
        r = self.result
        msg = f"{r.operation} of {r.vm}: {r.result} (wanted {' or '.join(self.wanted)}) at " \
              f"{r.reached_bytes / 1048576:.0f} MiB, target {r.target_bytes / 1048576:.0f} MiB"
        return msg + (f": {r.message}" if r.message else "")
