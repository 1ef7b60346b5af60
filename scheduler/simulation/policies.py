"""Scaling policies as the simulator runs them: each sees only what the live controller would see.

- :class:`RayControlled` runs a policy the way Ray 2.60 does: inside Ray's wrapper (cold-start fast
  path, scaling factors, delays, bounds), fed a context whose request counts are averaged over the
  deployment's ``look_back_period_s``. With :func:`ray_autoscaler.queue_length_policy` it is Ray's
  default; with :func:`sdserve_policy` it is sdserve's decider through the same adapter Ray calls.
- :class:`FixedFleet` keeps N replicas (a reference).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any, Protocol

from scheduler.autoscaling import AutoscalerConfig
from scheduler.policy_adapter import QueueDepthDecider
from scheduler.simulation import ray_autoscaler
from scheduler.simulation.ray_autoscaler import RayAutoscalingConfig


class StepSeries:
    """A step function of time (a request count), with its time-weighted mean over a window.

    Ray's controller aggregates replica and handle reports over ``look_back_period_s``; this is the
    same mean, computed over the exact step function instead of 0.25 s samples of it.
    """

    def __init__(self, keep_s: float) -> None:
        self.keep_s = keep_s
        self._points: deque[tuple[float, float]] = deque([(0.0, 0.0)])
        self.last_change_s = 0.0

    @property
    def value(self) -> float:
        return self._points[-1][1]

    def set(self, now: float, value: float) -> None:
        if value == self._points[-1][1]:
            return
        self.last_change_s = now
        if self._points[-1][0] == now:
            self._points[-1] = (now, value)
        else:
            self._points.append((now, value))
        while len(self._points) > 1 and self._points[1][0] <= now - self.keep_s:
            self._points.popleft()

    def mean(self, now: float, window_s: float) -> float:
        if window_s <= 0:
            return self.value
        start = max(now - window_s, self._points[0][0])
        if now <= start:
            return self.value
        total = 0.0
        points = self._points
        for i, (t, v) in enumerate(points):
            end = points[i + 1][0] if i + 1 < len(points) else now
            lo = max(t, start)
            if end > lo:
                total += v * (end - lo)
        return total / (now - start)


@dataclass
class Observation:
    """What the controller can know at one tick (no future, no per-request secrets)."""

    now: float
    running: int  # RUNNING replicas (not starting, not draining)
    target: int  # the current target replica count
    total: StepSeries  # queued + running requests
    queued: StepSeries  # requests waiting for a replica at the router
    reports: dict[str, dict[str, float]]  # metric → replica → value (record_autoscaling_stats)


class ControlPolicy(Protocol):
    name: str
    look_back_s: float  # how long after the last change the policy may still act on a mean

    def __call__(self, obs: Observation) -> int: ...


@dataclass
class SimContext:
    """The attributes of Ray's ``AutoscalingContext`` that the policies read."""

    current_num_replicas: int
    target_num_replicas: int
    total_num_requests: float
    total_queued_requests: float
    aggregated_metrics: dict[str, dict[str, float]]
    capacity_adjusted_min_replicas: int
    capacity_adjusted_max_replicas: int
    policy_state: dict[str, Any]
    current_time: float
    config: RayAutoscalingConfig
    deployment_name: str = "DiffusionWorker"
    app_name: str = "sdserve"


def sdserve_policy(config: AutoscalerConfig) -> ray_autoscaler.Policy:
    """sdserve's queue-depth decider behind the same adapter ``serve/autoscaling_policy.py`` uses."""
    decider = QueueDepthDecider(config)

    def policy(ctx: Any) -> tuple[float, dict[str, Any]]:
        _, decision, state = decider.decide(ctx)
        return decision.desired, state

    return policy


@dataclass
class RayControlled:
    """A policy inside Ray 2.60's control loop: look-back means in, Ray's wrapper around it."""

    name: str
    config: RayAutoscalingConfig
    inner: ray_autoscaler.Policy = ray_autoscaler.queue_length_policy
    policy_state: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._wrapped = ray_autoscaler.wrap(self.inner)

    @property
    def look_back_s(self) -> float:
        return self.config.look_back_period_s

    def __call__(self, obs: Observation) -> int:
        window = self.config.look_back_period_s
        ctx = SimContext(
            current_num_replicas=obs.running,
            target_num_replicas=obs.target,
            total_num_requests=obs.total.mean(obs.now, window),
            total_queued_requests=obs.queued.mean(obs.now, window),
            aggregated_metrics=obs.reports,
            capacity_adjusted_min_replicas=self.config.min_replicas,
            capacity_adjusted_max_replicas=self.config.max_replicas,
            policy_state=self.policy_state,
            current_time=obs.now,
            config=self.config,
        )
        target, self.policy_state = ray_autoscaler.decide_target(self._wrapped, ctx)
        return target


@dataclass
class FixedFleet:
    """N replicas, always (the reference a static deployment would be)."""

    replicas: int
    name: str = "fixed"
    look_back_s: float = 0.0

    def __call__(self, obs: Observation) -> int:
        return self.replicas
