#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""A warm pool on asyncio: booted VMs wait parked (shrunk to a small size through their balloon, so
they cost the host little), and each job gets one unparked the moment it starts.

    python3 warm_pool.py [--api SOCKET|http://127.0.0.1:PORT] [--token T] [--park-size MiB]
                         [--jobs N] VM [VM ...]

The VMs must already be registered with ballastd (`ballastctl vm add`, or Client.add_vm). Each job
here only sleeps; a real one would run its work in the VM it was handed."""

import argparse
import asyncio
import contextlib
import logging
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))  # run from a checkout

from ballast import APIError, AsyncClient, MiB, ParkResult  # noqa: E402

log = logging.getLogger("warm_pool")


class WarmPool:
    """VMs park when they enter the pool and are unparked, one per job, when they leave it.

    add(vm):      waits until ballastd knows the VM's size, parks it, puts it in the pool
    acquire():    takes the VM parked longest, unparks it, returns (vm, ParkResult)
    release(vm):  parks it again and puts it back
    vm():         acquire() and release() around a block: `async with pool.vm() as vm_id: ...`

    Every park and unpark answer is kept in .results[vm] (the last one) and logged: a park that
    stalled above the park size (the guest's live data is bigger) or ran out of time leaves the VM
    parked where it stopped, still usable; a VM whose unpark fails is dropped from the pool, not
    handed out (.dropped)."""

    def __init__(self, client: AsyncClient, park_size: int = 128 * MiB, within="60s", wait_memory=False):
        self.client = client
        self.park_size = park_size
        self.within = within
        self.wait_memory = wait_memory  # unpark with wait: the job starts once the guest has its memory
        self.idle: asyncio.Queue[str] = asyncio.Queue()
        self.results: dict[str, ParkResult] = {}
        self.dropped: dict[str, Exception] = {}
        self.members: set[str] = set()

    async def add(self, vm_id: str) -> ParkResult:
        await self.client.wait_ready(vm_id)
        self.members.add(vm_id)
        return await self._park(vm_id)

    async def release(self, vm_id: str) -> ParkResult:
        return await self._park(vm_id)

    async def _park(self, vm_id: str) -> ParkResult:
        r = await self.client.park(vm_id, self.park_size, within=self.within)
        self.results[vm_id] = r
        if r.reached:
            log.info("%s parked at %d MiB in %.0f ms", vm_id, r.reached_bytes // MiB, r.elapsed_ms)
        else:  # stalled or deadline: parked all the same, at a larger size (the message says why)
            log.warning("%s parked at %d MiB, not the %d MiB asked (%s): %s", vm_id, r.reached_bytes // MiB,
                        self.park_size // MiB, r.result, r.message or "no message")
        self.idle.put_nowait(vm_id)
        return r

    async def acquire(self) -> tuple[str, ParkResult]:
        while True:
            if not self.members:
                raise RuntimeError("no VM left in the pool")
            vm_id = await self.idle.get()
            try:
                r = await self.client.unpark(vm_id, wait=self.wait_memory, within=self.within)
            except APIError as e:  # e.g. the hypervisor refused: do not hand this VM out
                log.error("%s: unpark failed (%s %s: %s); dropped from the pool", vm_id, e.status, e.code, e.message)
                self.dropped[vm_id] = e
                self.members.discard(vm_id)
                continue
            self.results[vm_id] = r
            log.info("%s unparked (%s) to %d MiB in %.1f ms", vm_id, r.result, r.target_bytes // MiB, r.elapsed_ms)
            if r.result not in ("sent", "reached"):
                log.warning("%s: the guest got to %d MiB only (%s)", vm_id, r.reached_bytes // MiB, r.result)
            return vm_id, r

    @contextlib.asynccontextmanager
    async def vm(self):
        vm_id, _ = await self.acquire()
        try:
            yield vm_id
        finally:
            await self.release(vm_id)


async def run_job(pool: WarmPool, n: int, seconds: float) -> None:
    t0 = time.monotonic()
    async with pool.vm() as vm_id:
        log.info("job %d runs on %s (%.0f ms to get it)", n, vm_id, (time.monotonic() - t0) * 1000)
        await asyncio.sleep(seconds)  # the job's work, in the VM


async def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("vms", nargs="+", metavar="VM")
    ap.add_argument("--api", help="ballastd's socket or http://127.0.0.1:PORT (default $BALLAST_API)")
    ap.add_argument("--token", help="bearer token for TCP (default $BALLAST_TOKEN)")
    ap.add_argument("--park-size", type=int, default=128, metavar="MiB")
    ap.add_argument("--jobs", type=int, default=4)
    ap.add_argument("--job-seconds", type=float, default=1.0)
    ap.add_argument("--wait-memory", action="store_true", help="start a job once its guest has its memory")
    a = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")

    pool = WarmPool(AsyncClient(a.api, token=a.token), a.park_size * MiB, wait_memory=a.wait_memory)
    await asyncio.gather(*(pool.add(v) for v in a.vms))
    await asyncio.gather(*(run_job(pool, n, a.job_seconds) for n in range(a.jobs)))
    for vm_id, r in sorted(pool.results.items()):
        print(f"{vm_id}: {r.operation} {r.result}, {r.reached_bytes // MiB} MiB (target {r.target_bytes // MiB} MiB)")
    return 1 if pool.dropped else 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
