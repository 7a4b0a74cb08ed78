# SPDX-License-Identifier: MIT
"""A client of ballastd's HTTP API (docs/api.md of the ballast project), standard library only.

    from ballast import Client, AsyncClient, MiB

    c = Client()                                    # $BALLAST_API, else /run/ballast/api.sock
    c = Client("http://127.0.0.1:9464", token=t)    # loopback TCP with a bearer token
    r = c.park("vm1", 128 * MiB)                    # ParkResult: r.result, r.reached_bytes, ...
    c.unpark("vm1")

Errors are exceptions: ballast.errors.APIError subclasses (.status, .code, .message) for the API's
answers, TransportError / BallastTimeout when ballastd cannot be reached in time."""

from .aio import AsyncClient
from .client import DEFAULT_TIMEOUT, Client
from .errors import (APIError, BadRequestError, BallastError, BallastTimeout, ConflictError, ForbiddenError,
                     InternalServerError, MethodNotAllowedError, NotFoundError, NotImplementedAPIError,
                     ParkOutcomeError, PayloadTooLargeError, TransportError, UnauthorizedError, UnavailableError,
                     UnsupportedMediaTypeError, URITooLongError)
from .types import GiB, MiB, ParkResult

__version__ = "0.1.0"

__all__ = [
    "Client", "AsyncClient", "ParkResult", "MiB", "GiB", "DEFAULT_TIMEOUT",
    "BallastError", "TransportError", "BallastTimeout", "APIError", "BadRequestError", "UnauthorizedError",
    "ForbiddenError", "NotFoundError", "MethodNotAllowedError", "ConflictError", "PayloadTooLargeError",
    "URITooLongError", "UnsupportedMediaTypeError", "InternalServerError", "NotImplementedAPIError",
    "UnavailableError", "ParkOutcomeError",
]
