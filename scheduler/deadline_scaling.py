"""Deadline-aware scale-up: start a replica when it would serve, in time, a queued request that the
running and starting fleet would leave to miss its deadline.

The queue is replayed first-in first-out over the replicas' free slots (a running replica's slot
frees when its current request is expected to end, a starting replica's when it is expected to be
ready, a new replica's one cold start from now). Each queued request has a *slack*: the latest
start, from now, that still meets its deadline (or the latency objective) given its own service
time. The answer is the fewest new replicas that bring the misses to their minimum — so a replica
is started only if some request still waiting when it becomes ready is saved by it (the cost rule:
never start a replica that is ready only after the work it was started for is gone).
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Backlog:
    """The queued requests in arrival order: latest start from now, and own service time."""

    slack_s: tuple[float, ...]
    service_s: tuple[float, ...]

    def __post_init__(self) -> None:
        if len(self.slack_s) != len(self.service_s):
            raise ValueError("slack_s and service_s must have one entry per queued request")

    def __len__(self) -> int:
        return len(self.slack_s)


def misses(backlog: Backlog, free_at_s: Sequence[float]) -> int:
    """Queued requests that start after their slack when served FIFO by slots free at ``free_at_s``."""
    if not backlog:
        return 0
    if not free_at_s:
        return len(backlog)
    slots = list(free_at_s)
    heapq.heapify(slots)
    missed = 0
    for slack, service in zip(backlog.slack_s, backlog.service_s):
        start = max(0.0, heapq.heappop(slots))
        if start > slack:
            missed += 1
        heapq.heappush(slots, start + service)
    return missed


def replicas_to_save_deadlines(backlog: Backlog, free_at_s: Sequence[float], cold_start_s: float,
                               capacity: int, room: int) -> tuple[int, int, int]:
    """(new replicas to start, misses without them, misses with them), with at most ``room`` new."""
    base = misses(backlog, free_at_s)
    best_k, best = 0, base
    if base == 0:
        return 0, 0, 0
    slots = list(free_at_s)
    for k in range(1, room + 1):
        slots += [cold_start_s] * capacity
        trial = misses(backlog, slots)
        if trial < best:
            best_k, best = k, trial
        if best == 0:
            break
    return best_k, base, best
