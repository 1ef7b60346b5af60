"""Where a simulated run's replica-seconds go, and why its late requests were late (SIMULATION).

One point of SLO attainment and cost hides what a policy could change. Two views show it:

- **replica-seconds by fleet size**: what was paid while n replicas held a GPU at once. With one
  replica up the fleet mostly waits for the next request (keep-alive: it pays for not knowing when
  that comes); two or more follow bursts (scale-up, and how soon after one the fleet shrinks).
- **misses by cause**: each request that was not served within the SLO, by the first cause that
  applies, in this order: not served (shed, expired); its checkpoint read from disk (a read that
  alone may outlast the SLO, which no keep-alive avoids: only what the node's memory holds does);
  its replica started after it arrived (a cold start); its replica was still starting; it waited
  behind other calls; its own loads and call alone ran over.
"""

from __future__ import annotations

from collections import Counter
from itertools import accumulate

from scheduler.outcomes import Outcome
from scheduler.simulation.models import DISK
from scheduler.simulation.records import SimResult

#: Miss causes, in the order they are tried (the first that applies names the miss).
NOT_SERVED, FROM_DISK, COLD_START, STILL_STARTING, QUEUED, TOO_LONG = (
    "not served", "checkpoint from disk", "cold start", "replica still starting", "queued behind calls",
    "loads and call")
CAUSES = (NOT_SERVED, FROM_DISK, COLD_START, STILL_STARTING, QUEUED, TOO_LONG)


def replica_seconds_by_fleet_size(result: SimResult) -> dict[int, float]:
    """Replica-seconds paid while n replicas held a GPU, for each n ≥ 1; they add up to
    :meth:`SimResult.replica_seconds`."""
    changes: Counter[float] = Counter()
    for r in result.replicas:
        stopped = r.stopped_s if r.stopped_s is not None else result.end_s
        if stopped > r.started_s:
            changes[r.started_s] += 1
            changes[stopped] -= 1
    times = sorted(changes)
    alive = list(accumulate(changes[t] for t in times))
    paid: Counter[int] = Counter()
    for t, n, later in zip(times, alive, times[1:]):
        if n:
            paid[n] += n * (later - t)
    return dict(sorted(paid.items()))


def miss_causes(result: SimResult, slo_s: float) -> dict[str, int]:
    """The requests not served within ``slo_s``, counted by cause (:data:`CAUSES`, none left out)."""
    replicas = {r.id: r for r in result.replicas}
    counts = dict.fromkeys(CAUSES, 0)
    for record in result.records:
        if record.outcome == Outcome.OK and record.latency_s <= slo_s:
            continue
        replica = replicas.get(record.replica) if record.replica is not None else None
        if record.outcome != Outcome.OK or replica is None:
            cause = NOT_SERVED
        elif record.model_load == DISK:
            cause = FROM_DISK
        elif replica.started_s >= record.arrival_s:
            cause = COLD_START
        elif replica.ready_s > record.arrival_s:
            cause = STILL_STARTING
        elif (record.queue_wait_s or 0.0) - record.load_s > 1e-6:
            cause = QUEUED
        else:
            cause = TOO_LONG
        counts[cause] += 1
    return counts


def breakdown(result: SimResult, slo_s: float) -> dict[str, dict]:
    """Both views, JSON-ready (fleet sizes as strings)."""
    return {"replica_seconds_by_fleet_size": {str(n): s for n, s in replica_seconds_by_fleet_size(result).items()},
            "misses_by_cause": miss_causes(result, slo_s)}


def fleet_shares(view: dict[str, dict]) -> str:
    """The shares of the replica-seconds paid with one replica up and with two or more."""
    paid = {int(n): s for n, s in view["replica_seconds_by_fleet_size"].items()}
    total = sum(paid.values()) or 1.0
    one = paid.get(1, 0.0)
    return (f"{100 * one / total:.0f} % of the replica-seconds with one replica up, "
            f"{100 * (total - one) / total:.0f} % with two or more")


def causes(view: dict[str, dict]) -> str:
    """The misses' causes that occurred, commonest first ("none" when nothing missed)."""
    misses = sorted(((n, cause) for cause, n in view["misses_by_cause"].items() if n), key=lambda m: -m[0])
    return ", ".join(f"{n} {cause}" for n, cause in misses) or "none"


def describe(view: dict[str, dict]) -> str:
    """One sentence: the shares paid with one replica up and with more, and the misses by cause."""
    return f"{fleet_shares(view)}; its {sum(view['misses_by_cause'].values())} misses: {causes(view)}"
