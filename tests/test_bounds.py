"""The cost bounds: the lower bound is never above any schedule's cost (brute force on tiny traces,
every simulated policy), the offline schedule is a schedule (never below the optimum)."""

from __future__ import annotations

import itertools
import math

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from scheduler.autoscaling import AutoscalerConfig
from scheduler.outcomes import Outcome
from scheduler.simulation.bounds import (
    BoundJob,
    best_offline_schedule,
    busy_time,
    chain_lower_bound,
    jobs_for,
    jobs_served,
    offline_schedule,
    request_jobs,
)
from scheduler.simulation.fleet import simulate
from scheduler.simulation.policies import FixedFleet, RayControlled, SdserveLoop
from scheduler.simulation.ray_autoscaler import RayAutoscalingConfig
from scheduler.simulation.workload import FleetSpec, SimRequest


def _chain_cost(chain: tuple[BoundJob, ...], cold_start_s: float) -> float:
    """The cheapest life of one replica that runs ``chain`` in this order (math.inf: infeasible).
    Its cost, cold start + last end − first start, falls as the first start moves later, so the
    first starts as late as every request still starts within its window."""
    before = list(itertools.accumulate((j.service for j in chain), initial=0.0))  # service ahead of each
    first = min(j.latest_start - before[k] for k, j in enumerate(chain))
    if first < chain[0].arrival - 1e-9:
        return math.inf
    first = max(first, chain[0].arrival)
    t = first
    for job in chain:
        t = max(t, job.arrival)
        if t > job.latest_start + 1e-9:
            return math.inf
        t += job.service
    return cold_start_s + t - first


def _partitions(items: list[int]):
    if not items:
        yield []
        return
    head, rest = items[0], items[1:]
    for part in _partitions(rest):
        yield [[head], *part]
        for k in range(len(part)):
            yield [*part[:k], [head, *part[k]], *part[k + 1:]]


def optimum(jobs: list[BoundJob], cold_start_s: float) -> float:
    """The cheapest schedule of ``jobs`` (no GPU cap), by trying every split into replica lives and
    every order within each."""
    best = math.inf
    for part in _partitions(list(range(len(jobs)))):
        cost = 0.0
        for block in part:
            cost += min(_chain_cost(tuple(jobs[i] for i in order), cold_start_s)
                        for order in itertools.permutations(block))
            if cost >= best:
                break
        best = min(best, cost)
    return best


small_traces = st.lists(st.tuples(st.floats(0, 80), st.floats(0.5, 8)), min_size=1, max_size=6)


@settings(max_examples=80, deadline=None)
@given(trace=small_traces, cold=st.floats(1, 20), slo=st.sampled_from([0.0, 5.0, 15.0, 30.0]))
def test_the_optimum_lies_between_the_lower_bound_and_the_offline_schedule(trace, cold, slo) -> None:
    jobs = jobs_for(trace, slo)
    best = optimum(jobs, cold)
    assert busy_time(jobs) <= chain_lower_bound(jobs, cold) + 1e-6
    assert chain_lower_bound(jobs, cold) <= best + 1e-6
    schedule = best_offline_schedule(jobs, cold)
    if schedule.late == 0:
        assert best <= schedule.replica_seconds + 1e-6


@settings(max_examples=60, deadline=None)
@given(trace=small_traces, cold=st.floats(1, 20))
# one request ends a float's rounding (2e-16 s) after the next must start: chainable, as the optimum says
@example(trace=[(1.0, 1.0), (2.220446049250313e-16, 1.0)], cold=1.0)
def test_without_waiting_the_lower_bound_is_the_optimum(trace, cold) -> None:
    """SLO equal to each service time: nobody may wait, and the bound is exact."""
    jobs = [BoundJob(a, s, a, a + s, a + s) for a, s in trace]
    assert chain_lower_bound(jobs, cold) == pytest.approx(optimum(sorted(jobs, key=lambda j: j.arrival), cold))


def test_bounds_on_a_hand_computed_trace() -> None:
    # cold start 10 s, SLO 8 s: jobs (arrival, service) (0, 4), (2, 4), (30, 2)
    jobs = jobs_for([(0.0, 4.0), (2.0, 4.0), (30.0, 2.0)], slo_s=8.0)
    # (0,4) then (2,4) on one replica: the second waits 2 s, within its 4 s → saves a cold start;
    # (30,2) comes 22 s after the latest end (8 s) of the second: a cold start of its own
    assert chain_lower_bound(jobs, 10.0) == pytest.approx(3 * 10 + 10 - 10)
    schedule = offline_schedule(jobs, 10.0, gpus=1)
    assert (schedule.replica_seconds, schedule.cold_starts, schedule.replicas, schedule.late) == (30.0, 2, 1, 0)


def test_the_gpu_cap_holds_in_the_offline_schedule_and_makes_requests_late() -> None:
    # three 10 s jobs at once, 2 s of slack each: three replicas, or late ones under a cap of 2
    jobs = jobs_for([(0.0, 10.0)] * 3, slo_s=12.0)
    assert offline_schedule(jobs, 5.0).replicas == 3
    capped = offline_schedule(jobs, 5.0, gpus=2)
    assert (capped.replicas, capped.late) == (2, 1)


def test_a_batched_request_costs_its_share_of_the_most_efficient_call() -> None:
    service = lambda images, pixels, steps: 2.0 + images  # noqa: E731 — 3 s alone, 1.5 s a share of 4
    requests = [SimRequest(arrival_s=0.0, n=1), SimRequest(arrival_s=0.0, n=2)]
    assert busy_time(request_jobs(requests, service, 30.0)) == pytest.approx(3.0 + 4.0)
    assert busy_time(request_jobs(requests, service, 30.0, max_batch_size=2)) == pytest.approx(1.5 + 3.0)


def _policies(cold: float):
    yield SdserveLoop("sdserve", AutoscalerConfig(max_replicas=3))
    yield SdserveLoop("sdserve-fixed", AutoscalerConfig(max_replicas=3, keep_alive="fixed", scale_to_zero_after_s=5))
    yield RayControlled("ray", RayAutoscalingConfig(max_replicas=3, upscale_delay_s=2.0, downscale_delay_s=5.0))
    yield FixedFleet(2, "fixed-2")


@settings(max_examples=25, deadline=None)
@given(trace=st.lists(st.tuples(st.floats(0, 120), st.integers(1, 3)), min_size=1, max_size=25),
       batch=st.sampled_from([1, 4]), cold=st.sampled_from([3.0, 12.0]), per_image=st.sampled_from([0.5, 3.0]))
@example(trace=[(0.0, 1), (0.01, 1), (0.02, 1), (0.03, 1)], batch=4, cold=12.0, per_image=3.0)  # one call of four
def test_no_simulated_policy_costs_less_than_the_lower_bound(trace, batch, cold, per_image) -> None:
    """Over what each policy ran, within the windows it kept; and, if it answered every request
    within the SLO, over the windows every SLO-meeting schedule keeps."""
    slo = 20.0
    service = lambda images, pixels, steps: 0.5 + per_image * images  # noqa: E731
    requests = [SimRequest(arrival_s=a, n=n, timeout_s=60.0) for a, n in sorted(trace)]
    spec = FleetSpec(max_batch_size=batch, max_ongoing_requests=2 * batch, cold_start_s=cold, gpu_slots=3,
                     shed_hopeless=False)
    for policy in _policies(cold):
        result = simulate(requests, spec, service, policy)
        paid = result.replica_seconds()
        served = jobs_served(result.records, batched=batch > 1)
        assert chain_lower_bound(served, cold) <= paid + 1e-6, policy.name
        if all(r.outcome == Outcome.OK and r.latency_s <= slo for r in result.records):
            bound = chain_lower_bound(request_jobs(requests, service, slo, max_batch_size=batch), cold)
            assert bound <= paid + 1e-6, policy.name
        # scored after a warm-up: each replica running then spares at most one cold start
        scored = result.from_time(60.0)
        warm = result.alive_at(60.0)
        assert chain_lower_bound(jobs_served(scored.records, batched=batch > 1), cold, warm) <= scored.replica_seconds() + 1e-6
