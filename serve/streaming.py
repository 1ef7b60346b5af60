"""Server-sent events for ``"stream": true``: OpenAI's image-generation stream, plus sdserve's own.

OpenAI's events (shapes from the ``openai`` package's ``ImageGenPartialImageEvent`` and
``ImageGenCompletedEvent``): ``image_generation.partial_image`` for each preview,
``image_generation.completed`` for each final image (``usage`` is all zeros: no tokens are counted
here), and ``error`` in OpenAI's error shape, after which the stream ends.

sdserve's extension events, which clients that do not know them skip (they test ``type``):
``sdserve.queued`` (requests ahead, estimated start), ``sdserve.started`` (replica, whether this was
its first call after a cold start), ``sdserve.progress`` (step, steps, eta_s) and ``sdserve.done``
(seed and timings, after the last completed event).
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import AsyncIterator
from typing import Any

from models.request import GenerationRequest
from serve.event_queue import until_done
from serve.openai_api import ApiError
from serve.protocol import WorkerEvent, WorkerReply

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
        self.started_at: float | None = None

    def queued(self, ahead: int, estimated_start_s: float | None) -> bytes:
        return sse({"type": "sdserve.queued", "position": ahead, "estimated_start_s": estimated_start_s})

    def event(self, event: WorkerEvent) -> bytes:
        if event.kind == "started":
            self.started_at = time.monotonic()
            return sse({"type": "sdserve.started", "replica_id": event.replica_id, "cold": event.first_call})
        if event.kind == "partial" and event.png is not None:
            return sse({"type": "image_generation.partial_image", "b64_json": base64.b64encode(event.png).decode(),
                        "created_at": int(time.time()), **self.image, "partial_image_index": event.index})
        eta = None
        if self.started_at is not None and event.step:
            eta = round((time.monotonic() - self.started_at) / event.step * (event.steps - event.step), 3)
        return sse({"type": "sdserve.progress", "step": event.step, "steps": event.steps, "eta_s": eta})

    def completed(self, reply: WorkerReply) -> list[bytes]:
        created = int(time.time())
        events = [sse({"type": "image_generation.completed", "b64_json": base64.b64encode(png).decode(),
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
