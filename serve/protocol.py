"""What the ingress sends a worker replica and what comes back (pickled by Ray between them)."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from models.request import GenerationRequest

from scheduler.outcomes import OUTCOMES  # noqa: F401,E402 (re-exported: the one vocabulary)


@dataclass(frozen=True)
class WorkerJob:
    """One request on its way to a worker, with its deadline (unix seconds on *this* node's clock).

    Clocks of two nodes can disagree by more than a deadline's slack, so the times never travel as
    wall-clock values: when Ray pickles the job to send it to a replica (at dispatch, after any
    wait in the router's queue) they become durations — the time left and the time already waited
    — and the receiving node turns them back into times on its own clock. Only the transfer itself
    (milliseconds) goes uncounted.
    """

    request: GenerationRequest
    request_id: str
    accepted_at: float
    deadline: float | None = None
    job_id: str = field(default_factory=lambda: uuid.uuid4().hex)  # unique, unlike client ids

    def __getstate__(self) -> dict[str, Any]:
        now = time.time()
        state = dict(self.__dict__)
        state["accepted_at"] = now - self.accepted_at  # seconds waited so far
        state["deadline"] = None if self.deadline is None else self.deadline - now  # seconds left
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        now = time.time()
        state = dict(state)
        state["accepted_at"] = now - state["accepted_at"]
        if state["deadline"] is not None:
            state["deadline"] = now + state["deadline"]
        self.__dict__.update(state)


@dataclass(frozen=True)
class WorkerEvent:
    """Progress of one job on its replica, streamed to the ingress before the reply: ``started``
    when its pipeline call begins (so a deadline answer can say the job was running, and after how
    many steps), ``progress`` after denoising steps (throttled by the worker), ``partial`` with a
preview image at evenly spaced steps when the request asked for ``partial_images``."""

    kind: str  # "started" | "progress" | "partial" (a preview image)
    job_id: str
    step: int = 0
    steps: int = 0
    replica_id: str = ""
    first_call: bool = False  # "started": the replica's first call since its cold start
    png: bytes | None = None  # "partial": the preview, PNG
    index: int = 0  # "partial": 0-based preview number


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
    call_requests: int = 0  # requests in this job's pipeline call (adaptive setting)
    call_predicted_s: float | None = None  # the adaptive model's prediction for that call
    effective_capacity: int | None = None  # requests per call this replica would take now (adaptive)
