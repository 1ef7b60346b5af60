"""What the ingress sends a worker replica and what comes back (pickled by Ray between them)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field

from models.request import GenerationRequest

#: Every accepted request ends in exactly one of these.
OUTCOMES = (
    "ok", "deadline_exceeded", "shed", "overloaded", "out_of_memory", "invalid", "cancelled", "error",
)


@dataclass(frozen=True)
class WorkerJob:
    """One request on its way to a worker, with its absolute deadline (unix seconds)."""

    request: GenerationRequest
    request_id: str
    accepted_at: float
    deadline: float | None = None
    job_id: str = field(default_factory=lambda: uuid.uuid4().hex)  # unique, unlike client ids


@dataclass
class WorkerReply:
    """The worker's answer for one job. Failures are values, not exceptions, so nothing is lost
    in Ray's exception wrapping and the ingress maps each outcome to one documented status."""

    outcome: str
    images: list[bytes] = field(default_factory=list)
    message: str = ""
    steps_done: int = 0
    steps_requested: int = 0
    queue_wait_s: float = 0.0
    service_time_s: float = 0.0
    batch_images: int = 0
    replica_id: str = ""
    phase: str = ""  # where a failure happened: "queued" or "running"
    code: str = ""  # the error code, when it says more than the outcome
    memory: dict[str, float] | None = None  # the replica's memory model, for ingress admission
    # For metrics, aggregated by the ingress: the pipeline call this job ran in, its memory estimate
    # and measured peak, and facts about the replica (cold start, model load, OOMs so far).
    call_id: str = ""
    memory_estimate_bytes: float | None = None
    memory_peak_bytes: float | None = None
    replica_cold_start_s: float | None = None
    replica_load_time_s: float | None = None
    replica_cold_start_phases: dict[str, float] | None = None  # seconds per phase (worker.py)
    replica_oom_total: int = 0
