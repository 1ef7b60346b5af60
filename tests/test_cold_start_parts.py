"""A cold start in parts (SIMULATION): a fixed start (process, imports, pipeline) plus the load of
the checkpoint the replica starts with, from the tier it is in then; the bounds take the shortest
such cold start (its checkpoint read ahead into host memory)."""

from __future__ import annotations

import argparse

import pytest

from benchmarks.sim_bounds import least_cold_start
from benchmarks.sim_config import ModelReplay, SimTarget
from scheduler.autoscaling import AutoscalerConfig
from scheduler.simulation.fleet import simulate
from scheduler.simulation.policies import SdserveLoop
from scheduler.simulation.workload import FleetSpec, SimRequest


def _cold_starts(overhead_s: float | None) -> list[float]:
    """Two lone requests for checkpoint A, far apart, at a fleet at zero that keeps nothing alive:
    the first replica reads A from disk, the second finds it in the node's memory."""
    spec = FleetSpec(initial_replicas=0, gpu_slots=1, max_queued_requests=-1, dispatch=True, shed_hopeless=False,
                     models_per_replica=1, host_models_per_node=2, model_load_host_s=3, model_load_disk_s=30,
                     default_model="A", cold_start_s=20, cold_start_overhead_s=overhead_s)
    policy = SdserveLoop("sdserve", AutoscalerConfig(min_replicas=0, max_replicas=1, keep_alive="fixed",
                                                     scale_to_zero_after_s=0, stable_window_s=0))
    requests = [SimRequest(0.0, timeout_s=600, model="A"), SimRequest(500.0, timeout_s=600, model="A")]
    result = simulate(requests, spec, lambda images, pixels, steps: 1.0, policy)
    assert [r.outcome for r in result.records] == ["ok", "ok"]
    return [r.ready_s - r.started_s for r in result.replicas if r.cold_started]


@pytest.mark.parametrize("overhead_s, expected", [
    (None, [20.0, 20.0]),  # one cold start for all, whatever tier its checkpoint is in
    (5.0, [35.0, 8.0]),  # 5 s + 30 s from disk, then 5 s + 3 s from the node's memory
    (0.0, [30.0, 3.0]),
])
def test_a_cold_start_in_parts_loads_its_checkpoint_from_the_tier_it_is_in(overhead_s: float | None,
                                                                          expected: list[float]) -> None:
    assert _cold_starts(overhead_s) == pytest.approx(expected)


@pytest.mark.parametrize("spec, expected", [
    (FleetSpec(cold_start_s=20), 20.0),
    (FleetSpec(cold_start_s=20, cold_start_jitter_s=2), 18.0),
    (FleetSpec(cold_start_s=20, cold_start_overhead_s=5, models_per_replica=1, model_load_host_s=3), 8.0),
    (FleetSpec(cold_start_s=20, cold_start_overhead_s=5, cold_start_jitter_s=1, models_per_replica=1,
               model_load_host_s=3), 7.0),
    (FleetSpec(cold_start_s=20, cold_start_overhead_s=5), 20.0),  # no models replayed: the whole cold start
])
def test_the_bounds_take_the_shortest_cold_start(spec: FleetSpec, expected: float) -> None:
    assert least_cold_start(spec) == pytest.approx(expected)


@pytest.mark.parametrize("kwargs", [{"cold_start_overhead_s": -1.0},
                                    {"cold_start_overhead_s": 5.0, "cold_starts_s": (10.0, 12.0)}])
def test_a_bad_cold_start_in_parts_is_refused(kwargs: dict) -> None:
    with pytest.raises(ValueError, match="cold_start"):
        FleetSpec(**kwargs)


def test_the_replay_option_reaches_the_spec_only_when_the_trace_names_checkpoints() -> None:
    from benchmarks.sim_config import load_target
    from benchmarks.traces import Arrival

    parser = argparse.ArgumentParser()
    ModelReplay.add_arguments(parser)
    replay = ModelReplay.from_args(parser.parse_args(["--cold-start-overhead-s", "9.5"]))
    target: SimTarget = load_target("configs/single.yaml", 22.7)
    named = replay.apply(target, [Arrival(0.0, model="M1"), Arrival(1.0, model="M2")])
    assert named.spec.cold_start_overhead_s == 9.5
    unnamed = replay.apply(target, [Arrival(0.0), Arrival(1.0)])
    assert unnamed.spec.cold_start_overhead_s is None and unnamed.spec.cold_start_s == 22.7


@pytest.mark.parametrize("spec, checkpoint_s, jitter_s, expected", [
    (FleetSpec(cold_start_s=20), 30.0, 0.0, 20.0),  # flat: the checkpoint's tier does not count
    (FleetSpec(cold_start_s=20), 30.0, -25.0, 0.0),  # never below zero
    (FleetSpec(cold_start_s=20, cold_start_overhead_s=5, models_per_replica=1), 30.0, 1.0, 36.0),
    (FleetSpec(cold_start_s=20, cold_start_overhead_s=5, models_per_replica=1), 3.0, -6.0, 3.0),
    (FleetSpec(cold_start_s=20, cold_start_overhead_s=5), 30.0, 0.0, 20.0),  # no models replayed: flat
])
def test_one_cold_start_rule_for_the_simulator_and_the_bounds(spec: FleetSpec, checkpoint_s: float, jitter_s: float,
                                                              expected: float) -> None:
    assert spec.cold_start_with(checkpoint_s, jitter_s) == pytest.approx(expected)


def test_the_runs_say_which_cold_start_they_replay() -> None:
    assert ModelReplay().cold_start_text(22.7) == "cold start 22.7s"
    in_parts = ModelReplay(host_load_s=2.8, disk_load_s=35.0, cold_start_overhead_s=10.9)
    assert in_parts.cold_start_text(22.7) == ("cold start 10.9s + the load of its first checkpoint from host memory "
                                              "(2.8s) or disk (35s)")
    assert in_parts.cold_start_text(22.7, models=False) == "cold start 22.7s"  # a trace that names no checkpoints
