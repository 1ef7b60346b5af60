"""Where a simulated run's replica-seconds go and its misses by cause (benchmarks/sim_breakdown.py):
tables of hand-built runs, and a real simulation whose views add up to its totals."""

from __future__ import annotations

import pytest

from benchmarks.sim_breakdown import (
    CAUSES,
    COLD_START,
    FROM_DISK,
    NOT_SERVED,
    QUEUED,
    STILL_STARTING,
    TOO_LONG,
    causes,
    describe,
    idle_starts,
    miss_causes,
    replica_seconds_by_fleet_size,
    replica_seconds_by_use,
    uses,
)
from scheduler.outcomes import Outcome
from scheduler.simulation.records import Replica, RequestRecord, SimResult


def _run(replicas: list[Replica], records: list[RequestRecord] = (), end_s: float = 100.0) -> SimResult:
    return SimResult("test", list(records), replicas, [], end_s, 0)


def _replica(rid: int, started: float, stopped: float | None, ready: float | None = None) -> Replica:
    return Replica(rid, started, started if ready is None else ready, 0.0, stopped_s=stopped)


@pytest.mark.parametrize(("intervals", "expected"), [
    ([(0, 10)], {1: 10.0}),
    ([(0, 10), (5, 15)], {1: 10.0, 2: 10.0}),  # 0-5 and 10-15 alone, 5-10 together
    ([(0, 10), (10, 20)], {1: 20.0}),  # one stops as the other starts: never two
    ([(0, 30), (10, 20), (10, 20)], {1: 20.0, 3: 30.0}),
    ([(0, None)], {1: 100.0}),  # still running at the end: paid to the end
    ([(0, 10), (50, 60)], {1: 20.0}),  # the fleet at zero in between costs nothing
])
def test_replica_seconds_by_fleet_size(intervals, expected) -> None:
    run = _run([_replica(i, a, b) for i, (a, b) in enumerate(intervals)])
    paid = replica_seconds_by_fleet_size(run)
    assert paid == pytest.approx(expected)
    assert sum(paid.values()) == pytest.approx(run.replica_seconds())


def test_replica_seconds_by_use() -> None:
    # replica 0 warm from 0, stopped at 60: a call of two requests at 10-20 s after a 3 s load (its
    # members count it once), one of 5 s at 30 s; replica 1 starts at 40, ready at 52, serves
    # nothing, stopped at 55; replica 2 starts at 80, ready at 90, still up at the end (100 s), one
    # call of 4 s at 90 s after a 1 s load
    replicas = [_replica(0, 0, 60), _replica(1, 40, 55, ready=52), _replica(2, 80, None, ready=90)]
    for r in replicas[1:]:
        r.cold_started = True
    calls = [(0, 7.0, 10.0, 3.0, 10.0), (0, 8.0, 10.0, 3.0, 10.0), (0, 29.0, 30.0, 0.0, 5.0), (2, 85.0, 91.0, 1.0, 4.0)]
    records = [RequestRecord(0, arrival, 1, outcome=Outcome.OK, done_s=start + call, start_s=start, replica=rid,
                             load_s=load, call_s=call) for rid, arrival, start, load, call in calls]
    records.append(RequestRecord(0, 41.0, 1, outcome=Outcome.SHED, done_s=41.0))  # never in a call
    run = _run(replicas, records)
    by_use = replica_seconds_by_use(run)
    assert by_use == pytest.approx({"cold starts": 12 + 10, "loads": 3 + 1, "calls": 10 + 5 + 4,
                                    "idle": (60 - 3 - 15) + (15 - 12) + (20 - 10 - 1 - 4)})
    assert sum(by_use.values()) == pytest.approx(run.replica_seconds())
    assert idle_starts(run) == 1  # replica 1; replica 0 was warm, replica 2 served a call
    said = uses({"replica_seconds_by_use": by_use, "starts_that_served_nothing": 1})
    assert said == "cold starts 22 (23 %), loads 4 (4 %), calls 19 (20 %), idle 50 (53 %) (1 starts served nothing)"
    assert uses({"replica_seconds_by_fleet_size": {}}) is None  # a result from before this view


def _record(arrival: float, done: float, replica: int | None = 0, start: float | None = None, load: float = 0.0,
            model_load: str | None = None, outcome: Outcome = Outcome.OK) -> RequestRecord:
    return RequestRecord(0, arrival, 1, outcome=outcome, done_s=done, start_s=start, replica=replica,
                         model_load=model_load, load_s=load)


# replica 0 ready since 0; replica 1 started at 50, ready at 70; SLO 30 s
@pytest.mark.parametrize(("record", "cause"), [
    (_record(10, 60, replica=None, outcome=Outcome.SHED), NOT_SERVED),
    (_record(10, 60, replica=0, outcome=Outcome.DEADLINE), NOT_SERVED),
    (_record(10, 50, start=45, load=35, model_load="disk"), FROM_DISK),  # waited too, but the read alone misses
    (_record(50, 90, replica=1, start=70), COLD_START),  # its replica started as it arrived
    (_record(60, 95, replica=1, start=70), STILL_STARTING),
    (_record(10, 50, start=30, load=2.8, model_load="host"), QUEUED),  # 17 s waiting for the slot
    (_record(10, 45, start=13, load=3.0, model_load="host"), TOO_LONG),  # no wait: load and call ran over
])
def test_miss_cause(record, cause) -> None:
    run = _run([_replica(0, 0, None), _replica(1, 50, None, ready=70)], [record])
    counts = miss_causes(run, 30.0)
    assert counts == {c: int(c == cause) for c in CAUSES}


def test_requests_in_time_are_no_misses() -> None:
    run = _run([_replica(0, 0, None)], [_record(10, 40, start=12), _record(20, 50.1, start=22)])
    assert sum(miss_causes(run, 30.0).values()) == 1


def test_describe_names_the_shares_and_causes() -> None:
    said = describe({"replica_seconds_by_fleet_size": {"1": 75.0, "2": 25.0},
                     "misses_by_cause": {FROM_DISK: 3, COLD_START: 1, QUEUED: 0}})
    assert said == ("75 % of the replica-seconds with one replica up, 25 % with two or more; "
                    "its 4 misses: 3 checkpoint from disk, 1 cold start")
    assert causes({"misses_by_cause": dict.fromkeys(CAUSES, 0)}) == "none"


def test_a_simulation_breaks_down_to_its_totals() -> None:
    """A real run: the fleet-size view adds up to its replica-seconds, the causes to its misses."""
    from benchmarks.simulate import summarize_result
    from scheduler.simulation.fleet import simulate
    from scheduler.simulation.policies import FixedFleet
    from scheduler.simulation.workload import FleetSpec, SimRequest

    requests = [SimRequest(arrival_s=float(t), n=1, timeout_s=60.0) for t in range(0, 200, 3)]
    spec = FleetSpec(initial_replicas=1, cold_start_s=20.0)
    result = simulate(requests, spec, lambda images, pixels, steps: 5.0, FixedFleet(1, "one"))  # 5 s a call
    summary = summarize_result(result, 10.0)
    view = summary["breakdown"]
    assert sum(view["replica_seconds_by_fleet_size"].values()) == pytest.approx(summary["replica_seconds"])
    assert sum(view["replica_seconds_by_use"].values()) == pytest.approx(summary["replica_seconds"])
    # calls of one request, 5 s each unless a deadline cut one short
    assert view["replica_seconds_by_use"]["calls"] == pytest.approx(sum(r.call_s or 0.0 for r in result.records))
    assert 0 < view["replica_seconds_by_use"]["calls"] <= 5.0 * len(result.records)
    assert view["replica_seconds_by_use"]["cold starts"] == 0.0 and view["starts_that_served_nothing"] == 0  # warm
    late = sum(1 for r in result.records if not (r.outcome == Outcome.OK and r.latency_s <= 10.0))
    assert late > 0 and sum(view["misses_by_cause"].values()) == late
    assert view["misses_by_cause"][QUEUED] > 0  # one replica, a request every 3 s: a queue builds
