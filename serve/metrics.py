"""sdserve's Prometheus metrics, defined once (prometheus-client), served on ``GET /metrics``.

Outcome accounting lives in the ingress, where every request starts and ends: each accepted request
increments ``sdserve_requests_total`` exactly once with its outcome.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter

REGISTRY = CollectorRegistry(auto_describe=True)

REQUESTS = Counter(
    "sdserve_requests",
    "Requests by how they ended (ok, deadline_exceeded, shed, overloaded, out_of_memory, "
    "invalid, cancelled, error) and, for deadlines, where (queued or running).",
    ["app", "outcome", "phase"],
    registry=REGISTRY,
)
