"""What the ingress sends a worker replica and what comes back (pickled by Ray between them)."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from models.request import GenerationRequest
from scheduler.outcomes import Outcome, Phase


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
    replica_id: str | None = None  # the worker replica the dispatcher chose (serve/routing.py)
    tenant: str = ""  # who sent it (serve/dispatcher.py ``tenant_of``): fairness, logs, metrics

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


class EventKind(StrEnum):
    STARTED = "started"
    PROGRESS = "progress"
    PARTIAL = "partial"  # a preview image


@dataclass(frozen=True)
class WorkerEvent:
    """Progress of one job on its replica, streamed to the ingress before the reply: ``started``
    when its pipeline call begins (so a deadline answer can say the job was running, and after how
    many steps), ``progress`` after denoising steps (throttled by the worker), ``partial`` with a
preview image at evenly spaced steps when the request asked for ``partial_images``."""

    kind: EventKind
    job_id: str
    step: int = 0
    steps: int = 0
    replica_id: str = ""
    first_call: bool = False  # "started": the replica's first call since its cold start
    model_load: str = "none"  # "started": where the call's checkpoint came from (none, host, disk)
    model_load_s: float = 0.0  # "started": seconds loading it and the call's adapters took
    png: bytes | None = None  # "partial": the preview, PNG
    index: int = 0  # "partial": 0-based preview number


@dataclass(frozen=True)
class CallFacts:
    """The pipeline call a request ran in (several requests' replies may name the same call)."""

    call_id: str
    images: int  # images in the call, all requests together
    requests: int = 1  # requests in the call
    predicted_s: float | None = None  # the adaptive batch-size rule's prediction for it
    memory_estimate_bytes: float | None = None  # measured calls only (every n-th)
    memory_peak_bytes: float | None = None
    model_load: str = "none"  # where the call's checkpoint came from: none (resident), host or disk
    model_load_s: float = 0.0  # seconds that load took, inside the call


@dataclass(frozen=True)
class ReplicaFacts:
    """The replica that answered, as it is now (sent with every reply; the ingress aggregates)."""

    replica_id: str
    cold_start_s: float | None = None  # its process start → ready
    load_time_s: float | None = None  # of which loading the model
    cold_start_phases: dict[str, float] | None = None  # seconds per phase (worker.py)
    oom_total: int = 0  # out-of-memory errors so far
    memory: dict[str, float] | None = None  # its memory model, for admission at the ingress
    capacity: int | None = None  # requests per call it would take now (adaptive setting)
    models: tuple[str, ...] | None = None  # checkpoints it holds loaded now (a catalog); None: all it serves
    host_models: tuple[str, ...] = ()  # checkpoints it keeps in host memory (a catalog with a host tier)
    adapters: tuple[tuple[str, str], ...] = ()  # (checkpoint, LoRA adapter) pairs loaded now


@dataclass
class WorkerReply:
    """The worker's answer for one request. Failures are values, not exceptions, so nothing is lost
    in Ray's exception wrapping and the ingress maps each outcome to one documented status."""

    outcome: Outcome
    images: list[bytes] = field(default_factory=list)
    message: str = ""
    code: str = ""  # the error code, when it says more than the outcome
    phase: Phase = Phase.NONE  # where a failure happened
    steps_done: int = 0
    steps_requested: int = 0
    queue_wait_s: float = 0.0
    service_time_s: float = 0.0
    call: CallFacts | None = None  # None: the request never reached a pipeline call
    replica: ReplicaFacts | None = None  # None: no replica answered (the ingress answered itself)

    @classmethod
    def for_job(cls, job: WorkerJob, outcome: Outcome, started: float, now: float, **fields: Any) -> "WorkerReply":
        """``job``'s reply: waited from acceptance to ``started``, served from then to ``now``."""
        return cls(outcome=outcome, steps_requested=job.request.num_inference_steps,
                   queue_wait_s=max(0.0, started - job.accepted_at), service_time_s=max(0.0, now - started), **fields)

    @property
    def replica_id(self) -> str:
        return self.replica.replica_id if self.replica is not None else ""

    @property
    def batch_images(self) -> int:
        return self.call.images if self.call is not None else 0
