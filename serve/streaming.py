"""Server-sent events for ``"stream": true``: OpenAI's image-generation stream, plus sdserve's own.

OpenAI's events (shapes from the ``openai`` package's ``ImageGenPartialImageEvent`` and
``ImageGenCompletedEvent``): ``image_generation.partial_image`` for each preview,
``image_generation.completed`` for each final image (``usage`` is all zeros: no tokens are counted
here), and ``error`` in OpenAI's error shape, after which the stream ends. An edit's stream names
them ``image_edit.partial_image`` and ``image_edit.completed``, as OpenAI's edit stream does.

sdserve's extension events, which clients that do not know them skip (they test ``type``):
``sdserve.queued`` (requests ahead, estimated start), ``sdserve.started`` (replica, whether this was
its first call after a cold start), ``sdserve.progress`` (step, steps, eta_s) and ``sdserve.done``
(seed and timings, after the last completed event).
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from models.request import TEXT, GenerationRequest
from scheduler.outcomes import Outcome, Phase, refused
from serve.event_queue import until_done
from serve.openai_api import ApiError
from serve.protocol import EventKind, WorkerEvent, WorkerJob, WorkerReply
from serve.replies import reply_error

if TYPE_CHECKING:
    from serve.lifecycle import RequestLifecycle

log = logging.getLogger("ray.serve")

ZERO_USAGE = {"input_tokens": 0, "input_tokens_details": {"image_tokens": 0, "text_tokens": 0},
              "output_tokens": 0, "total_tokens": 0}


def sse(data: dict[str, Any]) -> bytes:
    """One server-sent event; its ``event:`` name is the payload's ``type``."""
    return f"event: {data['type']}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


class StreamFormat:
    """Turns one request's worker events and reply into the stream's events."""

    def __init__(self, request: GenerationRequest, quality: str | None, background: str | None) -> None:
        self.request = request
        self.image = {"size": f"{request.width}x{request.height}", "quality": quality or "auto",
                      "background": background or "auto", "output_format": "png"}
        # OpenAI's event names: image_generation.* for generations, image_edit.* for edits
        self.prefix = "image_generation" if request.kind == TEXT else "image_edit"
        self.started_at: float | None = None

    @staticmethod
    def queued(ahead: int, estimated_start_s: float | None) -> bytes:
        return sse({"type": "sdserve.queued", "position": ahead, "estimated_start_s": estimated_start_s})

    def event(self, event: WorkerEvent) -> bytes:
        if event.kind == EventKind.STARTED:
            self.started_at = time.monotonic()
            return sse({"type": "sdserve.started", "replica_id": event.replica_id, "cold": event.first_call,
                        "model_load": event.model_load, "model_load_s": round(event.model_load_s, 3)})
        if event.kind == EventKind.PARTIAL and event.png is not None:
            return sse({"type": f"{self.prefix}.partial_image", "b64_json": base64.b64encode(event.png).decode(),
                        "created_at": int(time.time()), **self.image, "partial_image_index": event.index})
        eta = None
        if self.started_at is not None and event.step:
            eta = round((time.monotonic() - self.started_at) / event.step * (event.steps - event.step), 3)
        return sse({"type": "sdserve.progress", "step": event.step, "steps": event.steps, "eta_s": eta})

    def completed(self, reply: WorkerReply) -> list[bytes]:
        created = int(time.time())
        events = [sse({"type": f"{self.prefix}.completed", "b64_json": base64.b64encode(png).decode(),
                       "created_at": created, **self.image, "usage": ZERO_USAGE}) for png in reply.images]
        events.append(sse({"type": "sdserve.done", "seed": self.request.seed, "queue_wait_s": reply.queue_wait_s,
                           "service_time_s": reply.service_time_s, "replica_id": reply.replica_id,
                           "batch_images": reply.batch_images}))
        return events

    @staticmethod
    def error(error: ApiError) -> bytes:
        return sse({"type": "error", **error.body()})


async def relay(events: "asyncio.Queue[WorkerEvent]", work: "asyncio.Future[Any]", fmt: StreamFormat
                ) -> AsyncIterator[bytes]:
    """The worker's events as stream chunks, as they arrive, until ``work`` (the call) is done."""
    async for event in until_done(events, work):
        yield fmt.event(event)


async def stream_request(lifecycle: RequestLifecycle, job: WorkerJob, client: str, started: float,
                         fmt: StreamFormat, queued: bytes, client_gone: tuple[type[BaseException], ...]
                         ) -> AsyncIterator[bytes]:
    """The request as server-sent events: ``queued`` first, then started, progress and previews as
    the worker reports them, then the images — or an ``error`` event. Counted and logged once, here."""
    events: asyncio.Queue[Any] = asyncio.Queue()
    work = asyncio.ensure_future(lifecycle.call(job, client, events.put_nowait))
    reply: WorkerReply | None = None
    try:
        yield queued
        async for chunk in relay(events, work, fmt):
            yield chunk
        reply = work.result()
        if reply.outcome != Outcome.OK:
            raise reply_error(reply)
        for chunk in fmt.completed(reply):
            yield chunk
        lifecycle.finish(Outcome.OK, started, job.request_id, status=200, phase=reply.phase, job=job, reply=reply)
    except ApiError as error:
        outcome = reply.outcome if reply is not None else refused(error.status)
        lifecycle.finish(outcome, started, job.request_id, status=error.status, code=error.code,
                         phase=reply.phase if reply else Phase.NONE, job=job, reply=reply)
        yield fmt.error(error)
    except client_gone:  # the client closed the stream: stop the work within a step
        work.cancel()
        lifecycle.finish(Outcome.CANCELLED, started, job.request_id, status=499, job=job)
        raise
    except Exception as exc:  # noqa: BLE001 - unexpected: reported in the stream, counted once
        log.exception("stream %s failed unexpectedly", job.request_id)
        lifecycle.finish(Outcome.ERROR, started, job.request_id, status=500, code="internal_error", job=job)
        yield fmt.error(ApiError(500, f"internal error: {type(exc).__name__}: {exc}", code="internal_error",
                                 type="server_error"))
