"""Streaming (issue #15): OpenAI's image stream consumed by the ``openai`` SDK itself, sdserve's
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

from tests.conftest import Deployed, deployed
from tests.test_replica_slot import _replica_actor

URL = "/v1/images/generations"


@pytest.fixture(scope="module")
def cpu_app(ray_cluster: dict[str, Any]) -> Any:
    with deployed(ray_cluster, "cpu") as app:
        yield app


def _events(response: httpx.Response) -> list[dict[str, Any]]:
    events = []
    for block in response.text.split("\n\n"):
        data = [line[6:] for line in block.splitlines() if line.startswith("data: ")]
        if data:
            events.append(json.loads("\n".join(data)))
    return events


def test_the_openai_sdk_consumes_the_stream_to_a_decodable_image(cpu_app: Deployed) -> None:
    from openai import OpenAI

    client = OpenAI(base_url=f"{cpu_app.url}/v1", api_key="unused", max_retries=0)
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


def test_extension_events_and_their_order(cpu_app: Deployed) -> None:
    body = {"prompt": "events", "size": "64x64", "num_inference_steps": 10, "n": 2, "stream": True,
            "partial_images": 1, "seed": 5}
    response = cpu_app.client.post(URL, json=body)
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
    events = _events(response)
    types = [e["type"] for e in events]
    assert types[0] == "sdserve.queued" and types[1] == "sdserve.started"
    assert "sdserve.progress" in types and types.count("image_generation.partial_image") == 1
    assert types[-3:] == ["image_generation.completed", "image_generation.completed", "sdserve.done"]
    assert events[-1]["seed"] == 5 and events[-1]["service_time_s"] > 0
    progress = [e for e in events if e["type"] == "sdserve.progress"]
    assert progress[-1]["step"] == progress[-1]["steps"] == 10


def test_errors_before_and_during_the_stream(cpu_app: Deployed) -> None:
    refused = cpu_app.client.post(URL, json={"prompt": "x", "partial_images": 5, "stream": True})
    assert refused.status_code == 422 and refused.json()["error"]["param"] == "partial_images"
    needs_stream = cpu_app.client.post(URL, json={"prompt": "x", "partial_images": 1})
    assert needs_stream.status_code == 422
    late = cpu_app.client.post(URL, json={"prompt": "late", "size": "128x128", "num_inference_steps": 100,
                                          "timeout_s": 0.5, "stream": True})
    assert late.status_code == 200  # the stream had begun: the failure is an event in OpenAI's shape
    last = _events(late)[-1]
    assert last["type"] == "error" and last["error"]["code"] in ("deadline_exceeded", "shed")


def test_closing_the_stream_stops_the_work_within_a_step(ray_cluster: dict[str, Any]) -> None:
    import ray

    step_s = 0.3
    overrides = [f"simulation.step_time_s={{1: {step_s}}}", "simulation.load_time_s=0",
                 "simulation.scale_with_pixels=false", "autoscaling.policy.min_replicas=1"]
    with deployed(ray_cluster, "sim-single", overrides) as app:
        actor = _replica_actor(app.app_name)
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
        assert stopped_after < 1.0 + 2 * step_s, f"the replica was busy {stopped_after:.2f}s after the hang-up"
        stats = app.worker_stats()[0]
        assert stats["steps"] < 40, stats  # it did not run to the end
        metrics = app.client.get("/metrics").text
        assert 'sdserve_requests_total{app="sdserve",outcome="cancelled",phase=""} 1.0' in metrics
