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
from collections.abc import Callable
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

    @property
    def first_change_s(self) -> float:
        """The oldest point kept (the series is known from then on)."""
        return self._points[0][0]

    def set(self, now: float, value: float) -> bool:
        """The count is ``value`` from ``now`` on; whether that changed it."""
        if value == self._points[-1][1]:
            return False
        self.last_change_s = now
        if self._points[-1][0] == now:
            self._points[-1] = (now, value)
        else:
            self._points.append((now, value))
        while len(self._points) > 1 and self._points[1][0] <= now - self.keep_s:
            self._points.popleft()
        return True

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
        values = self._values_at(times)
        total = sum(value * (b - a) for value, a, b in zip(values, times, times[1:]))
        total += values[-1] * (now - times[-1])
        span = now - times[0]
        # rounded: float noise (3.0000000000000004) must not turn into another replica under ceil()
        return round(total / span, 9) if span > 0 else values[-1]

    def _values_at(self, times: list[float]) -> list[float]:
        """:meth:`_value_at` for each of ``times`` (ascending), in one walk over the points."""
        points, values = self._points, []
        value, i = points[0][1], 0
        for t in times:
            while i < len(points) and points[i][0] <= t:
                value = points[i][1]
                i += 1
            values.append(value)
        return values

    def _value_at(self, t: float) -> float:
        return self._values_at([t])[0]


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
    fleet_at: Callable[[float], tuple[int, int]] = lambda t: (0, 0)  # (running, starting) at a past time
    interval_s: float = 0.1  # the control loop's period: decisions happen on its grid


class ControlPolicy(Protocol):
    name: str
    look_back_s: float  # how far back the policy reads the request counts (Ray's look-back)

    def __call__(self, obs: Observation) -> int: ...

    def review_at(self, now: float) -> float | None:
        """After a call at ``now``: when the policy may answer differently although nothing happens
        meanwhile (None: only an event can change its answer). The simulator calls it then."""
        ...

    def sees_fleet_at(self, t: float) -> float:
        """When a change of the replicas at ``t`` becomes visible to the policy."""
        ...

    #: Whether the policy reads the request counts (:class:`Observation`'s ``total`` and ``queued``,
    #: Ray's controller): a change of them is news to it, as an arrival or an answer is.
    reads_counts: bool

    def watches_events(self) -> bool:
        """After a call: whether any event may change its answer (the simulator then calls it at
        the next grid point after each event, not only after arrivals, answers and fleet changes)."""
        ...

    # what the ingress sees of each request (sdserve's loop listens; Ray's controller cannot)
    def accepted(self, key: str, job: PendingJob) -> None: ...

    def answered(self, key: str) -> None: ...

    def replied(self, call: CallReport) -> None: ...

    def started(self, key: str, at: float, tier: str) -> None: ...

    def expect(self, tiers: dict[str, str]) -> None: ...

    #: Whether the policy reads where queued requests' checkpoints are (:meth:`expect`).
    reads_tiers: bool


class _CountsOnly:
    """A policy that, like Ray's controller, is not told of individual requests."""

    look_back_s = 0.0
    reads_tiers = False
    reads_counts = True

    def review_at(self, now: float) -> float | None:
        return None

    def watches_events(self) -> bool:
        return False

    def sees_fleet_at(self, t: float) -> float:
        return t  # Ray's controller reads replica states at every step

    def accepted(self, key: str, job: PendingJob) -> None:
        pass

    def answered(self, key: str) -> None:
        pass

    def replied(self, call: CallReport) -> None:
        pass

    def started(self, key: str, at: float, tier: str) -> None:
        pass

    def expect(self, tiers: dict[str, str]) -> None:
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
        self._last: Observation | None = None

    @property
    def look_back_s(self) -> float:
        return self.config.look_back_period_s + self.config.metrics_interval_s

    @property
    def _every_s(self) -> float:
        """How often replicas record a point (``RAY_SERVE_AUTOSCALING_METRIC_RECORD_INTERVAL_FACTOR``)."""
        return min(self.config.look_back_period_s * 0.2, self.config.metrics_interval_s)

    def _known_until(self, obs: Observation) -> float:
        """Replicas and handles push their counts every ``metrics_interval_s``; with no replica
        running a handle pushes at once on a new request (Ray's scaled-to-zero optimisation), so
        the cold-start fast path is not delayed."""
        interval = self.config.metrics_interval_s
        return obs.now if obs.running == 0 else math.floor(obs.now / interval) * interval

    def _seen(self, series: StepSeries, obs: Observation, at: float, known: float) -> float:
        """The request count Ray's controller works with at ``at``: the look-back mean of what was
        pushed up to ``known``, or at zero replicas the count a handle just pushed."""
        if obs.running == 0:
            return series.value
        return series.sampled_mean(at, self.config.look_back_period_s, self._every_s, known)

    def __call__(self, obs: Observation) -> int:
        self._last = obs
        known = self._known_until(obs)
        ctx = SimContext(
            current_num_replicas=obs.running,
            target_num_replicas=obs.target,
            total_num_requests=self._seen(obs.total, obs, obs.now, known),
            total_queued_requests=self._seen(obs.queued, obs, obs.now, known),
            aggregated_metrics={},
            capacity_adjusted_min_replicas=self.config.min_replicas,
            capacity_adjusted_max_replicas=self.config.max_replicas,
            policy_state=self.policy_state,
            current_time=obs.now,
            config=self.config,
        )
        target, self.policy_state = ray_autoscaler.decide_target(self._wrapped, ctx)
        return target

    def review_at(self, now: float) -> float | None:
        """Ray's controller runs every 0.1 s and its answer moves with time in two ways: the
        look-back mean slides (while the window holds a change), and the delay counters run out."""
        c, obs = self.config, self._last
        if obs is None:
            return None
        times = []
        stamp = self.policy_state.get(ray_autoscaler.TIMESTAMP_KEY)
        if stamp is not None:
            # a delay has elapsed once now − stamp + ε ≥ delay (Ray's own tolerance)
            times += [stamp + d - ray_autoscaler.DELAY_EPS_S
                      for d in (c.upscale_delay_s, c.downscale_delay_s, c.downscale_to_zero_delay_s)
                      if d is not None and stamp + d - ray_autoscaler.DELAY_EPS_S > now]
        changed = max(obs.total.last_change_s, obs.queued.last_change_s)
        if obs.running > 0 and now - changed <= c.look_back_period_s + c.metrics_interval_s + self._every_s:
            times.append(self._mean_moves(obs))
        return min(times) if times else None

    def _mean_moves(self, obs: Observation) -> float:
        """The first grid point where the sliding mean gives Ray's default policy another wish —
        before the next push or the oldest point leaving the window, which change the mean's form
        (between those the mean is monotone in time, so the first change is found by bisection)."""
        c, now, grid = self.config, obs.now, obs.interval_s
        if self.inner is not ray_autoscaler.queue_length_policy:
            return now  # a policy we cannot see into: any instant may matter
        known, every = self._known_until(obs), self._every_s
        last = math.floor(known / every) * every
        first = max(obs.total.first_change_s, now - c.look_back_period_s)
        oldest = last - every * math.floor((last - first + 1e-9) / every)  # the oldest point in the window
        until = min(known + c.metrics_interval_s, oldest + c.look_back_period_s)

        def wish(point: int) -> int:
            mean = obs.total.sampled_mean(point * grid, c.look_back_period_s, every, known)
            return ray_autoscaler.apply_scaling_factors(mean / c.get_target_ongoing_requests(), obs.running, c)

        lo, hi = math.floor(now / grid + 1e-9), math.ceil(until / grid - 1e-9)
        if hi <= lo + 1 or wish(hi - 1) == wish(lo):
            # the grid point itself: ``until`` is one in exact arithmetic, and a float sum a hair
            # past it (127.6 + 2.0) would put the call a whole interval late
            return hi * grid
        now_wish = wish(lo)
        while hi - lo > 1:  # the first point whose wish differs lies in (lo, hi]
            middle = (lo + hi) // 2
            lo, hi = (middle, hi) if wish(middle) == now_wish else (lo, middle)
        return hi * grid


class SdserveLoop:
    """sdserve's own control loop (``serve/control.py``, Ray's external scaler): the ingress's
    driver, told of every request and reply, stepped every tick — no Ray wrapper, so a burst at
    zero is sized at once."""

    look_back_s = 0.0

    def __init__(self, name: str, config: AutoscalerConfig, fleet_poll_s: float = 0.5) -> None:
        self.name = name
        self.driver = ScalingDriver(config, fleet_poll_s)
        self._review_at: float | None = None

    def accepted(self, key: str, job: PendingJob) -> None:
        self.driver.collector.accepted(key, job)

    def answered(self, key: str) -> None:
        self.driver.collector.answered(key)

    def replied(self, call: CallReport) -> None:
        self.driver.collector.replied(call)

    reads_tiers = True

    def started(self, key: str, at: float, tier: str) -> None:
        self.driver.collector.started(key, at, tier)

    def expect(self, tiers: dict[str, str]) -> None:
        self.driver.collector.expect(tiers)

    def __call__(self, obs: Observation) -> int:
        polled = self.driver.last_poll_at(obs.now)  # the fleet as the live loop last read it from Serve
        if polled is not None:
            self.driver.fleet_seen(polled, *obs.fleet_at(polled))
        decision = self.driver.step(obs.now)
        self.driver.applied(decision.desired)  # the simulator applies a target at once
        self._review_at = decision.review_at
        return decision.desired

    def review_at(self, now: float) -> float | None:
        return self._review_at

    reads_counts = False  # it is told of each request and reply instead

    def watches_events(self) -> bool:
        """With a queue, the deadline rule reads each call's start and each checkpoint's place,
        which change with events the loop is not told of one by one (a call, a read)."""
        inputs = self.driver.last_inputs
        return inputs is not None and inputs.queued > 0

    def sees_fleet_at(self, t: float) -> float:
        return self.driver.next_poll_from(t)


@dataclass
class FixedFleet(_CountsOnly):
    """N replicas, always (the reference a static deployment would be)."""

    replicas: int
    name: str = "fixed"

    def __call__(self, obs: Observation) -> int:
        return self.replicas
