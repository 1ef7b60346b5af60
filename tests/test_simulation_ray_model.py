"""The simulator's port of Ray 2.60's autoscaler against Ray's own functions.

Ray's wrapper and default policy are imported from the installed Ray and run on the same random
contexts as the port; a future Ray that changes them fails here instead of silently skewing every
simulated comparison. The table read from Ray's source needs no Ray and always runs.
"""

from __future__ import annotations

import asyncio
import math
import random
from typing import Any
from unittest import mock

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scheduler.simulation import ray_autoscaler, router
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


# ---- the router: power of two choices, as Ray 2.60's PowerOfTwoChoicesRequestRouter -------------

@pytest.mark.parametrize(("queue_lengths", "max_ongoing", "expected"), [
    ([0], 1, 0), ([1], 1, None),  # one replica: free or not
    ([1, 0], 1, 1), ([0, 0], 1, 0),  # the free one; on a tie the first drawn
    ([2, 1], 4, 1), ([4, 4], 4, None),  # the less loaded among those with room; both full: back off
])
def test_the_router_sends_to_the_less_loaded_of_its_two_draws(queue_lengths, max_ongoing, expected) -> None:
    assert router.least_loaded(queue_lengths, max_ongoing) == expected


def test_two_random_draws_miss_a_free_replica_as_often_as_ray_says() -> None:
    rng = random.Random(0)
    draws = [router.two_choices(rng, 4) for _ in range(20_000)]
    assert all(len(set(d)) == 2 and all(0 <= k < 4 for k in d) for d in draws)
    includes_free = sum(3 in d for d in draws) / len(draws)
    assert includes_free == pytest.approx(0.5, abs=0.02)  # one free replica of four: half the attempts find it


class _FakeReplica:
    """What Ray's router reads of a replica: its id, its slots, its queue length when probed."""

    def __init__(self, unique_id: str, queue_len: int, max_ongoing: int) -> None:
        from ray.serve._private.common import DeploymentID, ReplicaID

        self.replica_id = ReplicaID(unique_id=unique_id, deployment_id=DeploymentID(name="d", app_name="a"))
        self.queue_len, self.max_ongoing_requests = queue_len, max_ongoing
        self.node_id, self.availability_zone, self.multiplexed_model_ids = "node", None, set()
        self.is_cross_language, self.routing_stats = False, {}

    async def get_queue_len(self, *, deadline_s: float) -> int:
        return self.queue_len


@needs_ray
@settings(max_examples=200, deadline=None)
@given(lengths=st.lists(st.integers(0, 4), min_size=1, max_size=6), max_ongoing=st.integers(1, 4),
       seed=st.integers(0, 10_000))
def test_the_routers_draw_and_choice_match_rays(lengths: list[int], max_ongoing: int, seed: int) -> None:
    """Ray's own router, given the same replicas and the same random stream, draws the same two as
    the simulator's port, and sends the request to a replica as loaded as the port's (or backs off
    when the port does). Between two equally loaded replicas Ray's pick follows the order its probes
    complete in (a set of tasks): the port takes the first drawn."""
    from ray.serve._private.common import DeploymentHandleSource, DeploymentID
    from ray.serve._private.request_router.pow_2_router import PowerOfTwoChoicesRequestRouter

    async def rays() -> tuple[list[str], str | None, list[str]]:
        ray_router = PowerOfTwoChoicesRequestRouter(deployment_id=DeploymentID(name="d", app_name="a"),
                                                    handle_source=DeploymentHandleSource.UNKNOWN)
        ray_router.update_replicas([_FakeReplica(f"r{k}", n, max_ongoing) for k, n in enumerate(lengths)])
        random.seed(seed)
        [drawn] = await ray_router.choose_replicas(candidate_replicas=ray_router._replicas_list)
        chosen = await ray_router._select_from_candidate_replicas(drawn, 0)
        order = [replica_id.unique_id for replica_id in ray_router._replica_id_set]  # the candidates' order
        return ([r.replica_id.unique_id for r in drawn], chosen.replica_id.unique_id if chosen else None, order)

    drawn, chosen, order = asyncio.run(rays())
    ours = [order[k] for k in router.two_choices(random.Random(seed), len(order))]
    pick = router.least_loaded([lengths[int(name[1:])] for name in ours], max_ongoing)
    assert ours == drawn
    load = {f"r{k}": n for k, n in enumerate(lengths)}
    assert (None if pick is None else load[ours[pick]]) == (None if chosen is None else load[chosen])
