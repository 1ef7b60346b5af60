"""Where autoscaling decisions can be read back: a small named Ray actor.

The policy runs inside Serve's controller; this actor is the one place both it (writer) and the
ingress (reader, ``GET /v1/scheduler``) can reach. Only changes are recorded, so it stays quiet at
the policy's ~10 calls a second.
"""

from __future__ import annotations

from collections import deque
from typing import Any

import ray

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
