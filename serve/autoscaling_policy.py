"""The Ray adapter of the queue-depth autoscaler: Ray's ``AutoscalingContext`` in, a replica count out.

Wired into configs as ``policy: {policy_function: serve.autoscaling_policy:QueueDepthPolicy,
policy_kwargs: {...}}``; ``policy_kwargs`` are :class:`AutoscalerConfig` fields. Ray instantiates the
class once per deployment and calls it ~10×/s. This module only translates: what to do is decided
by :func:`scheduler.autoscaling.decide`.

Inputs: queued and running requests from Ray's context (the proxy's queue included), running replicas
(``current_num_replicas``) and starting ones (``target - current`` while the target is ahead), and the
service and cold-start times replicas measure and report via ``record_autoscaling_stats``.
min/max replicas come from Ray's own ``autoscaling_config`` (capacity-adjusted), so they are set once.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from typing import Any

from scheduler.autoscaling import AutoscalerConfig, AutoscalerInputs, Decision
from scheduler.policy_adapter import QueueDepthDecider, inputs_from_context  # noqa: F401 (re-export)

log = logging.getLogger("ray.serve")


class QueueDepthPolicy:
    """Ray's class-callable policy; ``policy_kwargs`` become the :class:`AutoscalerConfig`."""

    #: Besides every change, the decision log is refreshed this often (it feeds metric gauges).
    REFRESH_S = 1.0

    #: How long the cluster's GPU count is cached (``follow_cluster_gpus``).
    GPU_CACHE_S = 5.0

    def __init__(
        self, follow_cluster_gpus: bool = False, gpus_per_replica: float = 1.0, **policy_kwargs: Any
    ) -> None:
        """``follow_cluster_gpus``: cap max replicas at the GPUs the cluster has now divided by
        ``gpus_per_replica`` (a fixed GPU fleet). Leave it off where GPU nodes are added on demand
        (KubeRay with min 0 GPU workers): there the cap would stay at zero."""
        self.config = AutoscalerConfig(**policy_kwargs)
        self.decider = QueueDepthDecider(self.config)
        self.follow_cluster_gpus = follow_cluster_gpus
        self.gpus_per_replica = gpus_per_replica
        self._gpu_cap: tuple[float, int] | None = None  # (read at, replicas the GPUs allow)
        self._last_logged: tuple[int, str] | None = None
        self._last_recorded = 0.0
        self._decision_log: Any = None  # held: a named actor lives while a handle to it does

    def gpu_replica_cap(self, now: float) -> int:
        """Replicas the cluster's GPUs can hold, re-read every ``GPU_CACHE_S``."""
        if self._gpu_cap is None or now - self._gpu_cap[0] >= self.GPU_CACHE_S:
            import ray

            gpus = ray.cluster_resources().get("GPU", 0.0)
            self._gpu_cap = (now, int(gpus // self.gpus_per_replica))
        return self._gpu_cap[1]

    def __call__(self, ctx: Any) -> tuple[int, dict[str, Any]]:
        cap = self.gpu_replica_cap(ctx.current_time or time.time()) if self.follow_cluster_gpus else None
        inputs, decision, state = self.decider.decide(ctx, cap)  # no GPU at all (a CPU run): no cap
        self._report(ctx, inputs, decision)
        return decision.desired, state

    def _report(self, ctx: Any, inputs: AutoscalerInputs, decision: Decision) -> None:
        """Log a decision when the count or the kind of reason changes; record it then too, and
        at least every ``REFRESH_S`` so the gauges built from the log stay current."""
        desired, reason = decision.desired, decision.reason
        key = (desired, decision.kind)
        changed = key != self._last_logged
        if changed:
            self._last_logged = key
            log.info("autoscaler %s: desired %d (%s)", ctx.deployment_name, desired, reason)
        if not changed and inputs.now - self._last_recorded < self.REFRESH_S:
            return
        import ray

        if not ray.is_initialized():  # outside Ray (unit tests): logging is all there is
            return
        self._last_recorded = inputs.now
        try:
            from serve.decision_log import decision_log

            if self._decision_log is None:
                self._decision_log = decision_log()
            self._decision_log.record.remote(
                {
                    "time": inputs.now,
                    "deployment": f"{ctx.app_name}/{ctx.deployment_name}",
                    "desired": desired,
                    "reason": reason,
                    **{k: v for k, v in dataclasses.asdict(inputs).items() if k != "now"},
                },
                changed,
            )
        except Exception:  # the decision must never fail because its record could not be written
            log.exception("could not record autoscaling decision")
