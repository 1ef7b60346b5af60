"""Streaming: OpenAI's image stream consumed by the ``openai`` SDK itself, sdserve's
extension events, and a client closing the stream mid-run stopping the work within a step."""

from __future__ import annotations

import base64
import io
import json
import time
from typing import Any

import httpx
import pytest
from PIL import Image

from scheduler.outcomes import Outcome
from tests.conftest import ONE_SIM_REPLICA, SIM_ARGS, Deployed
from tests.test_replica_slot import _replica_actor

URL = "/v1/images/generations"
pytestmark = pytest.mark.ray


def _events(response: httpx.Response) -> list[dict[str, Any]]:
    events = []
    for block in response.text.split("\n\n"):
        data = [line[6:] for line in block.splitlines() if line.startswith("data: ")]
        if data:
            events.append(json.loads("\n".join(data)))
    return events


@pytest.mark.app("cpu")
def test_the_openai_sdk_consumes_the_stream_to_a_decodable_image(app: Deployed) -> None:
    from openai import OpenAI

    client = OpenAI(base_url=f"{app.url}/v1", api_key="unused", max_retries=0)
    stream = client.images.generate(prompt="a lighthouse", model="tiny", size="64x64", stream=True,
                                    partial_images=2, extra_body={"num_inference_steps": 12, "seed": 3})
    seen = list(stream)
    types = [event.type for event in seen]
    partial = [e for e in seen if e.type == "image_generation.partial_image"]
    completed = [e for e in seen if e.type == "image_generation.completed"]
    assert [e.partial_image_index for e in partial] == [0, 1], types
    assert len(completed) == 1 and types.index("image_generation.completed") > types.index("image_generation.partial_image")
    final = completed[0]
    assert final.size == "64x64" and final.output_format == "png" and final.usage.total_tokens == 0
    assert Image.open(io.BytesIO(base64.b64decode(final.b64_json))).size == (64, 64)
    assert Image.open(io.BytesIO(base64.b64decode(partial[0].b64_json))).size == (64, 64)


@pytest.mark.app("cpu")
def test_extension_events_and_their_order(app: Deployed) -> None:
    body = {"prompt": "events", "size": "64x64", "num_inference_steps": 10, "n": 2, "stream": True,
            "partial_images": 1, "seed": 5}
    response = app.client.post(URL, json=body)
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
    events = _events(response)
    types = [e["type"] for e in events]
    assert types[0] == "sdserve.queued" and types[1] == "sdserve.started"
    assert (events[1]["model_load"], events[1]["model_load_s"]) == ("none", 0)  # the whole catalog is resident
    assert "sdserve.progress" in types and types.count("image_generation.partial_image") == 1
    assert types[-3:] == ["image_generation.completed", "image_generation.completed", "sdserve.done"]
    assert events[-1]["seed"] == 5 and events[-1]["service_time_s"] > 0
    progress = [e for e in events if e["type"] == "sdserve.progress"]
    assert progress[-1]["step"] == progress[-1]["steps"] == 10


@pytest.mark.app("cpu")
def test_errors_before_and_during_the_stream(app: Deployed) -> None:
    refused = app.client.post(URL, json={"prompt": "x", "partial_images": 5, "stream": True})
    assert refused.status_code == 422 and refused.json()["error"]["param"] == "partial_images"
    needs_stream = app.client.post(URL, json={"prompt": "x", "partial_images": 1})
    assert needs_stream.status_code == 422
    late = app.client.post(URL, json={"prompt": "late", "size": "128x128", "num_inference_steps": 100,
                                          "timeout_s": 0.5, "stream": True})
    assert late.status_code == 200  # the stream had begun: the failure is an event in OpenAI's shape
    last = _events(late)[-1]
    assert last["type"] == "error" and last["error"]["code"] in (Outcome.DEADLINE, Outcome.SHED)


STEP_S = 0.3


@pytest.mark.app("sim-single", *SIM_ARGS, *ONE_SIM_REPLICA, f"simulation.step_time_s={{1: {STEP_S}}}")
def test_closing_the_stream_stops_the_work_within_a_step(app: Deployed) -> None:
    import ray

    app.wait_for_workers(1)
    actor = _replica_actor(app.app_name)
    steps, counted = app.worker_stats()[0]["steps"], app.outcome_counts()
    body = {"prompt": "close me", "size": "64x64", "num_inference_steps": 40, "stream": True}  # 12 s
    with httpx.Client(base_url=app.url, timeout=30) as client:
        with client.stream("POST", URL, json=body) as response:
            for line in response.iter_lines():
                if line.startswith("data: ") and json.loads(line[6:])["type"] == "sdserve.progress":
                    break  # running: hang up now
        closed = time.monotonic()
    while ray.get(actor.get_num_ongoing_requests.remote()) and time.monotonic() - closed < 10:
        time.sleep(0.05)
    stopped_after = time.monotonic() - closed
    assert stopped_after < 1.0 + 2 * STEP_S, f"the replica was busy {stopped_after:.2f}s after the hang-up"
    assert app.worker_stats()[0]["steps"] - steps < 40  # it did not run to the end
    deadline = time.monotonic() + 10
    while app.outcome_counts().get(Outcome.CANCELLED, 0) == counted.get(Outcome.CANCELLED, 0) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert app.outcome_counts().get(Outcome.CANCELLED, 0) == counted.get(Outcome.CANCELLED, 0) + 1
