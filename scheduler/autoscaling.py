"""The queue-depth autoscaling decision: a pure function over plain data.

Why queue depth: at zero replicas there is nothing to measure CPU or GPU on; queued + in-flight
requests exist at zero and track demand directly. The decision is separated from metric collection
(:mod:`scheduler.driver`) and from actuation (``serve/control.py``), Knative-style:

- **Scale up at once** (no delay) when the backlog exceeds running plus starting capacity. Replicas
  already starting count as capacity to come, so a burst does not start the same replicas twice.
- **Cold-start aware**: a new replica only helps with what is still queued when it becomes ready. The
  running replicas keep draining during the cold start, so we size for the backlog left *then*:
  ``queued_after_cold_start = demand - running × capacity × cold_start / service_time``.
- **Scale down slowly**: only to the highest need seen over the stable window (a burst inside the
  window keeps its capacity), one replica per ``scale_down_interval_s``, never below what in-flight
  work needs, and never while the backlog exceeds capacity (panic mode).
- **Deadline-aware** (when the inputs carry the queued requests' slack, as the ingress's collector
  gives them): start the fewest replicas that bring the requests expected to miss their deadline
  (or the latency objective) to a minimum — only replicas that serve a still-waiting request in time
  (``scheduler/deadline_scaling.py``).
- **Scale to zero** only after the keep-alive with no request queued or running: fixed
  (``scale_to_zero_after_s``) or learned from the idle times the fleet saw, with pre-warming
  (``keep_alive: histogram``, ``scheduler/keepalive.py``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import StrEnum

from scheduler.deadline_scaling import Backlog, replicas_to_save_deadlines, starts_that_can_wait, steady_for
from scheduler.keepalive import KeepAlivePlan, keep_alive_plan, keep_one, record_idle, regime_of


@dataclass(frozen=True)
class AutoscalerConfig:
    """Every knob, with its default. Set from a Serve config's ``policy_kwargs``."""

    min_replicas: int = 0
    max_replicas: int = 4  # the GPUs you have
    capacity_per_replica: int = 1  # requests a replica runs at once: 1 single, batch size batched
    stable_window_s: float = 30.0  # scale down to the max need seen over this window (a cold start
    # at least while a replica is still starting: stopping it would waste the start already paid)
    scale_down_interval_s: float = 10.0  # at most one replica removed per interval
    scale_to_zero_after_s: float = 120.0  # keep-alive of the last replica with no requests
    window_holds_last: bool = True  # False: the stable window holds only replicas beyond the first;
    # with no requests, the keep-alive alone decides when the last one stops (Ray's downscale delay
    # and downscale-to-zero delay are separate in the same way)
    default_service_time_s: float = 3.0  # per request, until replicas report a measurement
    default_cold_start_s: float = 25.0  # replica start → ready, until replicas report one
    deadline_aware: bool = True  # start replicas that save queued requests' deadlines (needs backlog)
    latency_objective_s: float | None = None  # aim to answer within this (the collector's slack)
    #: None: every replica a rule asks for starts at once. A number: only the starts the deadline
    #: rule's replay of the queue needs, each when its first request's slack is down to a cold start
    #: plus this margin, so that requests arriving meanwhile share it (deadline_scaling.starts_that_can_wait)
    just_in_time_margin_s: float | None = None
    keep_alive: str = "fixed"  # "fixed": scale_to_zero_after_s; "histogram": learned (Shahrad et al.)
    keep_alive_percentile: float = 0.99  # histogram: keep one replica up to this idle-time quantile
    cold_start_penalty_s: float | None = None  # histogram: set → cost-optimal keep-alive (keepalive.py)
    prewarm_percentile: float = 0.05  # histogram: pre-warm before this quantile if > a cold start
    keep_alive_min_samples: int = 20  # histogram: idle periods needed before it replaces the fixed one
    keep_alive_max_s: float = 3600.0  # histogram: never keep a replica idle longer than this

    def __post_init__(self) -> None:
        if not 0 <= self.min_replicas <= self.max_replicas:
            raise ValueError(f"need 0 <= min_replicas <= max_replicas, got {self.min_replicas}, {self.max_replicas}")
        if self.capacity_per_replica < 1:
            raise ValueError("capacity_per_replica must be >= 1")
        for name in ("stable_window_s", "scale_down_interval_s", "scale_to_zero_after_s"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0")
        if self.default_service_time_s <= 0 or self.default_cold_start_s < 0:
            raise ValueError("default_service_time_s must be > 0 and default_cold_start_s >= 0")
        if self.keep_alive not in ("fixed", "histogram"):
            raise ValueError(f"keep_alive must be 'fixed' or 'histogram', got {self.keep_alive!r}")
        if not 0 < self.prewarm_percentile < self.keep_alive_percentile <= 1:
            raise ValueError("need 0 < prewarm_percentile < keep_alive_percentile <= 1")
        if self.latency_objective_s is not None and self.latency_objective_s <= 0:
            raise ValueError("latency_objective_s must be > 0 (or unset)")
        if self.just_in_time_margin_s is not None and self.just_in_time_margin_s < 0:
            raise ValueError("just_in_time_margin_s must be >= 0 (or unset)")
        if self.cold_start_penalty_s is not None and self.cold_start_penalty_s < 0:
            raise ValueError("cold_start_penalty_s must be >= 0 (or unset)")


@dataclass(frozen=True)
class AutoscalerInputs:
    """What the world looks like at one decision."""

    now: float
    queued: int  # waiting for a replica (including at the proxy)
    in_flight: int  # running on replicas
    running_replicas: int
    starting_replicas: int
    service_time_s: float | None = None  # measured mean seconds per request (None: unknown)
    cold_start_s: float | None = None  # measured replica start → ready (None: unknown)
    backlog: Backlog | None = None  # queued requests' slack and service (None: counts only)
    slot_free_in_s: tuple[float, ...] | None = None  # when each running/starting slot frees
    recent_arrivals: int | None = None  # requests in the last 10 minutes (the load regime)
    #: Which of ``slot_free_in_s`` count down as time passes (a busy slot whose request's end is
    #: known, a starting replica); None: not known, the decision may change at any time with a queue.
    slot_counts_down: tuple[bool, ...] | None = None

    @property
    def demand(self) -> int:
        return self.queued + self.in_flight


@dataclass(frozen=True)
class AutoscalerState:
    """What the decider remembers between calls."""

    target: int = 0  # the last decision
    idle_since: float | None = None  # since when nothing was queued or running (None: busy)
    last_scale_down_at: float | None = None
    need_history: tuple[tuple[float, int], ...] = field(default=())  # (time, replicas needed)
    #: Idle periods seen, one histogram per load regime (scheduler/keepalive.py).
    idle_histograms: tuple[tuple[int, ...], ...] = field(default=())
    idle_regime: int = 0  # the load regime when the current idle period began
    #: The keep-alive chosen when the current idle period began: (keep-alive, pre-warm after, source).
    idle_plan: tuple[float, float | None, str] | None = None


class DecisionKind(StrEnum):
    """Which rule decided (a metric label: a few fixed words)."""

    BURST = "burst"  # the backlog needs more replicas, counting what drains during a cold start
    DEADLINE = "deadline"  # queued requests would miss their deadlines without more replicas
    JUST_IN_TIME = "just in time"  # a start the queue asks for waits: its requests' slack outlasts a cold start
    BACKLOG = "backlog"  # more work than replicas, but a new one would be ready only after it drains
    STEADY = "steady"  # the need over the stable window is what runs
    COOLING_DOWN = "cooling down"  # too soon after the last scale-down
    LOW_DEMAND = "low demand"  # one step down
    HOLDING = "holding"  # the floor: in-flight work, min_replicas or the keep-alive
    PREWARM = "pre-warm"  # one replica ahead of the next expected request
    TO_ZERO = "to zero"  # the keep-alive ran out


@dataclass(frozen=True)
class Decision:
    desired: int
    state: AutoscalerState
    kind: DecisionKind
    detail: str
    #: The first time this decision may change although nothing else does: when a need leaves the
    #: stable window, the scale-down interval or the keep-alive or pre-warm runs out, and with a
    #: queue when the deadline rule's answer may change as slack shrinks (at once where the slots'
    #: clocks are not known). None: only a new event (an arrival, a reply, a call that starts, a
    #: replica's change) can change it.
    review_at: float | None = None

    @property
    def reason(self) -> str:
        """``"<kind>: <detail>"``, as logged and shown by ``GET /v1/scheduler``."""
        return f"{self.kind}: {self.detail}"


def _ceil_div(a: float, b: float) -> int:
    return max(0, math.ceil(a / b - 1e-9))


def _remember_need(
    history: tuple[tuple[float, int], ...], now: float, need: int, window_s: float
) -> tuple[tuple[float, int], ...]:
    """The needs held within the window, each stamped with when it began. A need stays in the window
    until ``window_s`` after the next one began: the window's maximum is then the same however often
    the decider runs (every 0.1 s live, only where it can change in the simulator), and the history
    stays as short as the number of changes."""
    kept = list(history)
    if not kept or kept[-1][1] != need:
        kept.append((now, need))
    while len(kept) > 1 and now - kept[1][0] >= window_s:  # the oldest ended a window ago
        kept.pop(0)
    return tuple(kept)


def _max_need(history: tuple[tuple[float, int], ...], now: float, window_s: float) -> int:
    """The highest need held at any time within the last ``window_s`` (a need holds until the next began)."""
    ends = [t for t, _ in history[1:]] + [math.inf]
    return max(n for (_, n), end in zip(history, ends) if now - end < window_s)


def replicas_worth_starting(inputs: AutoscalerInputs, config: AutoscalerConfig) -> int:
    """Total replicas that would be busy when a replica started now becomes ready."""
    capacity = config.capacity_per_replica
    service = inputs.service_time_s or config.default_service_time_s
    cold = config.default_cold_start_s if inputs.cold_start_s is None else inputs.cold_start_s
    drained = inputs.running_replicas * capacity * cold / service
    left_when_ready = max(0.0, inputs.demand - drained)
    return inputs.running_replicas + _ceil_div(left_when_ready, capacity)


def _deadline_target(inputs: AutoscalerInputs, config: AutoscalerConfig, provisioned: int) -> tuple[int, str]:
    """Replicas (total) the deadline rule wants, and the detail of why; ``provisioned`` if none."""
    if not config.deadline_aware or inputs.backlog is None or inputs.slot_free_in_s is None:
        return provisioned, ""
    cold = config.default_cold_start_s if inputs.cold_start_s is None else inputs.cold_start_s
    room = max(0, config.max_replicas - provisioned)
    extra, before, after = replicas_to_save_deadlines(
        inputs.backlog, inputs.slot_free_in_s, cold, config.capacity_per_replica, room)
    if not extra:
        return provisioned, ""
    return provisioned + extra, (f"{before} of {inputs.queued} queued would miss; "
                                 f"{extra} more ready in {cold:.0f}s leave {after}")


def _keep_alive(histogram: tuple[int, ...], config: AutoscalerConfig, cold_start_s: float) -> KeepAlivePlan:
    return keep_alive_plan(
        histogram, mode=config.keep_alive, fixed_s=config.scale_to_zero_after_s,
        keep_percentile=config.keep_alive_percentile, prewarm_percentile=config.prewarm_percentile,
        min_samples=config.keep_alive_min_samples, max_s=config.keep_alive_max_s,
        cold_start_s=cold_start_s, penalty_s=config.cold_start_penalty_s,
    )


def _learn_idle(state: AutoscalerState, busy: bool, inputs: AutoscalerInputs, config: AutoscalerConfig,
                cold_start_s: float) -> tuple[tuple[tuple[int, ...], ...], int, KeepAlivePlan | None]:
    """Histograms, regime and keep-alive plan after this call: an idle period that just ended is
    recorded in its regime's histogram; one that just began gets its plan (computed once)."""
    histograms, regime, plan = state.idle_histograms, state.idle_regime, state.idle_plan
    if busy:
        if state.idle_since is not None:
            per_regime = list(histograms) + [()] * (regime + 1 - len(histograms))
            per_regime[regime] = record_idle(per_regime[regime], inputs.now - state.idle_since)
            histograms = tuple(per_regime)
        return histograms, regime, None
    if state.idle_since is None or plan is None:  # idle from now on
        regime = regime_of(inputs.recent_arrivals)
        histogram = histograms[regime] if regime < len(histograms) else ()
        return histograms, regime, _keep_alive(histogram, config, cold_start_s)
    return histograms, regime, KeepAlivePlan(*plan)


def decide(inputs: AutoscalerInputs, state: AutoscalerState, config: AutoscalerConfig) -> Decision:
    """The desired replica count for ``inputs``, the new state, and why."""
    capacity = config.capacity_per_replica
    now = inputs.now
    busy = inputs.demand > 0
    cold = config.default_cold_start_s if inputs.cold_start_s is None else inputs.cold_start_s
    histograms, regime, plan = _learn_idle(state, busy, inputs, config, cold)
    idle_since = None if busy else (state.idle_since if state.idle_since is not None else now)
    needed_now = _ceil_div(inputs.demand, capacity)  # replicas to run everything at once
    history = _remember_need(state.need_history, now, needed_now, max(config.stable_window_s, cold))
    # while replicas start, one is stopped only if the need for it has been gone a cold start
    window_s = max(config.stable_window_s, cold) if inputs.starting_replicas else config.stable_window_s
    window_need = _max_need(history, now, window_s)
    if not busy and window_need == 1 and not config.window_holds_last:
        window_need = 0  # the last replica is the keep-alive's to stop
    provisioned = inputs.running_replicas + inputs.starting_replicas
    current = max(state.target, provisioned)

    up = min(needed_now, replicas_worth_starting(inputs, config))
    for_deadlines, deadline_detail = _deadline_target(inputs, config, provisioned)
    if for_deadlines > max(up, current):
        desired, kind, detail = for_deadlines, DecisionKind.DEADLINE, deadline_detail
    elif up > current:
        desired, kind = up, DecisionKind.BURST
        detail = f"{inputs.queued} queued, {inputs.in_flight} running, {inputs.starting_replicas} starting"
    elif needed_now > provisioned and current > 0:
        desired, kind = current, DecisionKind.BACKLOG
        detail = f"{inputs.demand} waiting; new replicas would be ready only after it drains"
    elif window_need >= current:
        desired, kind, detail = current, DecisionKind.STEADY, f"need {window_need} over the stable window"
    elif (
        state.last_scale_down_at is not None
        and now - state.last_scale_down_at < config.scale_down_interval_s
    ):
        desired, kind, detail = current, DecisionKind.COOLING_DOWN, "too soon after the last scale-down"
    else:
        desired, kind = current - 1, DecisionKind.LOW_DEMAND
        detail = f"need {window_need} over {window_s:g}s, one step down"
    waits, waits_for = _starts_that_can_wait(inputs, config, desired - current)
    if waits:
        desired, kind = desired - waits, DecisionKind.JUST_IN_TIME
        detail = (f"{waits} start{'s' if waits > 1 else ''} can wait "
                  + ("for a request that needs it" if waits_for == math.inf else f"{waits_for:.1f}s"))

    idle_for = 0.0 if idle_since is None else now - idle_since
    wants_one = plan is None or keep_one(idle_for, plan, cold)
    prewarms = plan is not None and plan.prewarm_after_s is not None
    keep_alive = 1 if wants_one and (current > 0 or prewarms) else 0
    floor = max(_ceil_div(inputs.in_flight, capacity), config.min_replicas, keep_alive)
    if desired < floor:
        if keep_alive and current == 0:
            kind = DecisionKind.PREWARM
            detail = f"idle {idle_for:.0f}s, next request expected after {plan.prewarm_after_s or 0:.0f}s"
        else:
            kind, detail = DecisionKind.HOLDING, f"{floor} for in-flight work, min_replicas or keep-alive"
        desired = floor
    desired = max(config.min_replicas, min(config.max_replicas, desired))
    if desired == 0 and current > 0 and plan is not None:
        kind = DecisionKind.TO_ZERO
        detail = f"idle {idle_for:.0f}s, keep-alive {plan.keep_alive_s:.0f}s ({plan.source})"
    new_state = AutoscalerState(
        target=desired,
        idle_since=idle_since,
        last_scale_down_at=now if desired < current else state.last_scale_down_at,
        need_history=history,
        idle_histograms=histograms,
        idle_regime=regime,
        idle_plan=None if plan is None else (plan.keep_alive_s, plan.prewarm_after_s, plan.source),
    )
    review_at = _review_at(new_state, config, plan, cold, now, window_s)
    steady_s = _deadline_steady_for(inputs, config, provisioned) if inputs.queued else math.inf
    steady_s = min(steady_s, waits_for)
    if steady_s < math.inf:  # with a queue, the deadline rule's answer moves with the clock too
        review_at = now + steady_s if review_at is None else min(review_at, now + steady_s)
    return Decision(desired, new_state, kind, detail, review_at)


def _starts_that_can_wait(inputs: AutoscalerInputs, config: AutoscalerConfig, new: int) -> tuple[int, float]:
    """Of ``new`` replicas the rules ask for, how many wait (just in time), and for how long."""
    margin = config.just_in_time_margin_s
    if margin is None or new <= 0 or inputs.backlog is None or inputs.slot_free_in_s is None:
        return 0, math.inf
    cold = config.default_cold_start_s if inputs.cold_start_s is None else inputs.cold_start_s
    return starts_that_can_wait(inputs.backlog, inputs.slot_free_in_s, cold, margin, config.capacity_per_replica, new)


def _deadline_steady_for(inputs: AutoscalerInputs, config: AutoscalerConfig, provisioned: int) -> float:
    """How long the deadline rule's answer holds with a queue and nothing happening (0: it may
    change at once, as it may when the slots' clocks are not known)."""
    if not config.deadline_aware or inputs.backlog is None or inputs.slot_free_in_s is None:
        return math.inf
    if inputs.slot_counts_down is None:
        return 0.0
    cold = config.default_cold_start_s if inputs.cold_start_s is None else inputs.cold_start_s
    return steady_for(inputs.backlog, inputs.slot_free_in_s, inputs.slot_counts_down, cold,
                      config.capacity_per_replica, max(0, config.max_replicas - provisioned))


def _review_at(state: AutoscalerState, config: AutoscalerConfig, plan: KeepAlivePlan | None, cold: float,
               now: float, window_s: float) -> float | None:
    """When the rules' clocks next run out for ``state``: the first time the decision may change with
    unchanged inputs. A past need leaves the window (``window_s``: the stable window, or a cold start
    while replicas start) that long after the next one began: one still in it now leaves after now,
    even where a window too short to move the clock sums to now."""
    after_now = math.nextafter(now, math.inf)
    times = [max(t + window_s, after_now) for t, _ in state.need_history[1:] if now - t < window_s]
    if state.last_scale_down_at is not None:
        times.append(state.last_scale_down_at + config.scale_down_interval_s)
    if state.idle_since is not None and plan is not None:
        times.append(state.idle_since + plan.keep_alive_s)
        if plan.prewarm_after_s is not None:
            times.append(state.idle_since + plan.prewarm_after_s - cold)
    future = [t for t in times if t > now]
    return min(future) if future else None
