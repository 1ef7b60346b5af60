"""The simulator's port of Ray 2.60's autoscaler against Ray's own functions.

Ray's wrapper and default policy are imported from the installed Ray and run on the same random
contexts as the port; a future Ray that changes them fails here instead of silently skewing every
simulated comparison. The table read from Ray's source needs no Ray and always runs.
"""

from __future__ import annotations

import math
from typing import Any
from unittest import mock

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scheduler.simulation import ray_autoscaler
from scheduler.simulation.policies import SimContext
from scheduler.simulation.ray_autoscaler import RayAutoscalingConfig

try:
    from ray.serve import autoscaling_policy as ray_policy
    from ray.serve.config import AutoscalingConfig, AutoscalingContext
except ImportError:  # the table below still runs
    ray_policy = None

needs_ray = pytest.mark.skipif(ray_policy is None, reason="compares the port with Ray's own code: Ray not installed")


class _Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def time(self) -> float:
        return self.now


def _ray_decision(policy: Any, values: dict[str, Any], ctx_values: dict[str, Any]) -> tuple[int, dict]:
    config = AutoscalingConfig(**values)
    ctx = AutoscalingContext(
        deployment_id=None, deployment_name="d", app_name="a", running_replicas=[],
        total_queued_requests=0, aggregated_metrics={}, raw_metrics={},
        last_scale_up_time=None, last_scale_down_time=None, config=config,
        capacity_adjusted_min_replicas=values["min_replicas"],
        capacity_adjusted_max_replicas=values["max_replicas"], **ctx_values,
    )
    with mock.patch.object(ray_policy, "time", _Clock(ctx_values["current_time"])):  # Ray reads time.time()
        desired, state = ray_policy._apply_autoscaling_config(policy)(ctx)
    if isinstance(desired, float):
        desired = math.ceil(desired)
    bounded = max(values["min_replicas"], min(values["max_replicas"], desired))
    return bounded, dict(state)


def _port_decision(policy: Any, values: dict[str, Any], ctx_values: dict[str, Any]) -> tuple[int, dict]:
    config = RayAutoscalingConfig.from_dict(values)
    ctx = SimContext(
        current_num_replicas=ctx_values["current_num_replicas"], target_num_replicas=ctx_values["target_num_replicas"],
        total_num_requests=ctx_values["total_num_requests"], total_queued_requests=0, aggregated_metrics={},
        capacity_adjusted_min_replicas=values["min_replicas"], capacity_adjusted_max_replicas=values["max_replicas"],
        policy_state=dict(ctx_values["policy_state"]), current_time=ctx_values["current_time"], config=config,
    )
    bounded, state = ray_autoscaler.decide_target(ray_autoscaler.wrap(policy), ctx)
    return bounded, dict(state)


configs = st.fixed_dictionaries({
    "min_replicas": st.integers(0, 2),
    "max_replicas": st.integers(2, 8),
    "target_ongoing_requests": st.sampled_from([1.0, 2.0, 0.5]),
    "upscale_delay_s": st.sampled_from([0.0, 3.0, 30.0]),
    "downscale_delay_s": st.sampled_from([0.0, 10.0, 600.0]),
    "downscale_to_zero_delay_s": st.sampled_from([None, 0.0, 60.0]),
    "upscaling_factor": st.sampled_from([None, 0.5, 2.0]),
    "downscaling_factor": st.sampled_from([None, 0.3, 1.0]),
})
contexts = st.fixed_dictionaries({
    "current_num_replicas": st.integers(0, 6),
    "target_num_replicas": st.integers(0, 6),
    "total_num_requests": st.sampled_from([0.0, 0.4, 1.0, 2.5, 7.0, 19.0]),
    "current_time": st.floats(1000.0, 2000.0),
    "policy_state": st.one_of(
        st.just({}),
        st.fixed_dictionaries({"__decision_counters": st.integers(-5, 5),
                               "__decision_timestamp": st.one_of(st.none(), st.floats(0.0, 2000.0))}),
    ),
})


@needs_ray
@settings(max_examples=300, deadline=None)
@given(values=configs, ctx_values=contexts)
def test_default_policy_matches_ray(values: dict, ctx_values: dict) -> None:
    expected = _ray_decision(ray_policy.replica_queue_length_autoscaling_policy, values, ctx_values)
    assert _port_decision(ray_autoscaler.queue_length_policy, values, ctx_values) == expected


@needs_ray
@settings(max_examples=200, deadline=None)
@given(values=configs, ctx_values=contexts, wanted=st.sampled_from([0, 1, 2.5, 4, 9]))
def test_wrapper_around_a_custom_policy_matches_ray(values: dict, ctx_values: dict, wanted: float) -> None:
    def custom(ctx: Any) -> tuple[float, dict]:
        return wanted, {"mine": 1}

    expected = _ray_decision(custom, values, ctx_values)
    assert _port_decision(custom, values, ctx_values) == expected


# A table read from Ray's source, for the cases that matter most to this project.
@pytest.mark.parametrize(
    "running, target, total, state, overrides, expected",
    [
        # at zero with requests: the fast path, one replica whatever the policy would say
        (0, 0, 16.0, {}, {}, 1),
        # fast path keeps a larger target already set
        (0, 3, 16.0, {}, {}, 3),
        # default policy: 6 requests / target 2 per replica = 3, but the 30 s upscale delay holds 1
        (1, 1, 6.0, {}, {}, 1),
        # ... and lets it through once the delay has elapsed since the first wish
        (1, 1, 6.0, {"__decision_counters": 5, "__decision_timestamp": 900.0}, {}, 3),
        # scale to zero waits downscale_to_zero_delay_s (falls back to downscale_delay_s = 600 s)
        (1, 1, 0.0, {"__decision_counters": -1, "__decision_timestamp": 500.0}, {}, 1),
        (1, 1, 0.0, {"__decision_counters": -1, "__decision_timestamp": 300.0}, {}, 0),
        # bounds clip the policy
        (2, 2, 40.0, {"__decision_counters": 1, "__decision_timestamp": 0.0}, {"max_replicas": 4}, 4),
    ],
)
def test_ray_default_table(running: int, target: int, total: float, state: dict, overrides: dict,
                           expected: int) -> None:
    values = {"min_replicas": 0, "max_replicas": 8, **overrides}
    ctx_values = {"current_num_replicas": running, "target_num_replicas": target, "total_num_requests": total,
                  "current_time": 1000.0, "policy_state": state}
    assert _port_decision(ray_autoscaler.queue_length_policy, values, ctx_values)[0] == expected
