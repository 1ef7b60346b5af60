"""The clairvoyant cost floor: what a policy that knows every arrival in advance would pay.

Every request starts on arrival (nobody waits), on a replica that was started exactly one cold
start before it was first needed. Between two uses a replica stays warm only if the gap is shorter
than a cold start; otherwise it stops and is restarted one cold start before its next use. Either
way a gap costs ``min(gap, cold_start)``, so one replica's bill is
``cold_start + Σ busy + Σ min(gap, cold_start)``.

Requests are placed on the replica that became free most recently (the smallest gap, hence the
least idle cost), opening a new replica only when all are busy: as many replicas as the peak
concurrency. Its replica-seconds are the floor for any policy that never makes a request wait.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass


@dataclass(frozen=True)
class ClairvoyantCost:
    replica_seconds: float
    replicas: int  # peak concurrency
    cold_starts: int  # first starts plus restarts after gaps longer than a cold start
    busy_seconds: float


def clairvoyant_cost(jobs: list[tuple[float, float]], cold_start_s: float) -> ClairvoyantCost:
    """``jobs``: (arrival, service seconds) pairs; every job runs alone, at once."""
    free_at: list[float] = []  # sorted times at which idle replicas became free
    busy_until: list[float] = []  # unsorted; the replicas still busy
    cost = busy = 0.0
    starts = replicas = 0
    for arrival, service in sorted(jobs):
        still_busy = []
        for end in busy_until:
            if end <= arrival:
                bisect.insort(free_at, end)
            else:
                still_busy.append(end)
        busy_until = still_busy
        k = bisect.bisect_right(free_at, arrival)
        if k:  # the replica free most recently
            gap = arrival - free_at.pop(k - 1)
            cost += min(gap, cold_start_s)
            starts += gap >= cold_start_s
        else:
            replicas += 1
            starts += 1
            cost += cold_start_s
        cost += service
        busy += service
        busy_until.append(arrival + service)
    return ClairvoyantCost(cost, replicas, starts, busy)
