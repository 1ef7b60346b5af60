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

import bisect
import heapq
import math
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


def steady_for(backlog: Backlog, free_at_s: Sequence[float], counting_down: Sequence[bool], cold_start_s: float,
               capacity: int, room: int) -> float:
    """How long :func:`replicas_to_save_deadlines` keeps its answer if nothing happens meanwhile.

    As time passes with no event, every slack falls by the time passed, and so does each slot time
    that ``counting_down`` marks (a busy slot whose request's end is known, a starting replica),
    down to zero; the others stay (an idle slot, a busy one whose end is unknown, a new replica a
    cold start away). The replay compares values — slots with slots, a start with zero and with a
    slack — and a comparison between two values that fall together never changes. So the answer
    holds at least until a falling value could meet a fixed one below it: the least such gap among
    the values each replay the answer rests on (the base and the trials it ran) holds. A lower
    bound: the simulator asks again then (``Decision.review_at``), instead of every 0.1 s.
    """
    slots = list(zip(free_at_s, counting_down))
    best, gap = _replay(backlog, slots)
    for _ in range(room if best else 0):
        slots += [(cold_start_s, False)] * capacity
        trial, trial_gap = _replay(backlog, slots)
        best, gap = min(best, trial), min(gap, trial_gap)
        if best == 0:
            break
    return gap


def _replay(backlog: Backlog, slots: list[tuple[float, bool]]) -> tuple[int, float]:
    """:func:`misses` over ``slots`` ((time, falls with time) each), and the least gap from a falling
    value down to a fixed one among those its FIFO replay holds or compares."""
    if not backlog or not slots:
        return misses(backlog, []) if not slots else 0, math.inf  # the same whatever the time
    missed = 0
    falling: list[float] = []
    fixed: list[float] = [0.0]  # a start is never before now
    gap = math.inf
    heap = list(slots)
    heapq.heapify(heap)
    for value, falls in heap:
        (falling if falls else fixed).append(value)
    for slack, service in zip(backlog.slack_s, backlog.service_s):
        value, falls = heapq.heappop(heap)
        start, falls = (value, True) if falls and value > 0 else (max(0.0, value), False)
        if start > slack:
            missed += 1
        elif not falls:  # the slack falls towards a fixed start
            gap = min(gap, slack - start)
        heapq.heappush(heap, (start + service, falls))
        (falling if falls else fixed).append(start + service)
    fixed.sort()
    for value in falling:
        below = bisect.bisect_right(fixed, value)
        if below:
            gap = min(gap, value - fixed[below - 1])
    return missed, gap


def starts_that_can_wait(backlog: Backlog, free_at_s: Sequence[float], cold_start_s: float, margin_s: float,
                         capacity: int, new: int) -> tuple[int, float]:
    """Of ``new`` replicas the rules would start now, how many to leave unstarted, and for how long
    that answer holds if nothing happens meanwhile (``math.inf``: until something does).

    The burst rule starts a replica for each request it cannot see served, and a request arriving
    at an idle fleet gets a replica at once. The lower bound's replica lives
    (``scheduler/simulation/ordered_chains.py``) do neither: a life puts its first request off to
    its latest start, so that requests arriving meanwhile share its cold start, and no life starts
    that the queue can do without. This is the online form of both, in the FIFO replay of the
    deadline rule: a start waits where the replay with it ``margin_s`` later still answers every
    queued request in time, strictly within its slack; a start that serves no queued request in
    that replay waits until one arrives that needs it. While any queued request would miss even
    with every start at once, nothing waits: the replay's estimates are then wrong somewhere, and
    a replica started now is the best guard. A waiting start is asked about again when the least
    slack of the requests it would serve falls to its start (the caller's ``Decision.review_at``).
    """
    if not new or not backlog:
        return 0, math.inf
    if misses(backlog, list(free_at_s) + [cold_start_s] * capacity * new):
        return 0, math.inf
    slots = [(t, False) for t in free_at_s]
    for late in range(new, 0, -1):
        trial = (slots + [(cold_start_s, False)] * capacity * (new - late)
                 + [(cold_start_s + margin_s, True)] * capacity * late)
        missed, gap = _replay_late(backlog, trial)
        if not missed and gap > _SAME_INSTANT_S:
            return late, gap
    return 0, math.inf


_SAME_INSTANT_S = 1e-6  # a start this close to a request's slack no longer waits


def _replay_late(backlog: Backlog, slots: list[tuple[float, bool]]) -> tuple[int, float]:
    """:func:`misses` over ``slots`` ((time, started late) each), and the least slack left to a
    request that a late slot serves (``math.inf`` if they serve none)."""
    heap = [(value, late, i) for i, (value, late) in enumerate(slots)]
    heapq.heapify(heap)
    missed, gap = 0, math.inf
    for slack, service in zip(backlog.slack_s, backlog.service_s):
        value, late, i = heapq.heappop(heap)
        start = max(0.0, value)
        if start > slack:
            missed += 1
        if late:
            gap = min(gap, slack - start)
        heapq.heappush(heap, (start + service, late, i))
    return missed, gap
