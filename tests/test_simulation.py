"""The fleet simulator: accounting, determinism, the live rules it reproduces."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from scheduler.autoscaling import AutoscalerConfig
from scheduler.outcomes import Outcome
from scheduler.simulation.fleet import simulate
from scheduler.simulation.policies import (
    FixedFleet,
    RayControlled,
    SdserveLoop,
    StepSeries,
)
from scheduler.simulation.ray_autoscaler import RayAutoscalingConfig
from scheduler.simulation.records import SimResult
from scheduler.simulation.workload import FleetSpec, SimRequest

#: What a simulated request can end as (no client leaves, no input is bad, nothing runs out of memory).
SIMULATED = {Outcome.OK, Outcome.DEADLINE, Outcome.SHED, Outcome.OVERLOADED}


def flat(seconds: float):
    """A service model: ``seconds`` per call per image, whatever the size or steps."""
    return lambda images, pixels, steps: seconds * images


def ray_default(**overrides) -> RayControlled:
    return RayControlled("ray", RayAutoscalingConfig(**{"max_replicas": 4, **overrides}))


def sdserve(max_replicas: int = 4, **kwargs) -> SdserveLoop:
    return SdserveLoop("sdserve", AutoscalerConfig(max_replicas=max_replicas, **kwargs))


def shipped_policy(config: str):
    """The policy a shipped config deploys, every knob as it ships (scheduler/simulation/policies.py)."""
    from benchmarks.sim_config import load_target
    from tests.conftest import CONFIGS

    return load_target(CONFIGS / config, cold_start_s=5.0).policy()


def integral(result: SimResult) -> float:
    """Replica-seconds from the fleet-size samples: must equal Σ (stop − start) over replicas."""
    total = 0.0
    for (t, alive, _, _), (t2, *_rest) in zip(result.samples, result.samples[1:]):
        total += alive * (t2 - t)
    return total + result.samples[-1][1] * (result.end_s - result.samples[-1][0])


@settings(max_examples=40, deadline=None)
@given(
    gaps=st.lists(st.floats(0, 40), min_size=1, max_size=40),
    ns=st.lists(st.integers(1, 4), min_size=40, max_size=40),
    timeout=st.floats(2, 60),
    batch=st.sampled_from([1, 2, 4]),
    queue=st.sampled_from([-1, 3, 64]),
    policy=st.sampled_from(["ray", "sdserve", "shipped", "fixed"]),
)
def test_every_request_gets_one_outcome_and_cost_is_the_sum_of_replica_lifetimes(
    gaps, ns, timeout, batch, queue, policy
) -> None:
    t, requests = 0.0, []
    for gap, n in zip(gaps, ns):
        t += gap
        requests.append(SimRequest(t, n=n, steps=10, timeout_s=timeout))
    spec = FleetSpec(max_batch_size=batch, max_ongoing_requests=batch, max_queued_requests=queue,
                     cold_start_s=5.0, gpu_slots=4, batch_wait_timeout_s=0.1)
    chosen = {"ray": ray_default(upscale_delay_s=3, downscale_delay_s=20), "sdserve": sdserve(
        capacity_per_replica=batch, default_cold_start_s=5, scale_to_zero_after_s=15, stable_window_s=10,
        scale_down_interval_s=5), "fixed": FixedFleet(2), "shipped": shipped_policy("single.yaml")}[policy]
    if policy == "fixed":
        spec = FleetSpec(**{**spec.__dict__, "initial_replicas": 2})
    result = simulate(requests, spec, flat(1.0), chosen)
    assert len(result.records) == len(requests)
    assert all(r.outcome in SIMULATED for r in result.records), {r.outcome for r in result.records}
    assert all(r.done_s >= r.arrival_s for r in result.records)
    for r in result.records:  # each outcome is what happened to the request
        if r.outcome == Outcome.OK:  # ran on a replica, to the end, within its deadline
            assert r.start_s is not None and r.replica is not None
            assert r.done_s == pytest.approx(r.start_s + r.service_time_s)
            assert r.latency_s <= timeout + 1e-6
        elif r.outcome == Outcome.DEADLINE:  # answered at its deadline (or its call's stop)
            assert r.latency_s <= timeout + 1e-6
        else:  # refused: never ran; a full queue answers on arrival
            assert r.start_s is None and r.service_time_s is None
            if r.outcome == Outcome.OVERLOADED:
                assert r.done_s == r.arrival_s
    assert result.replica_seconds() == pytest.approx(integral(result), rel=1e-9, abs=1e-6)
    assert max(alive for _, alive, _, _ in result.samples) <= 4  # never more replicas than GPUs


def test_same_seed_same_result_and_jitter_changes_it() -> None:
    requests = [SimRequest(i * 7.0, n=1 + i % 3, steps=20) for i in range(60)]
    spec = FleetSpec(cold_start_s=10, cold_start_jitter_s=5, gpu_slots=4, seed=3)

    def run(seed: int) -> list[tuple]:
        result = simulate(requests, FleetSpec(**{**spec.__dict__, "seed": seed}), flat(2.0),
                          sdserve(scale_to_zero_after_s=5, default_cold_start_s=10))
        return [(r.outcome, r.done_s) for r in result.records] + [(result.replica_seconds(),)]

    assert run(3) == run(3)
    assert run(3) != run(4)


def test_queue_bound_answers_overloaded_and_deadlines_answer_at_the_deadline() -> None:
    # one warm replica, 1 s per request, 10 requests at once, room for 3 in the queue
    requests = [SimRequest(0.0, steps=10, timeout_s=2.5) for _ in range(10)]
    spec = FleetSpec(initial_replicas=1, max_queued_requests=3, gpu_slots=1, shed_hopeless=False)
    result = simulate(requests, spec, flat(1.0), FixedFleet(1))
    outcomes = [r.outcome for r in result.records]
    # #0 runs at once; #1-#3 queue; the rest find the queue full
    assert outcomes[4:] == [Outcome.OVERLOADED] * 6
    assert outcomes[0] == Outcome.OK and result.records[0].done_s == pytest.approx(1.0)
    # #1 runs 1-2 s, in time; #2 starts at 2 s and is stopped at its 2.5 s deadline (answered then)
    assert outcomes[1] == Outcome.OK
    assert outcomes[2] == Outcome.DEADLINE and result.records[2].done_s == pytest.approx(2.5)
    assert result.replicas[0].calls == 3
    # #3 is still queued at 2.5 s: answered then, never run
    assert outcomes[3] == Outcome.DEADLINE and result.records[3].start_s is None


def per_step(seconds: float):
    """A service model: ``seconds`` per image-step."""
    return lambda images, pixels, steps: seconds * images * steps


@pytest.mark.parametrize(("first_steps", "last"), [
    # calls of 10 and 20 steps (2 s, 4 s): the replica's own model separates fixed from per-step
    # cost, so a 20-step request with 3 s left is shed at once when its turn comes (at 6 s)
    (10, Outcome.SHED),
    # every call seen had 20 steps: the model does not guess, so the request runs from 8 s and is
    # stopped at its deadline (9 s) — the simulator is not handed the true service time
    (20, Outcome.DEADLINE),
])
def test_hopeless_requests_are_shed_only_by_what_the_replica_learnt(first_steps: int, last: Outcome) -> None:
    requests = [SimRequest(0.0, steps=first_steps, timeout_s=100), SimRequest(0.0, steps=20, timeout_s=100),
                SimRequest(0.0, steps=20, timeout_s=9)]
    spec = FleetSpec(initial_replicas=1, gpu_slots=1, router_initial_backoff_s=0)  # a freed slot is filled at once
    result = simulate(requests, spec, per_step(0.2), FixedFleet(1))
    assert [r.outcome for r in result.records] == [Outcome.OK, Outcome.OK, last]
    assert result.records[2].done_s == pytest.approx((first_steps + 20) * 0.2 if last == Outcome.SHED else 9.0)


@pytest.mark.parametrize(
    ("backoff_s", "second_starts_s"),
    [
        # Ray's router: tries at 0, 0, then after 25, 50, 100, 200, 400 ms and every 500 ms:
        # 0.025, 0.075, 0.175, 0.375, 0.775, 1.275, ... 3.775, 4.275 — the slot frees at 4.0
        (0.025, 4.275),
        (0.0, 4.0),  # polling off: at once
        (0.3, 4.3),  # tries at 0, 0, 0.3, then every 0.5 s (0.6 is over the cap): 0.8, ... 3.8, 4.3
    ],
)
def test_a_freed_slot_is_filled_when_the_router_next_polls(backoff_s: float, second_starts_s: float) -> None:
    requests = [SimRequest(0.0), SimRequest(0.0)]
    spec = FleetSpec(initial_replicas=1, gpu_slots=1, router_initial_backoff_s=backoff_s)
    result = simulate(requests, spec, flat(4.0), FixedFleet(1))
    assert [r.outcome for r in result.records] == [Outcome.OK, Outcome.OK]
    assert result.records[1].start_s == pytest.approx(second_starts_s)


def test_a_ready_replica_takes_queued_requests_without_waiting_for_a_poll() -> None:
    # from zero there is no routing task to wait for: the new replica is used the moment it is up
    spec = FleetSpec(cold_start_s=5.0, gpu_slots=1)
    result = simulate([SimRequest(0.0)], spec, flat(1.0), FixedFleet(1))
    assert result.records[0].start_s == pytest.approx(5.0)


def test_batches_form_like_serve_batch_and_split_by_size() -> None:
    # 4 same-size requests batch into one call; a different size runs as its own group after it
    requests = [SimRequest(0.0, pixels=512 * 512) for _ in range(3)] + [SimRequest(0.0, pixels=256 * 256)]
    spec = FleetSpec(initial_replicas=1, gpu_slots=1, max_batch_size=4, max_ongoing_requests=4)
    result = simulate(requests, spec, flat(1.0), FixedFleet(1))
    assert [r.batch_images for r in result.records] == [3, 3, 3, 1]
    assert [r.done_s for r in result.records] == pytest.approx([4.0] * 4)  # a full batch: no wait; together


def test_ray_wrapper_starts_one_replica_from_zero_then_the_policy_adds_the_rest() -> None:
    """A custom policy does not run at zero under Ray: the first cold start is alone, whatever the
    policy wants — the reason sdserve runs its own loop (next test)."""
    requests = [SimRequest(0.0, timeout_s=600) for _ in range(16)]
    spec = FleetSpec(cold_start_s=20, gpu_slots=4)
    config = RayAutoscalingConfig(max_replicas=4, upscale_delay_s=0, look_back_period_s=2)
    result = simulate(requests, spec, flat(10.0), RayControlled("wants-4", config, lambda ctx: (4, {})))
    starts = sorted(r.started_s for r in result.replicas)
    assert starts[0] == pytest.approx(0.0, abs=0.2)
    assert len(starts) == 4 and min(starts[1:]) >= 20.0  # the rest only once the first is running


def test_sdserve_loop_sizes_a_burst_from_zero_at_once() -> None:
    requests = [SimRequest(0.0, timeout_s=600) for _ in range(16)]
    spec = FleetSpec(cold_start_s=20, gpu_slots=4)
    result = simulate(requests, spec, flat(10.0), sdserve(default_cold_start_s=20, default_service_time_s=10))
    starts = sorted(r.started_s for r in result.replicas)
    assert len(starts) == 4 and max(starts) <= 0.2  # all four asked for on the first tick


def test_ray_default_waits_its_upscale_delay() -> None:
    requests = [SimRequest(i * 0.5, timeout_s=600) for i in range(40)]
    spec = FleetSpec(cold_start_s=5, gpu_slots=4, initial_replicas=1)
    result = simulate(requests, spec, flat(3.0), ray_default(initial_replicas=1, target_ongoing_requests=1))
    second = sorted(r.started_s for r in result.replicas)[1]
    assert second >= 30.0  # upscale_delay_s = 30 s by default


def test_step_series_mean_is_time_weighted() -> None:
    series = StepSeries(keep_s=100)
    series.set(10.0, 4)
    series.set(12.0, 0)
    assert series.sampled_mean(12.0, 4.0, 0.01, known_until=12.0) == pytest.approx(2.0, abs=0.02)  # 4 for 2 of 4 s
    assert series.sampled_mean(20.0, 4.0, 0.01, known_until=20.0) == 0.0


def test_step_series_holds_the_last_report_until_now() -> None:
    series = StepSeries(keep_s=100)
    series.set(10.0, 4)
    series.set(15.0, 0)
    # reports up to t=12 only: the controller still believes 4 until now
    assert series.sampled_mean(20.0, 10.0, 0.01, known_until=12.0) == pytest.approx(4.0, abs=0.02)
    assert series.sampled_mean(20.0, 10.0, 0.01, known_until=20.0) == pytest.approx(2.0, abs=0.02)


def test_sampled_mean_sees_only_what_falls_on_a_sample() -> None:
    series = StepSeries(keep_s=100)
    series.set(10.05, 3)  # a blip between two 0.2 s samples: Ray never records it
    series.set(10.15, 0)
    assert series.sampled_mean(12.0, 4.0, 0.2, known_until=12.0) == 0.0
    series.set(11.0, 2)  # held from the 11.0 sample on
    assert series.sampled_mean(12.0, 2.0, 0.2, known_until=12.0) == pytest.approx(1.0)


def test_adaptive_replica_keeps_a_tight_request_out_of_a_slow_batch() -> None:
    """The simulator runs the worker's adaptive rule: once its model is trained, a request with a
    tight deadline goes alone while loose ones share a call; plain batching makes it miss."""
    def per_batch(images: int, pixels: int, steps: int) -> float:
        return 1.0 + 0.5 * images  # 1.5 s alone, 3.0 s for 4

    warm = [SimRequest(t, timeout_s=600) for t in (0, 10, 10, 20, 20, 20, 30, 30, 30, 30, 40, 40, 40, 40)]
    burst = [SimRequest(100.0, timeout_s=1.9)] + [SimRequest(100.0, timeout_s=600) for _ in range(4)]
    outcomes = {}
    for adaptive in (True, False):
        spec = FleetSpec(initial_replicas=1, gpu_slots=1, max_batch_size=8, max_ongoing_requests=16,
                         adaptive=adaptive, batch_wait_timeout_s=0.05, shed_hopeless=False)
        result = simulate(warm + burst, spec, per_batch, FixedFleet(1))
        tight = result.records[len(warm)]
        outcomes[adaptive] = (tight.outcome, tight.batch_images)
    assert outcomes[True] == (Outcome.OK, 1), outcomes
    assert outcomes[False][0] == Outcome.DEADLINE, outcomes


sim_traces = st.lists(st.tuples(st.sampled_from([0.0, 0.3, 2.0, 15.0, 60.0, 400.0]), st.integers(1, 3),
                                st.sampled_from([10, 20]), st.sampled_from([5.0, 30.0, 120.0])), min_size=3, max_size=30)


def _requests(trace: list) -> list[SimRequest]:
    t, requests = 0.0, []
    for gap, n, steps, timeout in trace:
        t += gap
        requests.append(SimRequest(t, n=n, steps=steps, timeout_s=timeout))
    return requests


def _same_as_every_interval(requests: list[SimRequest], spec: FleetSpec, make_policy) -> None:
    """The simulator calls the policy only where its answer may change; calling it at every 0.1 s
    grid point, as the live loop does, must give the same run to the last request."""
    fast = simulate(requests, spec, per_step(0.1), make_policy())
    every = simulate(requests, dataclasses.replace(spec, every_interval=True), per_step(0.1), make_policy())
    assert [(r.outcome, r.done_s, r.replica) for r in fast.records] == [
        (r.outcome, r.done_s, r.replica) for r in every.records]
    assert fast.replica_seconds() == pytest.approx(every.replica_seconds())
    assert fast.policy_calls <= every.policy_calls


@settings(max_examples=30, deadline=None)
@given(trace=sim_traces, batch=st.sampled_from([1, 4, "adaptive"]), cold=st.sampled_from([2.0, 10.0]),
       keep_alive=st.sampled_from(["fixed", "histogram"]), penalty=st.sampled_from([None, 30.0]),
       objective=st.sampled_from([None, 20.0]), window=st.sampled_from([3.0, 20.0]), floor=st.sampled_from([0, 1]))
# replicas ready on a fleet read whose time is a float sum a hair past the 0.1 s grid point
@example(trace=[(0.0, 1, 10, 30.0), (60.0, 1, 10, 5.0), (60.0, 1, 10, 5.0), (0.0, 1, 10, 5.0), (15.0, 1, 10, 5.0)],
         batch=1, cold=10.0, keep_alive="fixed", penalty=None, objective=None, window=3.0, floor=0)
def test_sdserve_decides_the_same_when_called_only_where_it_can_change(
        trace, batch, cold, keep_alive, penalty, objective, window, floor) -> None:
    size = 4 if batch == "adaptive" else batch
    spec = FleetSpec(cold_start_s=cold, gpu_slots=4, max_queued_requests=8, max_batch_size=size,
                     max_ongoing_requests=4, batch_wait_timeout_s=0.1, adaptive=batch == "adaptive")
    config = AutoscalerConfig(capacity_per_replica=size, default_cold_start_s=5, scale_to_zero_after_s=20,
                              stable_window_s=window, scale_down_interval_s=2, keep_alive=keep_alive,
                              keep_alive_min_samples=3, cold_start_penalty_s=penalty, latency_objective_s=objective,
                              min_replicas=floor)
    _same_as_every_interval(_requests(trace), spec, lambda: SdserveLoop("sdserve", config))


@settings(max_examples=20, deadline=None)
@given(trace=sim_traces, config=st.sampled_from(["single.yaml", "batched.yaml", "adaptive.yaml"]))
def test_the_shipped_configs_decide_the_same_when_called_only_where_it_can_change(trace, config) -> None:
    from benchmarks.sim_config import load_target
    from tests.conftest import CONFIGS

    target = load_target(CONFIGS / config, cold_start_s=5.0)
    _same_as_every_interval(_requests(trace), target.spec, target.policy)


model_traces = st.lists(st.tuples(st.sampled_from([0.0, 0.3, 2.0, 15.0, 60.0]), st.sampled_from(["A", "B", "C"]),
                                  st.sampled_from([(), ("x:1",), ("y:1",)]), st.sampled_from([30.0, 120.0])),
                        min_size=3, max_size=30)


@settings(max_examples=25, deadline=None)
@given(trace=model_traces, config=st.sampled_from(["single.yaml", "batched.yaml"]), wait=st.booleans(),
       blind=st.booleans())
def test_the_shipped_configs_with_checkpoints_decide_the_same_when_called_only_where_it_can_change(
        trace, config, wait, blind) -> None:
    """With checkpoints and LoRAs the deadline rule reads each call's start and each checkpoint's
    place, which calls and reads change between arrivals and answers."""
    from benchmarks.sim_config import ModelReplay, load_target
    from tests.conftest import CONFIGS

    t, requests = 0.0, []
    for gap, model, loras, timeout in trace:
        t += gap
        requests.append(SimRequest(t, timeout_s=timeout, model=model, loras=loras))
    target = load_target(CONFIGS / config, cold_start_s=5.0, overrides=[
        f"queue.wait_for_reads={str(wait).lower()}", f"queue.model_aware={str(not blind).lower()}"])
    replay = ModelReplay(host_load_s=1.0, disk_load_s=8.0, lora_load_s=2.0, node_host_models=2)
    target = replay.apply(target, requests)
    _same_as_every_interval(requests, target.spec, target.policy)


@settings(max_examples=30, deadline=None)
@given(trace=sim_traces, up=st.sampled_from([0.0, 3.0]), down=st.sampled_from([5.0, 30.0]),
       look_back=st.sampled_from([2.0, 10.0]), interval=st.sampled_from([0.5, 2.0]), target=st.sampled_from([1.0, 2.0]))
# the oldest point leaves the look-back window at 127.6 + 2.0, a float sum a hair past the 129.6 grid point
@example(trace=[(60.0, 1, 10, 5.0), (60.0, 3, 10, 30.0), (2.0, 1, 10, 30.0), (2.0, 1, 10, 5.0), (15.0, 1, 10, 5.0)],
         up=0.0, down=5.0, look_back=2.0, interval=0.5, target=1.0)
def test_ray_default_decides_the_same_when_called_only_where_it_can_change(
        trace, up, down, look_back, interval, target) -> None:
    config = RayAutoscalingConfig(max_replicas=4, upscale_delay_s=up, downscale_delay_s=down,
                                  look_back_period_s=look_back, metrics_interval_s=interval,
                                  target_ongoing_requests=target)
    spec = FleetSpec(cold_start_s=5.0, gpu_slots=4, max_queued_requests=8)
    _same_as_every_interval(_requests(trace), spec, lambda: RayControlled("ray", config))


def _on_queued_requests(ctx) -> tuple[float, dict]:
    """A custom policy inside Ray's wrapper: one more replica per two requests waiting at the router."""
    return ctx.current_num_replicas + ctx.total_queued_requests / 2, {}


@settings(max_examples=30, deadline=None)
@given(trace=sim_traces, look_back=st.sampled_from([2.0, 10.0]), interval=st.sampled_from([0.5, 2.0]))
def test_a_custom_ray_policy_decides_the_same_when_called_only_where_it_can_change(
        trace, look_back, interval) -> None:
    """Its count of queued requests moves when the router hands one to a replica, between arrivals
    and answers: the policy is called after that too."""
    config = RayAutoscalingConfig(max_replicas=4, upscale_delay_s=0.0, downscale_delay_s=5.0,
                                  look_back_period_s=look_back, metrics_interval_s=interval)
    spec = FleetSpec(cold_start_s=5.0, gpu_slots=4, max_queued_requests=8)
    _same_as_every_interval(_requests(trace), spec, lambda: RayControlled("ray", config, inner=_on_queued_requests))


def test_a_simulated_call_holds_one_kind_of_request() -> None:
    """Two prompts and two edits that run the same steps at the same size arrive together at one
    batched replica: they go in two calls, never one (a pipeline call is one kind)."""
    requests = [SimRequest(0.0, steps=8, kind=kind) for kind in ("text", "img2img", "text", "img2img")]
    spec = FleetSpec(max_batch_size=8, max_ongoing_requests=8, initial_replicas=1, gpu_slots=1,
                     router_initial_backoff_s=0)
    result = simulate(requests, spec, lambda images, pixels, steps: 0.1 * steps, FixedFleet(1))
    assert [r.call_images for r in result.records] == [2, 2, 2, 2]
    starts = {kind: {r.start_s for r, q in zip(result.records, requests) if q.kind == kind} for kind in ("text", "img2img")}
    assert all(len(s) == 1 for s in starts.values()) and starts["text"] != starts["img2img"]


def test_float_noise_in_rays_look_back_mean_does_not_start_a_replica() -> None:
    """Three requests at 0 (two due at 5 s) on one replica ready at 5 s: Ray's look-back mean is
    3.0 at every grid point. Before it was rounded, float noise made it 3.0000000000000004 at some
    points, ceil() asked for a 4th replica there, and the event-driven run picked another point
    than the every-interval one (a case hypothesis found)."""
    requests = [SimRequest(0.0, n=1, steps=10, timeout_s=t) for t in (5.0, 5.0, 30.0)]
    config = RayAutoscalingConfig(max_replicas=4, upscale_delay_s=0.0, downscale_delay_s=5.0, look_back_period_s=10.0,
                                  metrics_interval_s=2.0, target_ongoing_requests=1.0)
    spec = FleetSpec(cold_start_s=5.0, gpu_slots=4, max_queued_requests=8)
    _same_as_every_interval(requests, spec, lambda: RayControlled("ray", config))
    result = simulate(requests, spec, per_step(0.1), RayControlled("ray", config))
    assert len(result.replicas) == 3  # the mean of 3 requests over 1 replica: 3, never 4


def test_a_run_scored_after_a_warm_up_counts_only_what_came_from_then() -> None:
    """A replica stopped before ``t0`` costs nothing, one running across it is paid from ``t0`` and
    is no cold start, one started after it is; requests before ``t0`` are not scored."""
    from scheduler.simulation.records import Replica, RequestRecord

    replicas = [Replica(0, 0.0, 10.0, 10.0, state="stopped", stopped_s=50.0, cold_started=True),
                Replica(1, 20.0, 30.0, 10.0, state="running", cold_started=True),
                Replica(2, 120.0, 130.0, 10.0, state="stopped", stopped_s=200.0, cold_started=True)]
    records = [RequestRecord(k, arrival, 1) for k, arrival in enumerate((10.0, 110.0, 150.0))]
    result = SimResult("p", records, replicas, [(0.0, 1, 0, 1), (90.0, 1, 1, 0), (120.0, 2, 1, 1)], 300.0, 7)
    scored = result.from_time(100.0)
    assert result.alive_at(100.0) == 1
    assert scored.replica_seconds() == 200.0 + 80.0
    assert scored.replica_starts() == 1
    assert [r.arrival_s for r in scored.records] == [110.0, 150.0]
    assert scored.samples == [(100.0, 1, 1, 0), (120.0, 2, 1, 1)]
    assert result.replica_seconds() == 50.0 + 280.0 + 80.0  # the whole run, untouched


@dataclasses.dataclass
class ReportsHeard(FixedFleet):
    """A fixed fleet that keeps the cold start each reply reported, as the control loop hears them."""

    heard: list[float] = dataclasses.field(default_factory=list)

    def replied(self, call) -> None:
        self.heard.append(call.cold_start_s)


@pytest.mark.parametrize(("spec", "expected"), [
    (FleetSpec(cold_start_s=2.0, initial_replicas=3), [2.0, 2.0, 2.0]),  # the cold start itself
    (FleetSpec(cold_start_s=2.0, initial_replicas=3, reported_cold_start_s=1.5), [1.5, 1.5, 1.5]),
    (FleetSpec(cold_start_s=2.0, initial_replicas=3, reported_cold_starts_s=(1.0, 3.0)), [1.0, 3.0, 1.0]),  # cycling
    (FleetSpec(cold_start_s=2.0, initial_replicas=3, reported_cold_start_s=1.5, reported_cold_starts_s=(4.0,)),
     [4.0, 4.0, 4.0]),  # replica by replica over one for all
])
def test_each_replica_reports_its_own_cold_start_in_the_order_replicas_are_made(
        spec: FleetSpec, expected: list[float]) -> None:
    # one to each of the three replicas, answered in the order of their sizes (1, 2, 3 images)
    requests = [SimRequest(0.0, n=n, timeout_s=60) for n in (1, 2, 3)]
    policy = ReportsHeard(3)
    result = simulate(requests, spec, flat(1.0), policy)
    assert len({r.replica for r in result.records}) == 3
    heard_from = [r.replica for r in sorted(result.records, key=lambda r: r.call_s)]
    assert [heard for _, heard in sorted(zip(heard_from, policy.heard))] == expected


def test_each_cold_start_is_the_measured_one_in_the_order_replicas_are_asked_for() -> None:
    requests = [SimRequest(0.0, n=n, timeout_s=60) for n in (1, 2, 3)]
    spec = FleetSpec(cold_start_s=2.0, initial_replicas=1, cold_starts_s=(5.0, 1.0))
    result = simulate(requests, spec, flat(1.0), FixedFleet(3))
    starts = [r.ready_s - r.started_s for r in sorted(result.replicas, key=lambda r: r.id)]
    assert starts == [0.0, 5.0, 1.0]  # the warm one has none; the two asked for take 5 s and 1 s
    again = simulate(requests, dataclasses.replace(spec, initial_replicas=0), flat(1.0), FixedFleet(3))
    assert [r.ready_s - r.started_s for r in sorted(again.replicas, key=lambda r: r.id)] == [5.0, 1.0, 5.0]  # cycling
