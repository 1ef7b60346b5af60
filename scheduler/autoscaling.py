"""The queue-depth autoscaling decision: a pure function over plain data.

Why queue depth: at zero replicas there is nothing to measure CPU or GPU on; queued + in-flight
requests exist at zero and track demand directly. The decision is separated from metric collection
(the Ray adapter in ``serve/autoscaling_policy.py``) and from actuation (Ray Serve), Knative-style:

- **Scale up at once** (no delay) when the backlog exceeds running plus starting capacity. Replicas
  already starting count as capacity to come, so a burst does not start the same replicas twice.
- **Cold-start aware**: a new replica only helps with what is still queued when it becomes ready. The
  running replicas keep draining during the cold start, so we size for the backlog left *then*:
  ``queued_after_cold_start = demand - running × capacity × cold_start / service_time``.
- **Scale down slowly**: only to the highest need seen over the stable window (a burst inside the
  window keeps its capacity), one replica per ``scale_down_interval_s``, never below what in-flight
  work needs, and never while the backlog exceeds capacity (panic mode).
- **Scale to zero** only after ``scale_to_zero_after_s`` with no request queued or running.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class AutoscalerConfig:
    """Every knob, with its default. Set from a Serve config's ``policy_kwargs``."""

    min_replicas: int = 0
    max_replicas: int = 4  # the GPUs you have
    capacity_per_replica: int = 1  # requests a replica runs at once: 1 single, batch size batched
    stable_window_s: float = 30.0  # scale down to the max need seen over this window
    scale_down_interval_s: float = 10.0  # at most one replica removed per interval
    scale_to_zero_after_s: float = 120.0  # keep-alive of the last replica with no requests
    default_service_time_s: float = 3.0  # per request, until replicas report a measurement
    default_cold_start_s: float = 25.0  # replica start → ready, until replicas report one

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

    def to_dict(self) -> dict[str, Any]:
        """Plain data for Ray's ``policy_state`` (cheap: no deep copy, it is immutable)."""
        return {"target": self.target, "idle_since": self.idle_since,
                "last_scale_down_at": self.last_scale_down_at, "need_history": self.need_history}

    @classmethod
    def from_dict(cls, saved: dict[str, Any]) -> "AutoscalerState":
        return cls(**{**saved, "need_history": tuple(map(tuple, saved.get("need_history", ())))})


@dataclass(frozen=True)
class Decision:
    desired: int
    state: AutoscalerState
    reason: str  # "<kind>: <details>"; the kind is one of a few fixed words (a metric label)

    @property
    def kind(self) -> str:
        return self.reason.split(":")[0]


def _ceil_div(a: float, b: float) -> int:
    return max(0, math.ceil(a / b - 1e-9))


def _remember_need(
    history: tuple[tuple[float, int], ...], now: float, need: int, window_s: float
) -> tuple[tuple[float, int], ...]:
    """The needs seen within the window, each stamped with the last time it was seen.

    A run of equal needs is kept as one entry re-stamped at every call: the window's maximum is the
    same as with one entry per call, but the history stays as short as the number of changes
    (the simulator calls this millions of times over a 23-day trace)."""
    kept = [(t, n) for t, n in history if now - t < window_s]
    if kept and kept[-1][1] == need:
        kept[-1] = (now, need)
    else:
        kept.append((now, need))
    return tuple(kept)


def replicas_worth_starting(inputs: AutoscalerInputs, config: AutoscalerConfig) -> int:
    """Total replicas that would be busy when a replica started now becomes ready."""
    capacity = config.capacity_per_replica
    service = inputs.service_time_s or config.default_service_time_s
    cold = config.default_cold_start_s if inputs.cold_start_s is None else inputs.cold_start_s
    drained = inputs.running_replicas * capacity * cold / service
    left_when_ready = max(0.0, inputs.demand - drained)
    return inputs.running_replicas + _ceil_div(left_when_ready, capacity)


def decide(inputs: AutoscalerInputs, state: AutoscalerState, config: AutoscalerConfig) -> Decision:
    """The desired replica count for ``inputs``, the new state, and why."""
    capacity = config.capacity_per_replica
    now = inputs.now
    busy = inputs.demand > 0
    idle_since = None if busy else (state.idle_since if state.idle_since is not None else now)
    needed_now = _ceil_div(inputs.demand, capacity)  # replicas to run everything at once
    history = _remember_need(state.need_history, now, needed_now, config.stable_window_s)
    window_need = max(n for _, n in history)
    provisioned = inputs.running_replicas + inputs.starting_replicas
    current = max(state.target, provisioned)

    up = min(needed_now, replicas_worth_starting(inputs, config))
    if up > current:
        desired = up
        reason = (
            f"burst: {inputs.queued} queued, {inputs.in_flight} running, "
            f"{inputs.starting_replicas} starting"
        )
    elif needed_now > provisioned and current > 0:
        desired = current
        reason = f"backlog: {inputs.demand} waiting; new replicas would be ready only after it drains"
    elif window_need >= current:
        desired, reason = current, f"steady: need {window_need} over the stable window"
    elif (
        state.last_scale_down_at is not None
        and now - state.last_scale_down_at < config.scale_down_interval_s
    ):
        desired, reason = current, "cooling down: too soon after the last scale-down"
    else:
        desired = current - 1
        reason = f"low demand: need {window_need} over {config.stable_window_s:g}s, one step down"

    idle_for = 0.0 if idle_since is None else now - idle_since
    keep_alive = 1 if current > 0 and idle_for < config.scale_to_zero_after_s else 0
    floor = max(_ceil_div(inputs.in_flight, capacity), config.min_replicas, keep_alive)
    if desired < floor:
        desired, reason = floor, f"holding: {floor} for in-flight work, min_replicas or keep-alive"
    desired = max(config.min_replicas, min(config.max_replicas, desired))
    if desired == 0 and current > 0:
        reason = f"to zero: idle {idle_for:.0f}s >= keep-alive {config.scale_to_zero_after_s:g}s"
    new_state = AutoscalerState(
        target=desired,
        idle_since=idle_since,
        last_scale_down_at=now if desired < current else state.last_scale_down_at,
        need_history=history,
    )
    return Decision(desired, new_state, reason)
