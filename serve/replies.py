"""A worker's answer as the client sees it: status, error body and headers, and the progress the
ingress heard on the way (so an answer it gives itself at a deadline is still truthful)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import Request

from scheduler.outcomes import STATUS, Outcome, Phase
from serve.openai_api import ApiError
from serve.protocol import WorkerEvent, WorkerReply

#: OpenAI's error ``type`` of each failed outcome a worker can reply.
_ERROR_TYPE = {Outcome.DEADLINE: "timeout_error", Outcome.SHED: "timeout_error",
               Outcome.CANCELLED: "client_closed_request", Outcome.INVALID: "invalid_request_error"}


def reply_error(reply: WorkerReply) -> ApiError:
    """A failed reply as the client's error: its outcome's status, and where it failed."""
    status, error_type = STATUS.get(reply.outcome, 500), _ERROR_TYPE.get(reply.outcome, "server_error")
    headers = {"X-Steps-Done": str(reply.steps_done)}
    if reply.outcome in (Outcome.DEADLINE, Outcome.SHED) and reply.phase:
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

    def reset(self) -> None:
        """Retried on another replica: nothing heard of that one yet."""
        self.started, self.step, self.steps = False, 0, 0

    def heard(self, event: WorkerEvent) -> None:
        self.started = True
        self.step, self.steps = max(self.step, event.step), event.steps

    @property
    def phase(self) -> Phase:
        return Phase.RUNNING if self.started else Phase.QUEUED

    def late_reply(self, waited_s: float) -> WorkerReply:
        if self.started:
            return WorkerReply(
                Outcome.DEADLINE, phase=Phase.RUNNING, steps_done=self.step, steps_requested=self.steps,
                message=f"deadline passed after {waited_s:.2f}s, while running (step {self.step} of {self.steps})",
            )
        return WorkerReply(Outcome.DEADLINE, phase=Phase.QUEUED,
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
        "X-Model-Load": reply.call.model_load if reply.call is not None else "none",
        "X-Model-Load-Seconds": f"{reply.call.model_load_s if reply.call is not None else 0.0:.4f}",
    }


def request_log_line(request_id: str, outcome: str, phase: str, status: int, code: str, latency_s: float,
                     request: Any, reply: WorkerReply | None, tenant: str | None = None,
                     kind: str | None = None) -> dict[str, Any]:
    """The one structured log line of a request (``event: sdserve_request``)."""
    return {
        "event": "sdserve_request", "request_id": request_id, "tenant": tenant,
        "outcome": outcome, "phase": phase, "status": status, "code": code,
        "latency_s": round(latency_s, 4),
        "queue_wait_s": round(reply.queue_wait_s, 4) if reply else None,
        "service_time_s": round(reply.service_time_s, 4) if reply else None,
        "steps_done": reply.steps_done if reply else None,
        "steps_requested": request.num_inference_steps if request else None,
        "kind": kind,
        "size": f"{request.width}x{request.height}" if request else None,
        "n": request.n if request else None,
        "replica_id": reply.replica_id if reply else None,
    }


def client_address(request: Request) -> str:
    """Who sent it, when there are no keys to tell clients apart."""
    return request.client.host if request.client else "unknown"
