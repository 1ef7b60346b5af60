"""A worker's answer as the client sees it: status, error body and headers, and the progress the
ingress heard on the way (so an answer it gives itself at a deadline is still truthful)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import Request

from scheduler.outcomes import INVALID, OVERLOADED, RATE_LIMITED
from serve.openai_api import ApiError
from serve.protocol import WorkerEvent, WorkerReply

#: Worker outcome → (HTTP status, error type) for everything that is not "ok".
_OUTCOME_STATUS = {
    "deadline_exceeded": (504, "timeout_error"),
    "shed": (504, "timeout_error"),
    "cancelled": (499, "client_closed_request"),
    "out_of_memory": (507, "server_error"),
    "invalid": (422, "invalid_request_error"),
    "error": (500, "server_error"),
}


def reply_error(reply: WorkerReply) -> ApiError:
    status, error_type = _OUTCOME_STATUS.get(reply.outcome, (500, "server_error"))
    headers = {"X-Steps-Done": str(reply.steps_done)}
    if reply.outcome in ("deadline_exceeded", "shed") and reply.phase:
        headers["X-Deadline-Phase"] = reply.phase
    return ApiError(
        status, reply.message or reply.outcome, code=reply.code or reply.outcome, type=error_type,
        headers=headers, param="size" if reply.code == "exceeds_memory_budget" else None,
    )


class JobProgress:
    """What the ingress has heard of a job from its worker: whether its pipeline call started, and
    how many steps it had done — so a deadline answered here names the phase the job was really in."""

    def __init__(self) -> None:
        self.started = False
        self.step = 0
        self.steps = 0

    def heard(self, event: WorkerEvent) -> None:
        self.started = True
        self.step, self.steps = max(self.step, event.step), event.steps

    def late_reply(self, waited_s: float) -> WorkerReply:
        if self.started:
            return WorkerReply(
                "deadline_exceeded", phase="running", steps_done=self.step, steps_requested=self.steps,
                message=f"deadline passed after {waited_s:.2f}s, while running (step {self.step} of {self.steps})",
            )
        return WorkerReply("deadline_exceeded", phase="queued",
                           message=f"deadline passed after {waited_s:.2f}s waiting for a worker")


async def follow(response: Any, progress: JobProgress,
                 on_event: Callable[[WorkerEvent], None] | None = None) -> WorkerReply:
    """Read a job's event stream to its reply, passing each event on (for a streaming client)."""
    async for item in response:
        if isinstance(item, WorkerReply):
            return item
        progress.heard(item)
        if on_event is not None:
            on_event(item)
    raise RuntimeError("the worker's stream ended without a reply")


def timing_headers(reply: WorkerReply) -> dict[str, str]:
    """Where the time went, for benchmarks: queue wait vs service, and who served it."""
    return {
        "X-Queue-Wait-Seconds": f"{reply.queue_wait_s:.4f}",
        "X-Service-Time-Seconds": f"{reply.service_time_s:.4f}",
        "X-Batch-Images": str(reply.batch_images),
        "X-Steps-Done": str(reply.steps_done),
        "X-Replica-Id": reply.replica_id,
    }




def request_log_line(request_id: str, outcome: str, phase: str, status: int, code: str, latency_s: float,
                     request: Any, reply: WorkerReply | None) -> dict[str, Any]:
    """The one structured log line of a request (``event: sdserve_request``)."""
    return {
        "event": "sdserve_request", "request_id": request_id,
        "outcome": outcome, "phase": phase, "status": status, "code": code,
        "latency_s": round(latency_s, 4),
        "queue_wait_s": round(reply.queue_wait_s, 4) if reply else None,
        "service_time_s": round(reply.service_time_s, 4) if reply else None,
        "steps_done": reply.steps_done if reply else None,
        "steps_requested": request.num_inference_steps if request else None,
        "size": f"{request.width}x{request.height}" if request else None,
        "n": request.n if request else None,
        "replica_id": reply.replica_id if reply else None,
    }


#: Outcome of a request refused before it reached a worker, by status (other 4xx: invalid).
ADMISSION_OUTCOME = {503: OVERLOADED, 429: RATE_LIMITED}


def admission_outcome(status: int) -> str:
    return ADMISSION_OUTCOME.get(status, INVALID)


def client_address(request: Request) -> str:
    """Who sent it, when there are no keys to tell clients apart."""
    return request.client.host if request.client else "unknown"


def ewma(mean: float | None, value: float, alpha: float = 0.3) -> float:
    return value if mean is None else alpha * value + (1 - alpha) * mean
