"""The worker deployment's request router: each job goes to the replica the dispatcher chose.

Ray 2.60's pluggable request router (``request_router_config.request_router_class``) runs in the
process that holds the deployment handle — the ingress — and is asked, for each request, which of
the running replicas it may go to. The dispatcher (``serve/dispatcher.py``) has put the replica's
id in the job, so the answer is that replica alone. The router derives from Ray's plain
``RequestRouter``, not the power-of-two router with its FIFO mixin: the FIFO mixin hands a replica
found for one request to whichever request is oldest, which would send a job to a replica chosen
for another.

A job without a target (the dispatcher is off) goes to any replica, Ray's queue-length probe
choosing among them. A target the handle does not know yet (a replica that just became RUNNING
reaches Serve's long-poll a moment after the dispatcher's read) is waited for; one still unknown
after ``FALLBACK_AFTER_S`` (the replica stopped meanwhile) lets the job go to any replica rather
than wait for ever.
"""

from __future__ import annotations

import time
from typing import Any

from ray.serve.request_router import PendingRequest, RequestRouter, RunningReplica

#: A job whose target replica is unknown this long goes to any replica.
FALLBACK_AFTER_S = 2.0


def target_of(pending_request: PendingRequest | None) -> str | None:
    """The replica id the dispatcher put in the request's job, if any."""
    if pending_request is None or not pending_request.args:
        return None
    job: Any = pending_request.args[0]
    return getattr(job, "replica_id", None)


class DispatchedRouter(RequestRouter):
    async def choose_replicas(
        self, candidate_replicas: list[RunningReplica], pending_request: PendingRequest | None = None,
    ) -> list[list[RunningReplica]]:
        target = target_of(pending_request)
        if pending_request is not None:  # a failed attempt backs off (else Ray's loop retries at once, spinning)
            pending_request.routing_context.should_backoff = True
        if target is None:
            return [candidate_replicas]
        chosen = [r for r in candidate_replicas if r.replica_id.unique_id == target]
        if chosen:
            return [chosen]
        if pending_request is not None and time.time() - pending_request.created_at > FALLBACK_AFTER_S:
            return [candidate_replicas]
        return []
