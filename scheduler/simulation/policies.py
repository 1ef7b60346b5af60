"""Scaling policies as the simulator runs them: each sees only what the live controller would see.

- :class:`RayControlled` runs a policy the way Ray 2.60 does: inside Ray's wrapper (cold-start fast
  path, scaling factors, delays, bounds), fed a context whose request counts are averaged over the
  deployment's ``look_back_period_s``. With :func:`ray_autoscaler.queue_length_policy` it is Ray's
  default.
- :class:`SdserveLoop` is sdserve's own control loop: the same :class:`~scheduler.driver.ScalingDriver`
  the ingress runs, told of every request and reply as they happen, stepped every tick.
- :class:`FixedFleet` keeps N replicas (a reference).
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Protocol

from scheduler.autoscaling import AutoscalerConfig
from scheduler.collector import CallReport, PendingJob
from scheduler.driver import ScalingDriver
from scheduler.simulation import ray_autoscaler
from scheduler.simulation.ray_autoscaler import RayAutoscalingConfig


class StepSeries:
    """A step function of time (a request count), and its mean over a window as Ray's controller
    sees it: from samples of it (:meth:`sampled_mean`)."""

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

    def sampled_mean(self, now: float, window_s: float, every_s: float, known_until: float) -> float:
        """Ray's view: the count sampled every ``every_s`` (replicas and handles record points at
        ``min(look_back × 0.2, metrics_interval_s)``), reported up to ``known_until``, each sample
        held until the next and the last one until ``now``; averaged from the first sample in the
        window. A request queued between two samples is never seen, as in Ray."""
        last = math.floor(min(now, known_until) / every_s) * every_s
        first = max(self._points[0][0], now - window_s)
        times = []
        t = last
        while t > first - 1e-9 and len(times) < 1000:
            times.append(t)
            t -= every_s
        if not times:
            return self._value_at(last)
        times.reverse()
        total = sum(self._value_at(a) * (b - a) for a, b in zip(times, times[1:]))
        total += self._value_at(times[-1]) * (now - times[-1])
        span = now - times[0]
        return total / span if span > 0 else self._value_at(times[-1])

    def _value_at(self, t: float) -> float:
        value = self._points[0][1]
        for point_t, point_v in self._points:
            if point_t > t:
                break
            value = point_v
        return value


@dataclass
class Observation:
    """What a controller can know at one tick (no future): Ray's controller sees replica states and
    request counts; sdserve's loop was also told of each request and reply as they happened."""

    now: float
    running: int  # RUNNING replicas (not starting, not draining)
    starting: int  # replicas asked for and not running yet
    target: int  # the current target replica count
    total: StepSeries  # queued + running requests
    queued: StepSeries  # requests waiting for a replica at the router


class ControlPolicy(Protocol):
    name: str
    look_back_s: float  # how long after the last change the policy may still act on a mean

    def __call__(self, obs: Observation) -> int: ...

    # what the ingress sees of each request (sdserve's loop listens; Ray's controller cannot)
    def accepted(self, key: str, job: PendingJob) -> None: ...

    def answered(self, key: str) -> None: ...

    def replied(self, call: CallReport) -> None: ...


class _CountsOnly:
    """A policy that, like Ray's controller, is not told of individual requests."""

    def accepted(self, key: str, job: PendingJob) -> None:
        pass

    def answered(self, key: str) -> None:
        pass

    def replied(self, call: CallReport) -> None:
        pass


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


@dataclass
class RayControlled(_CountsOnly):
    """A policy inside Ray 2.60's control loop: look-back means in, Ray's wrapper around it."""

    name: str
    config: RayAutoscalingConfig
    inner: ray_autoscaler.Policy = ray_autoscaler.queue_length_policy
    policy_state: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._wrapped = ray_autoscaler.wrap(self.inner)

    @property
    def look_back_s(self) -> float:
        return self.config.look_back_period_s + self.config.metrics_interval_s

    def __call__(self, obs: Observation) -> int:
        window = self.config.look_back_period_s
        # Replicas and handles push their counts every metrics_interval_s (Ray's default: 10 s);
        # with no replica running a handle pushes at once on a new request (Ray's scaled-to-zero
        # optimisation), so the cold-start fast path is not delayed.
        interval = self.config.metrics_interval_s
        known = obs.now if obs.running == 0 else math.floor(obs.now / interval) * interval
        every = min(window * 0.2, interval)  # RAY_SERVE_AUTOSCALING_METRIC_RECORD_INTERVAL_FACTOR
        ctx = SimContext(
            current_num_replicas=obs.running,
            target_num_replicas=obs.target,
            # at zero a handle pushes its fresh count on arrival: what the fast path checks
            total_num_requests=obs.total.value if obs.running == 0 else obs.total.sampled_mean(
                obs.now, window, every, known),
            total_queued_requests=obs.queued.value if obs.running == 0 else obs.queued.sampled_mean(
                obs.now, window, every, known),
            aggregated_metrics={},
            capacity_adjusted_min_replicas=self.config.min_replicas,
            capacity_adjusted_max_replicas=self.config.max_replicas,
            policy_state=self.policy_state,
            current_time=obs.now,
            config=self.config,
        )
        target, self.policy_state = ray_autoscaler.decide_target(self._wrapped, ctx)
        return target


class SdserveLoop:
    """sdserve's own control loop (``serve/control.py``, Ray's external scaler): the ingress's
    driver, told of every request and reply, stepped every tick — no Ray wrapper, so a burst at
    zero is sized at once."""

    look_back_s = 0.0

    def __init__(self, name: str, config: AutoscalerConfig, fleet_poll_s: float = 0.5) -> None:
        self.name = name
        self.driver = ScalingDriver(config, fleet_poll_s)

    def accepted(self, key: str, job: PendingJob) -> None:
        self.driver.collector.accepted(key, job)

    def answered(self, key: str) -> None:
        self.driver.collector.answered(key)

    def replied(self, call: CallReport) -> None:
        self.driver.collector.replied(call)

    def __call__(self, obs: Observation) -> int:
        if self.driver.fleet_due(obs.now):  # as the live loop polls Serve
            self.driver.fleet_seen(obs.now, obs.running, obs.starting)
        desired = self.driver.step(obs.now).desired
        self.driver.applied(desired)  # the simulator applies a target at once
        return desired


@dataclass
class FixedFleet(_CountsOnly):
    """N replicas, always (the reference a static deployment would be)."""

    replicas: int
    name: str = "fixed"
    look_back_s: float = 0.0

    def __call__(self, obs: Observation) -> int:
        return self.replicas
