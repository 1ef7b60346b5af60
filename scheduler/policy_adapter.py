"""From an autoscaling context (Ray's, or the simulator's stand-in) to a decision, without Ray.

Ray calls a custom policy with an ``AutoscalingContext``; the simulator calls the same code with a
plain object that has the same attributes. Keeping the translation here, pure and duck-typed, is
what makes "what is simulated is what runs" true: ``serve/autoscaling_policy.py`` adds only what
needs a live cluster (the GPU count, the decision log).

Attributes read from the context: ``current_num_replicas`` (RUNNING replicas), ``target_num_replicas``,
``total_num_requests`` (running + queued, averaged over Ray's look-back), ``total_queued_requests``,
``aggregated_metrics`` (what replicas report via ``record_autoscaling_stats``),
``capacity_adjusted_min_replicas`` / ``capacity_adjusted_max_replicas``, ``policy_state`` and
``current_time``.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

from scheduler.autoscaling import AutoscalerConfig, AutoscalerInputs, AutoscalerState, Decision, decide

STATE_KEY = "sdserve"
MEASUREMENTS = ("service_time_s", "cold_start_s")


def _mean_metric(ctx: Any, name: str) -> float | None:
    values = [v for v in ((ctx.aggregated_metrics or {}).get(name) or {}).values() if v and v > 0]
    return sum(values) / len(values) if values else None


def inputs_from_context(ctx: Any) -> AutoscalerInputs:
    running = int(ctx.current_num_replicas)
    queued = int(ctx.total_queued_requests or 0)
    return AutoscalerInputs(
        now=ctx.current_time or time.time(),
        queued=queued,
        in_flight=max(0, int(round(ctx.total_num_requests)) - queued),
        running_replicas=running,
        starting_replicas=max(0, int(ctx.target_num_replicas) - running),
        service_time_s=_mean_metric(ctx, "service_time_s"),
        cold_start_s=_mean_metric(ctx, "cold_start_s"),
    )


def state_from(policy_state: dict[str, Any]) -> AutoscalerState:
    saved = policy_state.get(STATE_KEY)
    return AutoscalerState.from_dict(saved) if saved else AutoscalerState()


class QueueDepthDecider:
    """The policy as Ray runs it, minus cluster look-ups: context → (desired, policy_state).

    It remembers the last service and cold-start times replicas reported, so a burst after
    scale-to-zero (no replica left to report) is sized with measurements, not the defaults.
    """

    def __init__(self, config: AutoscalerConfig) -> None:
        self.config = config
        self._remembered: dict[str, float] = {}

    def with_memory(self, inputs: AutoscalerInputs) -> AutoscalerInputs:
        for name in MEASUREMENTS:
            value = getattr(inputs, name)
            if value is not None:
                self._remembered[name] = value
            elif name in self._remembered:
                inputs = dataclasses.replace(inputs, **{name: self._remembered[name]})
        return inputs

    def decide(self, ctx: Any, max_replicas_cap: int | None = None) -> tuple[AutoscalerInputs, Decision, dict[str, Any]]:
        """Inputs seen, the decision, and the policy state to hand back to Ray."""
        inputs = self.with_memory(inputs_from_context(ctx))
        max_replicas = ctx.capacity_adjusted_max_replicas
        if max_replicas_cap is not None and max_replicas_cap > 0:
            max_replicas = min(max_replicas, max_replicas_cap)
        config = dataclasses.replace(
            self.config,
            min_replicas=ctx.capacity_adjusted_min_replicas,
            max_replicas=max(ctx.capacity_adjusted_min_replicas, max_replicas),
        )
        decision = decide(inputs, state_from(ctx.policy_state or {}), config)
        state = {**(ctx.policy_state or {}), STATE_KEY: decision.state.to_dict()}
        return inputs, decision, state
