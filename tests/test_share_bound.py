"""The bound for serving a share of the requests within the SLO (``share_lower_bound``): what a
policy with that SLO attainment cannot pay less than, checked against the exact optimum over every
subset that large, against simulated policies at their own attainment, and on hand-computed traces."""

from __future__ import annotations

import itertools
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scheduler.autoscaling import AutoscalerConfig
from scheduler.outcomes import Outcome
from scheduler.simulation.bounds import BoundJob, chain_lower_bound, jobs_for, request_jobs, share_lower_bound
from scheduler.simulation.fleet import simulate
from scheduler.simulation.policies import FixedFleet, RayControlled, SdserveLoop
from scheduler.simulation.ray_autoscaler import RayAutoscalingConfig
from scheduler.simulation.workload import FleetSpec, SimRequest
from tests.test_bounds import LOADS, optimum, small_model_traces, small_traces


def _no_wait(trace: list[tuple[float, float]]) -> list[BoundJob]:
    """Requests that may not wait: each window is its call on arrival."""
    return sorted((BoundJob(a, s, a, a + s, a + s) for a, s in trace), key=lambda j: j.arrival)


def _best_share(jobs: list[BoundJob], cold: float, share: float, loads=None) -> float:
    """The cheapest schedule that serves at least ``share`` of ``jobs`` within their windows (the
    others shed): the exact optimum of every subset that large."""
    needed = math.ceil(share * len(jobs) - 1e-9)
    return min((optimum(list(subset), cold, loads) if subset else 0.0)
               for size in range(needed, len(jobs) + 1) for subset in itertools.combinations(jobs, size))


SESSION_AND_A_STRAY = [(float(t), 1.0) for t in range(5)] + [(1000.0, 1.0)]


@pytest.mark.parametrize(("share", "expected"), [
    (1.0, 10 + 5 + 10 + 1),  # two lives: the session's and the stray's
    (5 / 6, 10 + 5),  # the stray left out: it costs a life of its own
    # four of six: leaving one call of the session out saves 1 s (the exact optimum: 14), but the
    # relaxation may serve four fifths of the session's life (15) and pay four fifths of it
    (4 / 6, 0.8 * 15),
    (0.0, 0.0),
])
def test_leaving_out_the_dearest_requests_on_a_hand_computed_trace(share: float, expected: float) -> None:
    """Five calls back to back and one alone 1000 s later; cold start 10 s, 1 s calls, no waiting."""
    assert share_lower_bound(_no_wait(SESSION_AND_A_STRAY), 10.0, share) == pytest.approx(expected)


@settings(max_examples=60, deadline=None)
@given(trace=small_traces, cold=st.floats(1, 20), slo=st.sampled_from([0.0, 5.0, 15.0, 30.0]),
       share=st.sampled_from([0.3, 0.5, 0.8, 1.0]))
def test_the_share_bound_lies_under_the_cheapest_schedule_of_every_large_enough_subset(trace, cold, slo, share) -> None:
    jobs = jobs_for(trace, slo)
    assert share_lower_bound(jobs, cold, share) <= _best_share(jobs, cold, share) + 1e-6


@settings(max_examples=40, deadline=None)
@given(trace=small_model_traces, cold=st.floats(1, 20), slo=st.sampled_from([5.0, 15.0, 30.0]),
       share=st.sampled_from([0.5, 0.8]))
def test_with_loads_the_share_bound_lies_under_the_cheapest_schedule(trace, cold, slo, share) -> None:
    jobs = sorted((BoundJob(a, s, a + max(0.0, slo - s), a + max(slo, s), a + s, model, loras)
                   for a, s, model, loras in trace), key=lambda j: j.arrival)
    assert share_lower_bound(jobs, cold, share, loads=LOADS) <= _best_share(jobs, cold, share, LOADS) + 1e-6


@settings(max_examples=20, deadline=None)
@given(trace=small_model_traces, cold=st.floats(1, 20), slo=st.sampled_from([5.0, 30.0]), warm=st.integers(0, 2))
def test_serving_every_request_is_the_lower_bound_and_a_smaller_share_never_costs_more(trace, cold, slo, warm) -> None:
    jobs = sorted((BoundJob(a, s, a + max(0.0, slo - s), a + max(slo, s), a + s, model, loras)
                   for a, s, model, loras in trace), key=lambda j: j.arrival)
    whole = chain_lower_bound(jobs, cold, warm, LOADS)
    assert share_lower_bound(jobs, cold, 1.0, warm, LOADS) == pytest.approx(whole, rel=1e-6, abs=1e-6)
    bounds = [share_lower_bound(jobs, cold, share, warm, LOADS) for share in (0.0, 0.25, 0.5, 0.75, 1.0)]
    assert all(a <= b + 1e-6 for a, b in zip(bounds, bounds[1:])), bounds


@settings(max_examples=12, deadline=None)
@given(trace=st.lists(st.tuples(st.floats(0, 200), st.integers(1, 3)), min_size=1, max_size=25),
       cold=st.sampled_from([3.0, 12.0]))
def test_no_simulated_policy_pays_less_than_the_bound_for_the_share_it_served_in_time(trace, cold) -> None:
    """Each policy, whatever share it answered within the SLO, pays at least the bound for that share
    (the bound for every request need not hold: shedding or answering late is cheaper)."""
    slo = 10.0
    service = lambda images, pixels, steps: 0.5 + 3.0 * images  # noqa: E731
    requests = [SimRequest(arrival_s=a, n=n, timeout_s=60.0) for a, n in sorted(trace)]
    spec = FleetSpec(cold_start_s=cold, gpu_slots=2, max_ongoing_requests=1)
    policies = [SdserveLoop("sdserve", AutoscalerConfig(max_replicas=2)),
                RayControlled("ray", RayAutoscalingConfig(max_replicas=2, upscale_delay_s=2.0, downscale_delay_s=5.0)),
                FixedFleet(1, "fixed-1")]
    jobs = request_jobs(requests, service, slo)
    for policy in policies:
        result = simulate(requests, spec, service, policy)
        in_time = sum(r.outcome == Outcome.OK and r.latency_s <= slo for r in result.records) / len(requests)
        assert share_lower_bound(jobs, cold, in_time) <= result.replica_seconds() + 1e-6, policy.name


def test_a_share_outside_0_to_1_and_batched_calls_are_refused() -> None:
    jobs = _no_wait(SESSION_AND_A_STRAY)
    with pytest.raises(ValueError, match="share"):
        share_lower_bound(jobs, 10.0, 1.5)
    batched = jobs_for([(0.0, 1.0), (0.5, 1.0)], 10.0, batched=True)
    with pytest.raises(ValueError, match="batched"):
        share_lower_bound(batched, 10.0, 0.5)
