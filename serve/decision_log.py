"""Where autoscaling decisions can be read back: a small named Ray actor.

Decisions are made inside Serve's controller (the Ray policy hook) or in the ingress (sdserve's own
control loop); this actor is the one place the deciders (writers) and the ingress (reader,
``GET /v1/scheduler`` and the metrics) can reach. Only changes are kept in the recent list, so it
stays quiet at ~10 decisions a second.
"""

from __future__ import annotations

import dataclasses
import logging
from collections import deque
from typing import Any

import ray

log = logging.getLogger("ray.serve")

ACTOR_NAME = "sdserve-autoscaler-decisions"
NAMESPACE = "sdserve"


@ray.remote(num_cpus=0)
class DecisionLog:
    def __init__(self, keep: int = 200) -> None:
        self._recent: deque[dict[str, Any]] = deque(maxlen=keep)
        self._latest: dict[str, dict[str, Any]] = {}

    def record(self, decision: dict[str, Any], changed: bool = True) -> None:
        """Keep the latest per deployment; the recent list holds changes only."""
        if changed:
            self._recent.append(decision)
        self._latest[decision["deployment"]] = decision

    def read(self, limit: int = 50) -> dict[str, Any]:
        return {"latest": dict(self._latest), "recent": list(self._recent)[-limit:] if limit > 0 else []}


def decision_log() -> Any:
    """The cluster's decision log actor, created on first use by the policy inside Serve's
    controller. Not detached: it lives while the policy holds its handle, so redeploying or
    ``serve.shutdown()`` never leaves a stale one (with old code) behind."""
    return DecisionLog.options(name=ACTOR_NAME, namespace=NAMESPACE, get_if_exists=True).remote()


async def read_decisions(limit: int = 50) -> dict[str, Any]:
    """The latest decision per deployment and the most recent ones (empty before the first)."""
    try:
        actor = ray.get_actor(ACTOR_NAME, namespace=NAMESPACE)
    except ValueError:
        return {"latest": {}, "recent": []}
    return await actor.read.remote(limit)


class DecisionReporter:
    """Logs a decision when the count or the kind of its reason changes, and records it then and at
    least every ``refresh_s`` (the gauges built from the log stay current)."""

    def __init__(self, refresh_s: float = 1.0) -> None:
        self.refresh_s = refresh_s
        self._last_logged: tuple[int, str] | None = None
        self._last_recorded = 0.0
        self._actor: Any = None  # held: a named actor lives while a handle to it does

    def report(self, deployment: str, now: float, desired: int, reason: str, inputs: Any) -> None:
        kind = reason.split(":")[0]
        changed = (desired, kind) != self._last_logged
        if changed:
            self._last_logged = (desired, kind)
            log.info("autoscaler %s: desired %d (%s)", deployment, desired, reason)
        if (not changed and now - self._last_recorded < self.refresh_s) or not ray.is_initialized():
            return
        self._last_recorded = now
        counts = {f.name: getattr(inputs, f.name) for f in dataclasses.fields(inputs)
                  if f.name not in ("now", "backlog", "slot_free_in_s")}
        try:
            if self._actor is None:
                self._actor = decision_log()
            self._actor.record.remote(
                {"time": now, "deployment": deployment, "desired": desired, "reason": reason, **counts}, changed)
        except Exception:  # a decision must never fail because its record could not be written
            log.exception("could not record autoscaling decision")
