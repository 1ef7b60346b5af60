"""Streaming without a server: preview steps, the latent preview, and the events' shapes as the
``openai`` package's own types parse them."""

from __future__ import annotations

import base64
import io
import json

import pytest
import torch
from PIL import Image

from models.preview import latent_preview_png, placeholder_preview_png, preview_steps
from models.request import GenerationRequest
from scheduler.outcomes import Outcome
from serve.openai_api import ApiError
from serve.protocol import EventKind, ReplicaFacts, WorkerEvent, WorkerReply
from serve.streaming import StreamFormat


@pytest.mark.parametrize(
    ("steps", "count", "expected"),
    [(25, 0, []), (25, 1, [12]), (25, 2, [8, 17]), (25, 3, [6, 12, 19]), (4, 3, [1, 2, 3]), (1, 2, [])],
)
def test_previews_are_evenly_spaced_before_the_end(steps: int, count: int, expected: list[int]) -> None:
    assert preview_steps(steps, count) == expected


def test_latent_preview_is_a_png_of_the_requested_size() -> None:
    latents = torch.randn(2, 4, 8, 12)
    image = Image.open(io.BytesIO(latent_preview_png(latents, 1, 96, 64)))
    assert image.size == (96, 64) and image.mode == "RGB"
    assert Image.open(io.BytesIO(placeholder_preview_png(64, 64, 0.5))).size == (64, 64)


def _data(chunk: bytes) -> dict:
    event, data = chunk.decode().strip().split("\n")
    payload = json.loads(data.removeprefix("data: "))
    assert event == f"event: {payload['type']}"
    return payload


def test_events_parse_as_the_openai_sdk_types() -> None:
    from openai.types import ImageGenCompletedEvent, ImageGenPartialImageEvent

    request = GenerationRequest("x", 64, 64, 10, 7.5, seed=7)
    fmt = StreamFormat(request, None, None)
    png = placeholder_preview_png(64, 64, 0.3)
    partial = ImageGenPartialImageEvent.model_validate(
        _data(fmt.event(WorkerEvent(EventKind.PARTIAL, "j", 3, 10, png=png, index=0))))
    assert partial.partial_image_index == 0 and base64.b64decode(partial.b64_json) == png
    chunks = fmt.completed(WorkerReply(Outcome.OK, images=[png], service_time_s=1.0, replica=ReplicaFacts("r")))
    completed = ImageGenCompletedEvent.model_validate(_data(chunks[0]))
    assert completed.size == "64x64" and completed.quality == "auto" and completed.usage.total_tokens == 0
    assert _data(chunks[-1]) == {"type": "sdserve.done", "seed": 7, "queue_wait_s": 0.0, "service_time_s": 1.0,
                                 "replica_id": "r", "batch_images": 0}
    error = _data(StreamFormat.error(ApiError(504, "late", code=Outcome.DEADLINE, type="timeout_error")))
    assert error == {"type": "error", "error": {"message": "late", "type": "timeout_error", "param": None,
                                                "code": Outcome.DEADLINE}}
    fmt.event(WorkerEvent("started", "j", 0, 10))
    progress = _data(fmt.event(WorkerEvent("progress", "j", 5, 10)))
    assert progress["step"] == 5 and progress["eta_s"] is not None and progress["eta_s"] >= 0
