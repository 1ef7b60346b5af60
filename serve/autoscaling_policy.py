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

from scheduler.autoscaling import AutoscalerConfig
from scheduler.policy_adapter import QueueDepthDecider, inputs_from_context  # noqa: F401 (re-export)

from serve.cluster import GpuReplicaCap
from serve.decision_log import DecisionReporter

log = logging.getLogger("ray.serve")


class QueueDepthPolicy:
    """Ray's class-callable policy; ``policy_kwargs`` become the :class:`AutoscalerConfig`."""

    #: Besides every change, the decision log is refreshed this often (it feeds metric gauges).
    REFRESH_S = 1.0

    def __init__(
        self, follow_cluster_gpus: bool = False, gpus_per_replica: float = 1.0, **policy_kwargs: Any
    ) -> None:
        """``follow_cluster_gpus``: cap max replicas at the cluster's GPUs (see :class:`GpuReplicaCap`)."""
        self.config = AutoscalerConfig(**policy_kwargs)
        self.decider = QueueDepthDecider(self.config)
        self.gpu_cap = GpuReplicaCap(gpus_per_replica) if follow_cluster_gpus else None
        self.reporter = DecisionReporter(self.REFRESH_S)

    def __call__(self, ctx: Any) -> tuple[int, dict[str, Any]]:
        cap = self.gpu_cap(ctx.current_time or time.time()) if self.gpu_cap else None
        inputs, decision, state = self.decider.decide(ctx, cap)
        self.reporter.report(f"{ctx.app_name}/{ctx.deployment_name}", inputs.now, decision.desired,
                             decision.reason, inputs)
        return decision.desired, state
