"""The cost bounds: the lower bound is never above any schedule's cost (brute force on tiny traces,
every simulated policy), the offline and online schedules are schedules (never below the optimum)."""

from __future__ import annotations

import dataclasses
import itertools
import math

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from benchmarks.sim_bounds import from_cold_start_misses, keep_alive_reference, load_times
from scheduler.autoscaling import AutoscalerConfig
from scheduler.outcomes import Outcome
from scheduler.simulation.bounds import (
    BoundJob,
    LoadTimes,
    busy_time,
    chain_lower_bound,
    jobs_for,
    jobs_served,
    request_jobs,
)
from scheduler.simulation.fleet import simulate
from scheduler.simulation.offline import best_offline_schedule, offline_schedule, online_schedules
from scheduler.simulation.policies import FixedFleet, RayControlled, SdserveLoop
from scheduler.simulation.ray_autoscaler import RayAutoscalingConfig
from scheduler.simulation.workload import FleetSpec, SimRequest


def _chain_loads(chain: tuple[BoundJob, ...], loads: LoadTimes | None) -> list[float]:
    """What each request of ``chain`` loads on one replica that keeps everything it loaded (more
    generous than any budget): the first, its adapters (the cold start brought its checkpoint); a
    later one, its checkpoint and adapters unless an earlier one of the chain loaded them."""
    if loads is None:
        return [0.0] * len(chain)
    held: set[tuple[str, str]] = {(chain[0].model, "")}
    out = []
    for job in chain:
        needed = {(job.model, "")} | {(job.model, a) for a in job.adapters}
        out.append(sum(loads.lora_s if a else loads.checkpoint_s for _, a in needed - held))
        held |= needed
    return out


def _chain_cost(chain: tuple[BoundJob, ...], cold_start_s: float, loads: LoadTimes | None = None) -> float:
    """The cheapest life of one replica that runs ``chain`` in this order (math.inf: infeasible).
    Each request's loads come before its call, at any time after the one before (even before it
    arrives: hindsight); each call starts within its window. The life costs its cold start plus the
    time from its first load (or call) to its last call's end, which falls as that start moves later:
    so it starts as late as every call still starts within its window."""
    extra = _chain_loads(chain, loads)
    begin = math.inf  # working back from the last: the latest its loads may begin
    for job, x in zip(reversed(chain), reversed(extra)):
        begin = min(job.latest_start, begin - job.service) - x
    t = begin
    for job, x in zip(chain, extra):
        t = max(t + x, job.arrival)
        if t > job.latest_start + 1e-9:
            return math.inf
        t += job.service
    return cold_start_s + t - begin


def _partitions(items: list[int]):
    if not items:
        yield []
        return
    head, rest = items[0], items[1:]
    for part in _partitions(rest):
        yield [[head], *part]
        for k in range(len(part)):
            yield [*part[:k], [head, *part[k]], *part[k + 1:]]


def optimum(jobs: list[BoundJob], cold_start_s: float, loads: LoadTimes | None = None) -> float:
    """The cheapest schedule of ``jobs`` (no GPU cap; with ``loads``, replicas that keep all they
    load), by trying every split into replica lives and every order within each."""
    best = math.inf
    for part in _partitions(list(range(len(jobs)))):
        cost = 0.0
        for block in part:
            cost += min(_chain_cost(tuple(jobs[i] for i in order), cold_start_s, loads)
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
    for _, online in online_schedules(jobs, cold):
        assert online.late > 0 or best <= online.replica_seconds + 1e-6


@settings(max_examples=60, deadline=None)
@given(trace=small_traces, cold=st.floats(1, 20))
# one request ends a float's rounding (2e-16 s) after the next must start: chainable, as the optimum says
@example(trace=[(1.0, 1.0), (2.220446049250313e-16, 1.0)], cold=1.0)
def test_without_waiting_the_lower_bound_is_the_optimum(trace, cold) -> None:
    """SLO equal to each service time: nobody may wait, and the bound is exact."""
    jobs = [BoundJob(a, s, a, a + s, a + s) for a, s in trace]
    assert chain_lower_bound(jobs, cold) == pytest.approx(optimum(sorted(jobs, key=lambda j: j.arrival), cold))


LOADS = LoadTimes(checkpoint_s=2.0, disk_s=30.0, lora_s=3.0, models_per_replica=2, loras_per_replica=4)
small_model_traces = st.lists(st.tuples(st.floats(0, 80), st.floats(0.5, 8), st.sampled_from("ab"),
                                        st.sampled_from([(), ("x",), ("x", "y")])), min_size=1, max_size=6)


@settings(max_examples=80, deadline=None)
@given(trace=small_model_traces, cold=st.floats(1, 20), slo=st.sampled_from([5.0, 15.0, 30.0]),
       warm=st.integers(0, 2))
def test_with_loads_the_optimum_lies_between_the_lower_bound_and_the_offline_schedule(trace, cold, slo, warm) -> None:
    jobs = sorted((BoundJob(a, s, a + max(0.0, slo - s), a + max(slo, s), a + s, model, loras)
                   for a, s, model, loras in trace), key=lambda j: j.arrival)
    best = optimum(jobs, cold, LOADS)
    assert chain_lower_bound(jobs, cold, loads=LOADS) <= best + 1e-6
    assert chain_lower_bound(jobs, cold, warm, LOADS) <= chain_lower_bound(jobs, cold, loads=LOADS)
    schedule = best_offline_schedule(jobs, cold, loads=LOADS)
    if schedule.late == 0:
        assert best <= schedule.replica_seconds + 1e-6
    for _, online in online_schedules(jobs, cold, loads=LOADS):
        assert online.late > 0 or best <= online.replica_seconds + 1e-6


def test_each_life_s_first_request_pays_its_adapters() -> None:
    # cold start 10 s, SLO 30 s, adapters 3 s: two requests 100 s apart, each a life of its own
    apart = [BoundJob(0.0, 4.0, 26.0, 30.0, 4.0, "a", ("x",)), BoundJob(100.0, 4.0, 126.0, 130.0, 104.0, "a", ("x",))]
    assert chain_lower_bound(apart, 10.0) == pytest.approx(2 * (10 + 4))
    assert chain_lower_bound(apart, 10.0, loads=LOADS) == pytest.approx(2 * (10 + 3 + 4))
    # one running when the trace starts spares the dearer life's start: the cold start and its adapters
    assert chain_lower_bound(apart, 10.0, warm=1, loads=LOADS) == pytest.approx(10 + 3 + 4 + 4)
    # the first may not wait; the second comes 5 s later and follows it on its replica (idle 1 s at
    # least), where the bound lets it find its adapter: charged nothing more than its call
    close = [BoundJob(0.0, 4.0, 0.0, 4.0, 4.0, "a", ("x",)), BoundJob(5.0, 4.0, 31.0, 35.0, 9.0, "b", ("y",))]
    assert chain_lower_bound(close, 10.0, loads=LOADS) == pytest.approx(10 + 3 + 4 + 1 + 4)


def test_each_life_has_a_first_request_that_pays_its_start() -> None:
    # cold start 20 s, SLO 30 s: two 5 s requests at once share one replica (the second waits 5 s),
    # which starts once; pairing them freely would let each follow the other and start none
    together = jobs_for([(0.0, 5.0), (0.0, 5.0)], 30.0)
    assert chain_lower_bound(together, 20.0) == pytest.approx(20 + 5 + 5) == pytest.approx(optimum(together, 20.0))


def test_a_later_request_is_late_only_by_what_its_predecessor_carried() -> None:
    # cold start 22.7 s, SLO 30 s: 5 s requests at 0, 50 and 100 s. The first may start at 25 s and
    # end at 30 s, so the second (arriving at 50 s) follows it after 20 s idle, a saving; but the
    # second starts on arrival and ends at 55 s, so the third would follow after 45 s idle, more than
    # a cold start: two lives, 22.7 + 5 + 20 + 5 and 22.7 + 5
    spaced = jobs_for([(0.0, 5.0), (50.0, 5.0), (100.0, 5.0)], 30.0)
    assert chain_lower_bound(spaced, 22.7) == pytest.approx(52.7 + 27.7) == pytest.approx(optimum(spaced, 22.7))
    # a burst carries a delay over: at 0 and 1 s, then at 40 s; the second ends by 31 s (the first
    # at 21–26 s, the second after it), so the third follows after 9 s idle
    burst = jobs_for([(0.0, 5.0), (1.0, 5.0), (40.0, 5.0)], 30.0)
    assert chain_lower_bound(burst, 22.7) == pytest.approx(22.7 + 15 + 9) == pytest.approx(optimum(burst, 22.7))


def test_a_request_served_before_an_earlier_arrival_may_start_its_life() -> None:
    # the windows a policy kept (each request by its own start and end), one served out of arrival
    # order: the one that arrived at 1 s ran at 2–7 s, the one that arrived at 0 s at 10–15 s. The
    # swap to arrival order would end the first later than it ended: so the later arrival may be the
    # first of a life here, and one life (cold start 20 s, calls 2–7 s and 7–12 s at best) serves both
    kept = [BoundJob(0.0, 5.0, 10.0, 15.0, 5.0), BoundJob(1.0, 5.0, 2.0, 7.0, 6.0)]
    assert chain_lower_bound(kept, 20.0) == pytest.approx(20 + 10) == pytest.approx(optimum(kept, 20.0))


def test_the_offline_schedule_pays_what_its_replica_loads() -> None:
    # one replica, requests for a, b, a, each after the last ends: two checkpoints held, b loads
    # once and a stays; with one held, a comes back with a second load
    jobs = [BoundJob(t, 4.0, t + 26.0, t + 30.0, t + 4.0, model, ("x",)) for t, model in
            ((0.0, "a"), (5.0, "b"), (10.0, "a"))]
    two = offline_schedule(jobs, 10.0, gpus=1, loads=LOADS)
    assert (two.cold_starts, two.loads, two.lora_loads, two.late) == (1, 1, 2, 0)
    assert two.replica_seconds == pytest.approx((10 + 3 + 4) + (2 + 3 + 4) + 4)  # back to back from 0 s
    one = offline_schedule(jobs, 10.0, gpus=1, loads=dataclasses.replace(LOADS, models_per_replica=1))
    assert (one.loads, one.lora_loads) == (2, 3)
    # each load's checkpoint read from disk over the 28 s before it: b alone, then b and a at once
    assert (two.host_reads_peak, one.host_reads_peak) == (1, 2)


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


@settings(max_examples=25, deadline=None)
@given(trace=st.lists(st.tuples(st.floats(0, 120), st.sampled_from("ab"), st.sampled_from([(), ("x:1",), ("x:1", "y:0.5")])),
                      min_size=1, max_size=20),
       cold=st.sampled_from([3.0, 12.0]), dispatch=st.booleans())
def test_no_simulated_policy_replaying_models_costs_less_than_the_lower_bound_with_loads(trace, cold, dispatch) -> None:
    """Checkpoints and adapters replayed (sdserve's dispatcher with preloading, or Ray's
    multiplexing): a policy that answered every request within the SLO paid at least the bound
    that charges each life's first request its adapters."""
    slo = 40.0
    service = lambda images, pixels, steps: 2.0  # noqa: E731
    requests = [SimRequest(arrival_s=a, timeout_s=60.0, model=m, loras=loras) for a, m, loras in sorted(trace)]
    spec = FleetSpec(cold_start_s=cold, gpu_slots=3, shed_hopeless=False, max_ongoing_requests=2, models_per_replica=1,
                     loras_per_replica=2, model_load_host_s=1.0, model_load_disk_s=6.0, lora_load_s=1.5,
                     default_model="a", dispatch=dispatch, model_preload=dispatch)
    loads = load_times(spec)
    assert loads is not None and loads.lora_s == 1.5
    for policy in _policies(cold):
        result = simulate(requests, spec, service, policy)
        if all(r.outcome == Outcome.OK and r.latency_s <= slo for r in result.records):
            assert chain_lower_bound(request_jobs(requests, service, slo), cold, loads=loads) <= result.replica_seconds() + 1e-6


def test_requests_that_miss_the_slo_on_a_replica_started_for_them_are_counted() -> None:
    # cold start 20 s, SLO 30 s, adapters 3 s: 8 s of service fits (28 s), 8 s and an adapter does not
    # (31 s), nor 11 s (31 s)
    jobs = jobs_for([(0.0, 8.0), (0.0, 8.0), (0.0, 11.0)], 30.0)
    jobs = [dataclasses.replace(jobs[0]), dataclasses.replace(jobs[1], adapters=("x",)), jobs[2]]
    assert from_cold_start_misses(jobs, 20.0, LOADS) == 2
    assert from_cold_start_misses(jobs, 18.0, LOADS) == 0


def test_the_keep_alive_reference_on_a_hand_computed_trace() -> None:
    # cold start 10 s, SLO 30 s: a 2 s request at 0 s, then one at 50 s (a 20 s call with an adapter)
    jobs = jobs_for([(0.0, 2.0), (50.0, 20.0)], 30.0)
    jobs[1] = dataclasses.replace(jobs[1], adapters=("x",))
    long, short = keep_alive_reference(jobs, 10.0, 30.0, LOADS, keep_alives_s=(60.0, 30.0))
    # kept 60 s: alive 0 → 72 s (cold start, call, keep-alive), the second finds it: → 130 s
    assert (long["replica_seconds"], long["cold_starts"], long["slo_attainment"]) == (130.0, 1, 1.0)
    # kept 30 s: stopped at 42 s; the second starts another and ends at 50 + 10 + 3 + 20 = 83 s, late
    assert (short["replica_seconds"], short["cold_starts"], short["slo_attainment"]) == (42.0 + 63.0, 2, 0.5)
