# SPDX-License-Identifier: MIT
"""What the API answers. Most answers are returned as the plain dicts ballastd sends, described
here as TypedDicts (for editors and type checkers; keys a newer ballastd adds simply appear). A
park or unpark answers with a ParkResult, which says how the wait ended."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal, Optional, TypedDict

from .errors import ParkOutcomeError

MiB = 1 << 20
GiB = 1 << 30

__all__ = ["MiB", "GiB", "ParkResult", "Health", "Host", "VM", "GuestView", "VmStats", "ReclaimResult",
           "ReclaimAction", "HistoryEntry"]


class Health(TypedDict):
    status: str
    version: str
    uptime_s: float


class Host(TypedDict):
    scope: str
    total_bytes: Optional[int]
    available_bytes: Optional[int]
    psi: Optional[dict[str, float]]              # some_avg10, full_avg10
    sample_error: Optional[str]
    state: Literal["healthy", "pressure", "critical"]
    state_since: Optional[str]
    transitions: int
    watermarks: dict[str, int]                  # low_bytes, high_bytes, critical_bytes
    reclaim: dict[str, int]                     # automatic_bytes, hold_bytes, requested_bytes, ...
    hold: Optional[dict[str, Any]]              # bytes, until, remaining_s, reason
    vm_count: int
    sample_age_ms: Optional[int]


class GuestView(TypedDict):
    fresh: bool
    pressure: bool
    used_bytes: Optional[int]
    available_bytes: Optional[int]
    total_bytes: Optional[int]


class VM(TypedDict, total=False):
    id: str
    driver: str
    socket: str                                 # qemu, firecracker, cloud-hypervisor
    uri: str                                    # libvirt
    domain: str                                 # libvirt
    expected_uid: Optional[int]
    assigned_bytes: int
    floor_bytes: int
    shares: int
    status: Literal["connecting", "ok", "error", "stalled", "parked"]
    target_bytes: Optional[int]
    actual_bytes: Optional[int]
    desired_bytes: Optional[int]
    effective_floor_bytes: Optional[int]
    reason: Optional[str]
    last_error: Optional[str]
    errors: int
    commands: int
    stalls: int
    updated: Optional[str]
    parked: bool
    park_previous_bytes: Optional[int]
    protected_until: Optional[str]
    guest: GuestView
    hypervisor_pid: Optional[int]
    host_rss_bytes: Optional[int]
    host_confirmed_bytes: Optional[int]


class VmStats(TypedDict):
    id: str
    stats: dict[str, Optional[int]]             # swap_in_bytes, ..., oom_kills, period_s
    last_update: Optional[str]


class ReclaimAction(TypedDict):
    vm: str
    action: Literal["applied", "planned", "unchanged", "stalled", "error", "unsupported"]
    previous_target_bytes: int
    planned_target_bytes: int
    new_target_bytes: int
    error: Optional[str]


class ReclaimResult(TypedDict):
    requested_bytes: int
    planned_bytes: int
    applied_bytes: int
    dry_run: bool
    hold_until: Optional[str]
    host_available_bytes: Optional[int]
    pressure_state: str
    actions: list[ReclaimAction]


class HistoryEntry(TypedDict):
    time: str
    trigger: str
    state: str
    available_bytes: Optional[int]
    requested_bytes: int
    planned_bytes: int
    targets: dict[str, int]
    reasons: dict[str, str]  # why each VM of targets got it ({} in entries from older ballastd)


class Capacity(TypedDict):
    """GET /v1/capacity: how many more VMs of size_bytes (plus overhead_bytes) fit now."""
    size_bytes: int
    overhead_bytes: int
    fit: int
    fit_free: int
    total_bytes: int
    available_bytes: int
    reserve_bytes: int
    free_bytes: int
    returnable_bytes: int
    vm_count: int
    state: str


@dataclass(frozen=True)
class ParkResult:
    """How a park or unpark ended (ballastd's PARK ANSWER, plus what the client measured).

    result:          "reached" — the guest got to the target (within ballastd's tolerance);
                     "stalled" — it stopped shrinking (or growing) before the target: for a park,
                                 its live data is bigger than the park size; it is left where it
                                 stopped and stays parked;
                     "deadline" — the wait's time ran out first (left where it was, still parked
                                 after a park);
                     "sent" — unpark without wait: the hypervisor accepted the command, the guest
                                 is getting its memory back while you already use it.
    previous_bytes:  the VM's target before the request
    target_bytes:    the target commanded (after clamping to assigned; a park may aim above the
                     requested size when the guest's statistics show a bigger working set)
    reached_bytes:   the VM's actual size at the answer
    elapsed_ms:      ballastd's time from the request to the answer
    message:         ballastd's words about it (often empty)
    operation:       "park" or "unpark"
    requested_bytes: the size_bytes the call asked for (None: ballastd's default)
    waited:          whether the answer waited for the guest (park: always; unpark: wait=True)
    round_trip_ms:   the whole call as the client saw it
    """

    vm: str
    result: Literal["reached", "stalled", "deadline", "sent"]
    previous_bytes: int
    target_bytes: int
    reached_bytes: int
    elapsed_ms: float
    message: str
    operation: Literal["park", "unpark"]
    requested_bytes: Optional[int] = None
    waited: bool = True
    round_trip_ms: float = 0.0
    raw: dict = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_answer(cls, answer: dict, operation: str, requested_bytes: Optional[int], waited: bool,
                    round_trip_ms: float) -> "ParkResult":
        return cls(vm=answer["vm"], result=answer["result"], previous_bytes=answer["previous_bytes"],
                   target_bytes=answer["target_bytes"], reached_bytes=answer["reached_bytes"],
                   elapsed_ms=float(answer["elapsed_ms"]), message=answer.get("message") or "",
                   operation=operation, requested_bytes=requested_bytes, waited=waited,  # type: ignore[arg-type]
                   round_trip_ms=round_trip_ms, raw=dict(answer))

    @property
    def reached(self) -> bool:
        return self.result == "reached"

    @property
    def stalled(self) -> bool:
        return self.result == "stalled"

    @property
    def timed_out(self) -> bool:
        return self.result == "deadline"

    @property
    def sent(self) -> bool:
        return self.result == "sent"

    @property
    def ok(self) -> bool:
        """The operation did all it was asked: a park reached its size; an unpark reached it, or
        (without wait) was accepted."""
        return self.result == "reached" or (self.result == "sent" and self.operation == "unpark")

    @property
    def gap_bytes(self) -> int:
        """How far the VM's actual size was from the target at the answer (for a park that
        stalled: how much more than the park size the guest keeps)."""
        return abs(self.reached_bytes - self.target_bytes)

    @property
    def freed_bytes(self) -> int:
        """For a park: how much smaller the VM got than its target before the park."""
        return max(self.previous_bytes - self.reached_bytes, 0)

    def check(self, *accept: str) -> "ParkResult":
        """Returns self when the result is one of `accept` (default: what .ok accepts), else raises
        ParkOutcomeError carrying this result."""
        wanted = accept or (("reached", "sent") if self.operation == "unpark" else ("reached",))
        if self.result not in wanted:
            raise ParkOutcomeError(self, tuple(wanted))
        return self

    def as_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d.pop("raw")
        return d
