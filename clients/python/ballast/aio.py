# SPDX-License-Identifier: MIT
"""AsyncClient: the same routes as Client, as coroutines on asyncio."""

from __future__ import annotations

import asyncio
import time
from typing import Any, Callable

from . import _http
from ._http import build_request, interpret
from .client import _Routes, transport_error
from .errors import BallastError, BallastTimeout
from .types import VM

__all__ = ["AsyncClient"]


class AsyncClient(_Routes):
    """An asyncio client of ballastd: every method of Client, awaited. Safe to use from many tasks
    at once (one connection per call); a call cancelled or timed out closes its connection.

        c = AsyncClient()
        r = await c.park("vm1", 128 * MiB)
        await c.unpark("vm1")
    """

    async def _call(self, method, path, body=None, timeout=None, post=None):
        t0 = time.monotonic()
        value = interpret(await self._exchange(method, path, body, self.timeout if timeout is None else timeout),
                          method, path)
        return post(value, (time.monotonic() - t0) * 1000) if post else value

    async def _exchange(self, method: str, path: str, body: Any, timeout: float) -> _http.RawResponse:
        data = build_request(self.address, method, path, body, self.token)
        addr = self.address
        try:
            async with asyncio.timeout(timeout):
                if addr.unix is not None:
                    reader, writer = await asyncio.open_unix_connection(addr.unix)
                else:
                    reader, writer = await asyncio.open_connection(addr.host, addr.port)
                try:
                    writer.write(data)
                    try:
                        await writer.drain()
                    except (BrokenPipeError, ConnectionResetError):
                        pass  # ballastd may answer (403, 413) and close before reading everything
                    parser = _http.ResponseParser(method)
                    while True:
                        try:
                            chunk = await reader.read(65536)
                        except ConnectionResetError:
                            chunk = b""
                        if not chunk:
                            return parser.feed_eof()
                        if parser.feed(chunk):
                            assert parser.response is not None
                            return parser.response
                finally:
                    writer.close()
        except BallastError:
            raise
        except TimeoutError:
            raise BallastTimeout(f"{method} {path}: no whole answer from ballastd at {addr} within {timeout:g} s") \
                from None
        except OSError as e:
            raise transport_error(e, addr, method, path) from e

    async def wait_vm(self, vm_id: str, pred: Callable[[VM], Any], *, timeout: float = 60.0, interval: float = 0.1,
                      what: str = "in the state waited for") -> VM:
        """Polls GET /v1/vms/{id} until pred(vm) is true; BallastTimeout after `timeout` s."""
        deadline = time.monotonic() + timeout
        while True:
            last = await self.vm(vm_id)
            if pred(last):
                return last
            if time.monotonic() >= deadline:
                raise self._timeout_error(vm_id, what, timeout, last)
            await asyncio.sleep(interval)

    async def wait_ready(self, vm_id: str, *, timeout: float = 60.0, interval: float = 0.1) -> VM:
        """Waits until ballastd knows the VM's actual size and its driver is connected (status ok,
        parked or stalled)."""
        return await self.wait_vm(vm_id, self._ready, timeout=timeout, interval=interval, what="ready")

