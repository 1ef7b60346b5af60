"""The online schedule (``scheduler/simulation/offline.py``, ``online=True``): the offline schedule's
rules without hindsight of arrivals. It keeps no replica through a gap and starts none before its
request arrives, so hindsight's savings show as its extra cost and late requests."""

from __future__ import annotations

import pytest

from benchmarks.sim_bounds import bounds_row, describe_bounds
from scheduler.simulation.bounds import BoundJob, LoadTimes, jobs_for
from scheduler.simulation.offline import offline_schedule
from scheduler.simulation.workload import FleetSpec, SimRequest


def test_a_replica_is_not_kept_through_a_gap_without_hindsight() -> None:
    # cold start 10 s, SLO 2 s (no waiting): calls of 1 s at 20 s and 25 s. Hindsight starts the
    # replica at 10 s and keeps it through the 4 s gap; online, the first cannot be served in time
    # (its replica starts when it arrives) and the second finds the replica stopped
    jobs = jobs_for([(20.0, 1.0), (25.0, 1.0)], slo_s=2.0)
    offline = offline_schedule(jobs, 10.0)
    assert (offline.replica_seconds, offline.cold_starts, offline.late) == (10 + 1 + 4 + 1, 1, 0)
    online = offline_schedule(jobs, 10.0, online=True)
    assert (online.replica_seconds, online.cold_starts, online.late) == (2 * (10 + 1), 2, 2)


@pytest.mark.parametrize(("delay", "starts", "replica_s", "latencies"), [
    (0.0, 2, 2 * (10 + 1), (11, 11)),  # the first call at 10 s, over by 25 s: the second starts its own
    (1.0, 1, 10 + 1 + 1, (30, 6)),  # the first put off to 29 s; the second, at 25 s, queues behind it
])
def test_putting_a_start_off_lets_a_later_request_share_it(delay: float, starts: int, replica_s: float,
                                                           latencies: tuple[float, float]) -> None:
    # cold start 10 s, SLO 30 s, calls of 1 s at 0 s and 25 s
    jobs = jobs_for([(0.0, 1.0), (25.0, 1.0)], slo_s=30.0)
    online = offline_schedule(jobs, 10.0, delay=delay, online=True)
    assert (online.cold_starts, online.replica_seconds, online.late) == (starts, pytest.approx(replica_s), 0)
    # what the saving costs the requests: putting the start off is waiting, sharing it queueing
    assert (online.p50_s, online.p99_s) == (pytest.approx(sum(latencies) / 2), pytest.approx(
        min(latencies) + 0.99 * abs(latencies[0] - latencies[1])))


def test_a_request_that_finds_work_under_way_queues_behind_it_and_pays_its_loads() -> None:
    # cold start 10 s, SLO 30 s, checkpoint loads 2 s, adapters 3 s: a (with adapter x) at 0 s and
    # b at 1 s, 4 s calls; the replica started for a is still at work when b comes, so b follows
    # it after loading its checkpoint, and the replica stops when b is done
    loads = LoadTimes(checkpoint_s=2.0, disk_s=30.0, lora_s=3.0, models_per_replica=2, loras_per_replica=4)
    jobs = [BoundJob(0.0, 4.0, 26.0, 30.0, 4.0, "a", ("x",)), BoundJob(1.0, 4.0, 27.0, 31.0, 5.0, "b", ())]
    online = offline_schedule(jobs, 10.0, gpus=1, loads=loads, online=True)
    assert (online.cold_starts, online.loads, online.lora_loads, online.late) == (1, 1, 1, 0)
    assert online.replica_seconds == pytest.approx(10 + 3 + 4 + 2 + 4)


def test_the_bounds_report_gives_the_online_schedule_at_each_delay() -> None:
    # cold start 10 s, SLO 30 s, calls of 2 s at 0 s and 15 s: put off by half its window or more,
    # the first request's replica is still at work when the second comes, and one start serves both
    service = lambda images, pixels, steps: 2.0  # noqa: E731
    requests = [SimRequest(arrival_s=0.0), SimRequest(arrival_s=15.0)]
    row = bounds_row(requests, service, FleetSpec(cold_start_s=10.0, gpu_slots=2), 30.0)
    assert [(ref["delay"], ref["cold_starts"], ref["late"]) for ref in row["online_schedule"]] == [
        (0.0, 2, 0), (0.25, 2, 0), (0.5, 1, 0), (0.75, 1, 0), (1.0, 1, 0)]
    text = describe_bounds("batch 1", row, len(requests))
    assert "**online schedule**" in text and "| 0.5 of the window | 14 | " in text
    # put off by half its window (14 s), the first ends at 16 s; the second queues behind it to 18 s
    half = next(ref for ref in row["online_schedule"] if ref["delay"] == 0.5)
    assert (half["p50_s"], half["p99_s"]) == (pytest.approx(3 + 0.5 * 13), pytest.approx(3 + 0.99 * 13))
    assert "| 100.00 % | 9.5 / 15.9 | 1 |" in text
    # hindsight's cheapest schedule (the first of the least costly put-offs) is the same: one start
    # shared by putting the first off, paid for in latency
    assert (row["offline_p50_s"], row["offline_p99_s"]) == (half["p50_s"], half["p99_s"])
    assert "the offline schedule's latency p50 / p99 9.5 / 15.9 s" in text
