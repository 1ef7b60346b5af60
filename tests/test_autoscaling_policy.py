"""The Ray adapter over a stand-in for Ray's AutoscalingContext (only the attributes it reads)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from serve.autoscaling_policy import QueueDepthPolicy, inputs_from_context


@dataclass
class FakeContext:
    current_num_replicas: int = 0
    target_num_replicas: int = 0
    total_num_requests: float = 0
    total_queued_requests: float = 0
    aggregated_metrics: dict[str, dict[str, float]] = field(default_factory=dict)
    capacity_adjusted_min_replicas: int = 0
    capacity_adjusted_max_replicas: int = 4
    policy_state: dict[str, Any] = field(default_factory=dict)
    current_time: float = 1000.0
    deployment_name: str = "DiffusionWorker"
    app_name: str = "sdserve"


def test_context_maps_to_inputs() -> None:
    ctx = FakeContext(current_num_replicas=2, target_num_replicas=3, total_num_requests=7,
                      total_queued_requests=5,
                      aggregated_metrics={"service_time_s": {"a": 1.0, "b": 3.0}, "cold_start_s": {"a": 4.0}})
    inputs = inputs_from_context(ctx)
    assert (inputs.queued, inputs.in_flight, inputs.running_replicas, inputs.starting_replicas) == (5, 2, 2, 1)
    assert (inputs.service_time_s, inputs.cold_start_s) == (2.0, 4.0)


def test_policy_keeps_its_state_across_calls_and_respects_ray_bounds() -> None:
    policy = QueueDepthPolicy(default_cold_start_s=2.0, default_service_time_s=1.0)
    ctx = FakeContext(current_num_replicas=1, target_num_replicas=1, total_num_requests=12,
                      total_queued_requests=11, capacity_adjusted_max_replicas=3)
    desired, state = policy(ctx)
    assert desired == 3  # capped by Ray's max, not the policy's default of 4
    assert state["sdserve"]["target"] == 3
    ctx2 = FakeContext(current_num_replicas=3, target_num_replicas=3, policy_state=state, current_time=1001.0)
    desired2, state2 = policy(ctx2)
    assert desired2 == 3  # the burst is inside the stable window
    assert len(state2["sdserve"]["need_history"]) == 2


def test_measurements_are_remembered_after_the_replicas_are_gone() -> None:
    policy = QueueDepthPolicy(default_cold_start_s=60.0, default_service_time_s=1.0)
    measured = FakeContext(current_num_replicas=1, target_num_replicas=1, total_num_requests=1,
                           aggregated_metrics={"cold_start_s": {"a": 2.0}, "service_time_s": {"a": 1.0}})
    policy(measured)
    # later, one replica running with a backlog but no metrics reported yet: a 60 s default cold
    # start would say "not worth it"; the remembered 2 s says start more.
    later = FakeContext(current_num_replicas=1, target_num_replicas=1, total_num_requests=10,
                        total_queued_requests=9, current_time=2000.0)
    desired, _ = policy(later)
    assert desired == 4


def test_following_a_cluster_without_gpus_does_not_cap_at_zero() -> None:
    policy = QueueDepthPolicy(follow_cluster_gpus=True, default_cold_start_s=1.0)
    policy.gpu_cap.cached = (1000.0, 0)  # what a cluster with no GPU reads as
    ctx = FakeContext(current_num_replicas=1, target_num_replicas=1, total_num_requests=6, total_queued_requests=5)
    assert policy(ctx)[0] == 4
    policy.gpu_cap.cached = (1000.0, 2)
    assert policy(ctx)[0] == 2
