"""Scaling policies as the simulator runs them: each sees only what the live controller would see.

- :class:`RayControlled` runs a policy the way Ray 2.60 does: inside Ray's wrapper (cold-start fast
  path, scaling factors, delays, bounds), fed a context whose request counts are averaged over the
  deployment's ``look_back_period_s``. With :func:`ray_autoscaler.queue_length_policy` it is Ray's
  default; with :func:`sdserve_policy` it is sdserve's decider through the same adapter Ray calls.
- :class:`FixedFleet` keeps N replicas (a reference).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from scheduler.autoscaling import AutoscalerConfig, AutoscalerState, decide
from scheduler.collector import ArrivalWindow, PendingJob, ServiceRate, StartTracker, build_inputs
from scheduler.policy_adapter import QueueDepthDecider
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
    """What a controller can know at one tick (no future). Ray's controller sees counts and replica
    reports; sdserve's ingress also sees each outstanding request and each reply."""

    now: float
    running: int  # RUNNING replicas (not starting, not draining)
    target: int  # the current target replica count
    total: StepSeries  # queued + running requests
    queued: StepSeries  # requests waiting for a replica at the router
    reports: dict[str, dict[str, float]]  # metric → replica → value (record_autoscaling_stats)
    starting: int = 0  # replicas asked for and not running yet
    jobs: Callable[[], list[PendingJob]] = list  # outstanding requests, arrival order (the ingress's view)
    replies: list[tuple[float, int, int, int]] = field(default_factory=list)  # calls ended since the last tick
    arrivals: list[float] = field(default_factory=list)  # requests that arrived since the last tick


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
class ExternalScaler:
    """sdserve's own control loop (``serve/control.py``, Ray's external scaler): the collector's
    inputs from every outstanding request and reply, the decider called directly every tick —
    no Ray wrapper, so a burst at zero is sized at once."""

    name: str
    config: AutoscalerConfig
    look_back_s: float = 0.0
    fleet_poll_s: float = 0.5  # the loop reads replica states from Serve this often (control.py)

    def __post_init__(self) -> None:
        self.state = AutoscalerState()
        self._fleet = (0, 0)
        self._polled_at = -math.inf
        self._target = -1
        self.rate = ServiceRate()
        self.starts = StartTracker()
        self.arrived = ArrivalWindow()
        self.cold_start_s: float | None = None  # the last replica-reported cold start, kept across zero

    def __call__(self, obs: Observation) -> int:
        for seconds, images, steps, pixels in obs.replies:
            self.rate.observe(seconds, images, steps, pixels)
        for at in obs.arrivals:
            self.arrived.arrived(at)
        reported = list((obs.reports.get("cold_start_s") or {}).values())
        if reported:
            self.cold_start_s = sum(reported) / len(reported)
        if obs.now - self._polled_at >= self.fleet_poll_s or obs.target != self._target:
            self._fleet, self._polled_at = (obs.running, obs.starting), obs.now  # as ServeFleet polls
        running, starting = self._fleet
        starting = max(starting, obs.target - running)  # asked for, maybe not yet in Serve's view
        c = self.config
        inputs = build_inputs(obs.now, obs.jobs(), running, starting, c.capacity_per_replica,
                              self.rate, self.starts, self.cold_start_s, c.default_service_time_s,
                              c.default_cold_start_s, c.latency_objective_s, self.arrived.count(obs.now))
        decision = decide(inputs, self.state, c)
        self.state = decision.state
        if decision.desired != obs.target:
            self._polled_at = -math.inf  # the live loop re-reads the fleet after it scales
        self._target = decision.desired
        return decision.desired


@dataclass
class FixedFleet:
    """N replicas, always (the reference a static deployment would be)."""

    replicas: int
    name: str = "fixed"
    look_back_s: float = 0.0

    def __call__(self, obs: Observation) -> int:
        return self.replicas
