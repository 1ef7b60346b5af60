"""Ray Serve 2.60's autoscaler, ported line by line so the simulator can run it without Ray.

Source: ``ray/serve/autoscaling_policy.py`` (``_apply_autoscaling_config``,
``_get_cold_start_scale_up_replicas``, ``_apply_scaling_factors``, ``_apply_delay_logic``,
``replica_queue_length_autoscaling_policy``) and ``ray/serve/_private/autoscaling_state.py``
(``apply_bounds``, the look-back average of ``total_num_requests``). Ray wraps *every* policy,
custom ones included, in the same wrapper: while no replica is RUNNING and requests wait, it
returns ``max(ceil(upscaling_factor), target)`` without calling the policy, so sdserve's policy is
simulated through :func:`wrap` exactly as it runs under Ray today.

``tests/test_simulation_ray_model.py`` checks this port against Ray's own functions on random
cases, so a change in a future Ray shows up as a failing test, not as a silently wrong simulation.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any

COUNTERS_KEY = "__decision_counters"  # Ray's SERVE_AUTOSCALING_DECISION_COUNTERS_KEY
TIMESTAMP_KEY = "__decision_timestamp"  # Ray's SERVE_AUTOSCALING_DECISION_TIMESTAMP_KEY
DELAY_EPS_S = 1e-6  # Ray's _DELAY_ELAPSEDDELAY_EPS_S

Policy = Callable[[Any], tuple[float, dict[str, Any]]]


@dataclass(frozen=True)
class RayAutoscalingConfig:
    """The fields of Ray's ``AutoscalingConfig`` the autoscaler reads, with Ray 2.60's defaults."""

    min_replicas: int = 0
    max_replicas: int = 1
    initial_replicas: int | None = None
    target_ongoing_requests: float = 2.0
    look_back_period_s: float = 30.0
    metrics_interval_s: float = 10.0
    upscale_delay_s: float = 30.0
    downscale_delay_s: float = 600.0
    downscale_to_zero_delay_s: float | None = None
    upscaling_factor: float | None = None
    downscaling_factor: float | None = None
    smoothing_factor: float = 1.0
    upscale_smoothing_factor: float | None = None
    downscale_smoothing_factor: float | None = None

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "RayAutoscalingConfig":
        """From a Serve config's ``autoscaling_config`` (``policy`` is handled by the caller)."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known and v is not None})

    def get_upscaling_factor(self) -> float:
        if self.upscaling_factor:
            return self.upscaling_factor
        return self.upscale_smoothing_factor or self.smoothing_factor

    def get_downscaling_factor(self) -> float:
        if self.downscaling_factor:
            return self.downscaling_factor
        return self.downscale_smoothing_factor or self.smoothing_factor

    def get_target_ongoing_requests(self) -> float:
        return self.target_ongoing_requests

    def apply_bounds(self, num_replicas: int) -> int:
        """``AutoscalingState.apply_bounds`` with no ``target_capacity`` set."""
        return max(self.min_replicas, min(self.max_replicas, num_replicas))


def apply_scaling_factors(desired: float, current: int, config: RayAutoscalingConfig) -> int:
    if current == 0:
        return math.ceil(desired)
    delta = desired - current
    factor = config.get_upscaling_factor() if delta > 0 else config.get_downscaling_factor()
    scaled = math.ceil(current + factor * delta)
    if math.ceil(float(desired)) < current and scaled == current:
        scaled -= 1
    return scaled


def apply_delay_logic(
    desired: int, curr_target: int, config: RayAutoscalingConfig, policy_state: dict[str, Any], now: float
) -> tuple[int, dict[str, Any]]:
    decision = curr_target
    counter = policy_state.get(COUNTERS_KEY, 0)
    stamp = policy_state.get(TIMESTAMP_KEY, None)
    if desired > curr_target:
        if counter < 0:
            counter, stamp = 0, None
        counter += 1
        if stamp is None:
            stamp = now
        if now - stamp + DELAY_EPS_S >= config.upscale_delay_s:
            counter, stamp, decision = 0, None, desired
    elif desired < curr_target:
        if counter > 0:
            counter, stamp = 0, None
        counter -= 1
        if curr_target == 1:  # scaling to zero is only ever 1 -> 0
            delay = (config.downscale_to_zero_delay_s if config.downscale_to_zero_delay_s is not None
                     else config.downscale_delay_s)
        else:
            delay = config.downscale_delay_s
            desired = max(1, desired)
        if stamp is None:
            stamp = now
        if now - stamp + DELAY_EPS_S >= delay:
            counter, stamp, decision = 0, None, desired
    else:
        counter, stamp = 0, None
    policy_state[COUNTERS_KEY] = counter
    policy_state[TIMESTAMP_KEY] = stamp
    return decision, policy_state


def cold_start_replicas(ctx: Any) -> int | None:
    """Ray's fast path: no RUNNING replica and requests waiting → at least one, policy not called."""
    if ctx.current_num_replicas == 0 and ctx.total_num_requests > 0:
        return max(math.ceil(1 * ctx.config.get_upscaling_factor()), ctx.target_num_replicas)
    return None


def _apply_default_params(desired: float, ctx: Any, policy_state: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    desired_int = apply_scaling_factors(desired, ctx.current_num_replicas, ctx.config)
    if ctx.current_num_replicas == 0 and desired_int > 0:
        return desired_int, policy_state
    return apply_delay_logic(max(0, desired_int), ctx.target_num_replicas, ctx.config, policy_state,
                             ctx.current_time)


def wrap(policy: Policy) -> Callable[[Any], tuple[int, dict[str, Any]]]:
    """``_apply_autoscaling_config``: the wrapper Ray puts around every deployment-level policy."""

    def wrapped(ctx: Any) -> tuple[int, dict[str, Any]]:
        fast = cold_start_replicas(ctx)
        if fast is not None:
            return fast, ctx.policy_state
        previous = ctx.policy_state.copy()
        desired, user_state = policy(ctx)
        internal = {COUNTERS_KEY: previous.get(COUNTERS_KEY, 0), TIMESTAMP_KEY: previous.get(TIMESTAMP_KEY)}
        final, internal = _apply_default_params(desired, ctx, internal)
        user_state.update(internal)
        return final, user_state

    return wrapped


def queue_length_policy(ctx: Any) -> tuple[float, dict[str, Any]]:
    """``replica_queue_length_autoscaling_policy``: Ray's default, target ongoing requests per replica."""
    fast = cold_start_replicas(ctx)
    if fast is not None:
        return fast, ctx.policy_state
    running = ctx.current_num_replicas
    if running == 0:
        return ctx.target_num_replicas, {}
    target_requests = ctx.config.get_target_ongoing_requests() * running
    return running * (ctx.total_num_requests / target_requests), {}


def decide_target(wrapped: Callable[[Any], tuple[int, dict[str, Any]]], ctx: Any) -> tuple[int, dict[str, Any]]:
    """One control-loop step: the wrapped policy, a float rounded up, then Ray's bounds."""
    desired, state = wrapped(ctx)
    if isinstance(desired, float):
        desired = math.ceil(desired)
    return ctx.config.apply_bounds(desired), state
