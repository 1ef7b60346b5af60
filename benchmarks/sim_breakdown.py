"""Where a simulated run's replica-seconds go, and why its late requests were late (SIMULATION).

One point of SLO attainment and cost hides what a policy could change. Three views show it:

- **replica-seconds by fleet size**: what was paid while n replicas held a GPU at once. With one
  replica up the fleet mostly waits for the next request (keep-alive: it pays for not knowing when
  that comes); two or more follow bursts (scale-up, and how soon after one the fleet shrinks).
- **replica-seconds by use**: what the replicas did with the time they were paid for: starting (cold
  starts), loading checkpoints and adapters before calls, running calls, and idle (the rest), and how
  many replicas served nothing at all. Set beside the cost bounds it says which part a policy could
  still save: the calls are the same for every policy, the rest is the policy's.
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


#: What a replica's paid time went to (:func:`replica_seconds_by_use`), in the order reports give them.
USES = ("cold starts", "loads", "calls", "idle")


def replica_seconds_by_use(result: SimResult) -> dict[str, float]:
    """Each replica's paid time split into its cold start (started → ready), its calls' loads, its
    calls, and idle (the rest: waiting for work, or to be stopped); they add up to
    :meth:`SimResult.replica_seconds`. A call of several requests is counted once. Scored from a
    time on (:meth:`SimResult.from_time`), a call under way then is counted as idle."""
    stop = {r.id: r.stopped_s if r.stopped_s is not None else result.end_s for r in result.replicas}
    calls: dict[tuple[int, float], tuple[float, float]] = {}  # (replica, start) → (load, call)
    for record in result.records:
        if record.replica in stop and record.start_s is not None and record.call_s is not None:
            calls[(record.replica, record.start_s)] = (record.load_s, record.call_s)
    paid = sum(max(0.0, stop[r.id] - r.started_s) for r in result.replicas)
    cold = sum(max(0.0, min(r.ready_s, stop[r.id]) - r.started_s) for r in result.replicas)
    loads, running = sum(load for load, _ in calls.values()), sum(call for _, call in calls.values())
    return {"cold starts": cold, "loads": loads, "calls": running, "idle": max(0.0, paid - cold - loads - running)}


def idle_starts(result: SimResult) -> int:
    """Replicas started (in the run as scored) that served no call: the need they were started for
    was met by another, or went away."""
    served = {record.replica for record in result.records if record.start_s is not None}
    return sum(1 for r in result.replicas if r.cold_started and r.id not in served)


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
    """The three views, JSON-ready (fleet sizes as strings)."""
    return {"replica_seconds_by_fleet_size": {str(n): s for n, s in replica_seconds_by_fleet_size(result).items()},
            "replica_seconds_by_use": replica_seconds_by_use(result), "starts_that_served_nothing": idle_starts(result),
            "misses_by_cause": miss_causes(result, slo_s)}


def fleet_shares(view: dict[str, dict]) -> str:
    """The shares of the replica-seconds paid with one replica up and with two or more."""
    paid = {int(n): s for n, s in view["replica_seconds_by_fleet_size"].items()}
    total = sum(paid.values()) or 1.0
    one = paid.get(1, 0.0)
    return (f"{100 * one / total:.0f} % of the replica-seconds with one replica up, "
            f"{100 * (total - one) / total:.0f} % with two or more")


def uses(view: dict[str, dict]) -> str | None:
    """The shares of the replica-seconds by use, and the starts that served nothing (None for results
    made before this view)."""
    by_use = view.get("replica_seconds_by_use")
    if not by_use:
        return None
    total = sum(by_use.values()) or 1.0
    return (", ".join(f"{use} {by_use[use]:,.0f} ({100 * by_use[use] / total:.0f} %)" for use in USES)
            + f" ({view.get('starts_that_served_nothing', 0):,} starts served nothing)")


def causes(view: dict[str, dict]) -> str:
    """The misses' causes that occurred, commonest first ("none" when nothing missed)."""
    misses = sorted(((n, cause) for cause, n in view["misses_by_cause"].items() if n), key=lambda m: -m[0])
    return ", ".join(f"{n} {cause}" for n, cause in misses) or "none"


def describe(view: dict[str, dict]) -> str:
    """One sentence: the shares paid with one replica up and with more, the replica-seconds by use
    (when the result has them), and the misses by cause."""
    by_use = uses(view)
    return (f"{fleet_shares(view)}; " + (f"by use: {by_use}; " if by_use else "")
            + f"its {sum(view['misses_by_cause'].values())} misses: {causes(view)}")
