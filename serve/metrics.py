"""sdserve's Prometheus metrics, served on ``GET /metrics`` by the ingress.

Aggregation: every request enters and leaves through the ingress, and every worker reply carries
what the worker measured (queue wait, service time, steps, batch size, memory, the replica's cold
start and OOM count). The ingress records all of it in one registry, so ``/metrics`` covers every
worker replica without scraping them. The autoscaler's gauges are read from its decision log at
scrape time. Run one ingress replica (as the shipped configs do) or scrape each ingress replica.
Ray's own ``ray_serve_*`` metrics stay available on Ray's metrics export port.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Collection
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

from scheduler.outcomes import Outcome, Phase
from serve.protocol import WorkerReply

REGISTRY = CollectorRegistry(auto_describe=True)
#: Tenants with a metric label of their own (the rest share 'other').
MAX_TENANT_LABELS = 50
_LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 3, 5, 8, 13, 21, 34, 55, 89, 144, 300, 600)

REQUESTS = Counter(
    "sdserve_requests", "Requests by how they ended; 'phase' says where a deadline hit (queued or running).",
    ["app", "outcome", "phase"], registry=REGISTRY,
)
REQUESTS_BY_KIND = Counter(
    "sdserve_requests_by_kind", "Requests by kind (text; img2img and inpaint: edits; edit: an edit refused "
    "before its form was read) and how they ended.", ["app", "kind", "outcome"], registry=REGISTRY,
)
LATENCY = Histogram(
    "sdserve_request_latency_seconds", "End-to-end time in the ingress, by outcome.",
    ["app", "outcome"], buckets=_LATENCY_BUCKETS, registry=REGISTRY,
)
QUEUE_WAIT = Histogram(
    "sdserve_queue_wait_seconds", "Accepted → pipeline start, of successful requests.",
    ["app"], buckets=_LATENCY_BUCKETS, registry=REGISTRY,
)
TENANT_QUEUE_WAIT = Histogram(
    "sdserve_tenant_queue_wait_seconds", "Accepted → pipeline start of successful requests, per tenant (the "
    f"first {MAX_TENANT_LABELS} tenants seen and every weighted one by name, the rest as 'other').",
    ["app", "tenant"], buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300), registry=REGISTRY)
SERVICE_TIME = Histogram(
    "sdserve_service_time_seconds", "Pipeline start → end, of successful requests.",
    ["app"], buckets=_LATENCY_BUCKETS, registry=REGISTRY,
)
STEP_TIME = Histogram(
    "sdserve_step_time_seconds", "Mean denoising step time of each successful pipeline call.",
    ["app"], buckets=(0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5), registry=REGISTRY,
)
BATCH_IMAGES = Histogram(
    "sdserve_batch_images", "Images per successful pipeline call.",
    ["app"], buckets=(1, 2, 3, 4, 6, 8, 12, 16, 24, 32), registry=REGISTRY,
)
BATCH_REQUESTS = Histogram(
    "sdserve_batch_requests", "Requests per successful pipeline call (the adaptive setting chooses it).",
    ["app"], buckets=(1, 2, 3, 4, 5, 6, 8, 12, 16, 32), registry=REGISTRY,
)
PREDICTION_RATIO = Histogram(
    "sdserve_batch_actual_over_predicted_ratio", "Adaptive setting: measured / predicted pipeline-call time.",
    ["app"], buckets=(0.5, 0.75, 0.9, 1.0, 1.1, 1.25, 1.5, 2, 3), registry=REGISTRY,
)
BATCH_MISSES = Counter(
    "sdserve_batch_deadline_misses", "Requests that missed their deadline while running in a call of several "
    "(adaptive setting: should stay near 0).", ["app"], registry=REGISTRY,
)
MEMORY_RATIO = Histogram(
    "sdserve_memory_estimate_over_peak_ratio", "Estimated / measured peak memory per pipeline call.",
    ["app"], buckets=(0.25, 0.5, 0.75, 0.9, 1.0, 1.1, 1.25, 1.5, 2, 3, 5), registry=REGISTRY,
)
PREFETCHES = Counter(
    "sdserve_prefetches", "Checkpoints the ingress read ahead into the node's page cache (model.prefetch): a queued "
    "request needed one that no worker replica held.", ["app", "model"], registry=REGISTRY)
COLD_STARTS = Counter("sdserve_replica_cold_starts", "Worker replicas seen starting.", ["app"], registry=REGISTRY)
COLD_START_TIME = Histogram(
    "sdserve_replica_cold_start_seconds", "Worker process start → ready (model loaded, calibrated).",
    ["app"], buckets=(1, 2, 5, 10, 20, 30, 60, 120, 300), registry=REGISTRY,
)
COLD_START_PHASE = Histogram(
    "sdserve_replica_cold_start_phase_seconds",
    "Where a worker replica's cold start went: process_start, imports, replica_setup, weights, calibration.",
    ["app", "phase"], buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 15, 30, 60, 120), registry=REGISTRY,
)
MODEL_LOAD_TIME = Histogram(
    "sdserve_model_load_seconds", "Time to load the model in a worker replica.",
    ["app"], buckets=(0.5, 1, 2, 5, 10, 20, 30, 60, 120), registry=REGISTRY,
)
MODEL_LOADS = Histogram(
    "sdserve_call_model_load_seconds", "Checkpoint and LoRA loads inside pipeline calls, by where the checkpoint came "
    "from (none: resident, only LoRAs loaded; host: copied from host memory; disk); calls with nothing to load are not counted.",
    ["app", "tier"], buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 40, 60), registry=REGISTRY)
OOMS = Counter("sdserve_oom_events", "Out-of-memory errors raised by pipeline calls (bisection retries included).",
               ["app"], registry=REGISTRY)
IN_PROGRESS = Gauge("sdserve_requests_in_progress", "Requests the ingress is waiting on (queued + running).",
                    ["app"], registry=REGISTRY)
QUEUED = Gauge("sdserve_queued_requests", "Requests waiting for a worker, as the autoscaler last saw them.",
               ["deployment"], registry=REGISTRY)
IN_FLIGHT = Gauge("sdserve_in_flight_requests", "Requests running on workers, as the autoscaler last saw them.",
                  ["deployment"], registry=REGISTRY)
IN_FLIGHT_PER_REPLICA = Gauge("sdserve_in_flight_per_replica", "In-flight requests per running replica.",
                              ["deployment"], registry=REGISTRY)
DESIRED = Gauge("sdserve_autoscaler_desired_replicas", "The autoscaler's last decision.", ["deployment"],
                registry=REGISTRY)
RUNNING = Gauge("sdserve_autoscaler_running_replicas", "Running replicas at the last decision.", ["deployment"],
                registry=REGISTRY)
STARTING = Gauge("sdserve_autoscaler_starting_replicas", "Starting replicas at the last decision.", ["deployment"],
                 registry=REGISTRY)
DECISION = Gauge("sdserve_autoscaler_decision_info", "1 for the kind of the last decision's reason.",
                 ["deployment", "reason"], registry=REGISTRY)


def tenant_label(tenant: str, named: set[str], weighted: Collection[str]) -> str:
    """A tenant's metric label: its own name for the first :data:`MAX_TENANT_LABELS` tenants seen
    and every tenant with a configured weight, else 'other' (a label per address would grow
    without bound)."""
    if tenant in named or tenant in weighted:
        return tenant
    if len(named) < MAX_TENANT_LABELS:
        named.add(tenant)
        return tenant
    return "other"


class MetricsRecorder:
    """Turns replies and decisions into metrics; remembers what it has already counted."""

    def __init__(self, app: str) -> None:
        self.app = app
        self._replica_ooms: dict[str, int] = {}
        self._calls: OrderedDict[str, None] = OrderedDict()  # recent call ids, counted once each
        self._tenants: set[str] = set()  # tenants with a label of their own
        self.weighted_tenants: Collection[str] = ()  # queue.tenant_weights' keys: always named
        BATCH_MISSES.labels(app)  # exported at 0 from the start
        for outcome in Outcome:  # every outcome exported from the start, at 0, so rates work
            REQUESTS.labels(app, outcome, Phase.NONE)

    def request(self, outcome: Outcome, phase: Phase, latency_s: float | None, kind: str = "text") -> None:
        REQUESTS.labels(self.app, outcome, phase).inc()
        REQUESTS_BY_KIND.labels(self.app, kind, outcome).inc()
        if latency_s is not None:
            LATENCY.labels(self.app, outcome).observe(latency_s)

    def tenant_wait(self, tenant: str, queue_wait_s: float) -> None:
        TENANT_QUEUE_WAIT.labels(self.app, tenant_label(tenant, self._tenants, self.weighted_tenants)).observe(
            queue_wait_s)

    def reply(self, reply: WorkerReply) -> None:
        """What the worker measured: per request, per pipeline call, and per replica."""
        if reply.replica is not None:
            self._replica(reply)
        call = reply.call
        if reply.outcome == Outcome.DEADLINE and reply.phase == Phase.RUNNING and call and call.requests > 1:
            BATCH_MISSES.labels(self.app).inc()
        if reply.outcome != Outcome.OK:
            return
        QUEUE_WAIT.labels(self.app).observe(reply.queue_wait_s)
        SERVICE_TIME.labels(self.app).observe(reply.service_time_s)
        if call is None or call.call_id in self._calls:
            return
        self._calls[call.call_id] = None
        if len(self._calls) > 4096:
            self._calls.popitem(last=False)
        BATCH_IMAGES.labels(self.app).observe(call.images)
        BATCH_REQUESTS.labels(self.app).observe(call.requests)
        if call.predicted_s:
            PREDICTION_RATIO.labels(self.app).observe(reply.service_time_s / call.predicted_s)
        if reply.steps_done:
            STEP_TIME.labels(self.app).observe(reply.service_time_s / reply.steps_done)
        if call.memory_estimate_bytes and call.memory_peak_bytes:
            MEMORY_RATIO.labels(self.app).observe(call.memory_estimate_bytes / call.memory_peak_bytes)
        if call.model_load != "none" or call.model_load_s > 0:
            MODEL_LOADS.labels(self.app, call.model_load).observe(call.model_load_s)

    def _replica(self, reply: WorkerReply) -> None:
        """A replica's facts: its cold start when first seen, its OOMs as they grow."""
        replica = reply.replica
        assert replica is not None
        if replica.replica_id not in self._replica_ooms:
            self._replica_ooms[replica.replica_id] = 0
            COLD_STARTS.labels(self.app).inc()
            if replica.cold_start_s is not None:
                COLD_START_TIME.labels(self.app).observe(replica.cold_start_s)
            if replica.load_time_s is not None:
                MODEL_LOAD_TIME.labels(self.app).observe(replica.load_time_s)
            for phase, seconds in (replica.cold_start_phases or {}).items():
                COLD_START_PHASE.labels(self.app, phase).observe(seconds)
        new = replica.oom_total - self._replica_ooms[replica.replica_id]
        if new > 0:
            OOMS.labels(self.app).inc(new)
            self._replica_ooms[replica.replica_id] = replica.oom_total

    def render(self, in_progress: int, decisions: dict[str, Any]) -> bytes:
        IN_PROGRESS.labels(self.app).set(in_progress)
        for deployment, d in decisions.get("latest", {}).items():
            QUEUED.labels(deployment).set(d["queued"])
            IN_FLIGHT.labels(deployment).set(d["in_flight"])
            IN_FLIGHT_PER_REPLICA.labels(deployment).set(d["in_flight"] / max(1, d["running_replicas"]))
            DESIRED.labels(deployment).set(d["desired"])
            RUNNING.labels(deployment).set(d["running_replicas"])
            STARTING.labels(deployment).set(d["starting_replicas"])
            kind = d["kind"]
            for labels in list(DECISION._metrics):
                if labels[0] == deployment:
                    DECISION.labels(*labels).set(0)
            DECISION.labels(deployment, kind).set(1)
        return generate_latest(REGISTRY)
