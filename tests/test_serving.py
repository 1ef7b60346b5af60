"""The serving path end to end: real Ray Serve on loopback, real HTTP clients, the shipped configs."""

from __future__ import annotations

import base64
import io
import tempfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

from tests.conftest import Deployed

KEYS_FILE = Path(tempfile.gettempdir()) / "sdserve-test-serving-keys.txt"
KEYS_FILE.write_text("# comment\nsecret-one\nsecret-two\n")


def _png_sizes(response: httpx.Response) -> list[tuple[int, int]]:
    assert response.status_code == 200, response.text
    body = response.json()
    assert isinstance(body["created"], int)
    return [Image.open(io.BytesIO(base64.b64decode(d["b64_json"]))).size for d in body["data"]]


def _concurrent_posts(app: Deployed, bodies: list[dict[str, Any]]) -> list[httpx.Response]:
    with ThreadPoolExecutor(len(bodies)) as pool:
        return list(pool.map(lambda b: app.client.post("/v1/images/generations", json=b), bodies))


@pytest.mark.side_run
@pytest.mark.app("single")
class TestSingleConfig:
    def test_png_of_requested_size(self, app: Deployed) -> None:
        response = app.client.post(
            "/v1/images/generations", json={"prompt": "a lighthouse", "size": "96x64", "n": 2,
                                            "num_inference_steps": 4}
        )
        assert _png_sizes(response) == [(96, 64), (96, 64)]
        assert response.headers["x-request-id"]
        assert float(response.headers["x-service-time-seconds"]) > 0

    def test_one_pipeline_call_at_a_time_per_replica(self, app: Deployed) -> None:
        body = {"prompt": "a boat", "size": "64x64", "num_inference_steps": 8}
        responses = _concurrent_posts(app, [body] * 4)
        assert [r.status_code for r in responses] == [200] * 4
        replicas = {r.headers["x-replica-id"] for r in responses}
        stats = app.worker_stats(replicas=len(replicas))
        assert {s["replica_id"] for s in stats} >= replicas
        assert all(s["max_active_calls"] == 1 for s in stats), stats
        assert all(set(s["requests_per_call"]) == {1} for s in stats), stats
        assert sum(s["calls"] for s in stats) >= 4

    def test_openai_sdk_gets_a_decodable_image(self, app: Deployed) -> None:
        from openai import OpenAI

        client = OpenAI(base_url=f"{app.url}/v1", api_key="unused", max_retries=0)
        result = client.images.generate(
            prompt="a watercolor fox", model="tiny",
            size="64x64", n=1, response_format="b64_json",
        )
        image = Image.open(io.BytesIO(base64.b64decode(result.data[0].b64_json)))
        assert image.size == (64, 64)
        assert client.models.list().data[0].id == "tiny"

    @pytest.mark.parametrize(
        ("body", "status", "param"),
        [
            ({"n": 1}, 422, "prompt"),
            ({"prompt": ""}, 422, "prompt"),
            ({"prompt": "a", "n": 9}, 422, "n"),
            ({"prompt": "a", "size": "64"}, 422, "size"),
            ({"prompt": "a", "size": "60x64"}, 422, "size"),
            ({"prompt": "a", "size": "2048x2048"}, 422, "size"),
            ({"prompt": "a", "num_inference_steps": 1000}, 422, "num_inference_steps"),
            ({"prompt": "a", "guidance_scale": 100}, 422, "guidance_scale"),
            ({"prompt": "a", "model": "dall-e-3"}, 404, "model"),
            ({"prompt": "a", "response_format": "url"}, 422, "response_format"),
        ],
    )
    def test_bad_input_gets_its_4xx_in_openai_shape(
        self, app: Deployed, body: dict, status: int, param: str
    ) -> None:
        response = app.client.post("/v1/images/generations", json=body)
        assert response.status_code == status, response.text
        error = response.json()["error"]
        assert error["param"] == param and error["message"] and error["code"]
        assert response.headers["x-request-id"]

    def test_malformed_json_oversized_body_and_unknown_route(self, app: Deployed) -> None:
        bad_json = app.client.post(
            "/v1/images/generations", content=b'{"prompt": ', headers={"X-Request-Id": "rid-42"}
        )
        assert bad_json.status_code == 400 and bad_json.json()["error"]["code"] == "invalid_json"
        assert bad_json.headers["x-request-id"] == "rid-42"
        huge = app.client.post("/v1/images/generations", json={"prompt": "x" * 100_000})
        assert huge.status_code == 413 and huge.json()["error"]["code"] == "request_too_large"

        def chunked() -> Iterator[bytes]:  # no Content-Length: the limit must hold while reading
            yield b'{"prompt": "'
            for _ in range(100):
                yield b"x" * 1000
            yield b'"}'

        streamed = app.client.post("/v1/images/generations", content=chunked())
        assert "content-length" not in streamed.request.headers
        assert streamed.status_code == 413 and streamed.json()["error"]["code"] == "request_too_large"
        missing = app.client.get("/v1/nothing-here")
        assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"
        assert app.client.get("/healthz").json() == {"status": "ok"}

    def test_a_client_cannot_switch_off_cancel_on_disconnect(self, app: Deployed) -> None:
        response = app.client.post("/v1/images/generations", json={"prompt": "a"},
                                      headers={"x-request-disconnect-disabled": "?1"})
        assert response.status_code == 400, response.text
        assert response.json()["error"]["param"] == "x-request-disconnect-disabled"


@pytest.mark.app("cpu", "limits.body_read_timeout_s=1")
def test_a_slow_upload_gets_408_and_frees_the_ingress(app: Deployed) -> None:
    import time

    def trickle() -> Iterator[bytes]:
        yield b'{"prompt": "'
        for _ in range(6):
            time.sleep(0.5)
            yield b"x"
        yield b'"}'

    started = time.monotonic()
    slow = app.client.post("/v1/images/generations", content=trickle())
    assert slow.status_code == 408, slow.text
    assert slow.json()["error"]["code"] == "request_timeout"
    assert time.monotonic() - started < 3.5
    fine = app.client.post("/v1/images/generations", json={"prompt": "ok", "num_inference_steps": 2})
    assert fine.status_code == 200


@pytest.mark.side_run
@pytest.mark.app("batched")
class TestBatchedConfig:
    def test_png_of_requested_size(self, app: Deployed) -> None:
        response = app.client.post(
            "/v1/images/generations", json={"prompt": "a castle", "size": "64x96", "num_inference_steps": 3}
        )
        assert _png_sizes(response) == [(64, 96)]

    def test_concurrent_requests_share_a_batch_and_sizes_never_mix(self, app: Deployed) -> None:
        same = {"prompt": "a tree", "size": "64x64", "num_inference_steps": 6}
        other = {"prompt": "a tree", "size": "128x64", "num_inference_steps": 6}
        responses = _concurrent_posts(app, [same] * 4 + [other] * 2)
        sizes = [_png_sizes(r) for r in responses]
        assert sizes == [[(64, 64)]] * 4 + [[(128, 64)]] * 2
        stats = app.worker_stats(replicas=len({r.headers["x-replica-id"] for r in responses}))
        assert max(size for s in stats for size in s["requests_per_call"]) > 1, stats
        assert max(int(r.headers["x-batch-images"]) for r in responses) > 1


@pytest.mark.app("cpu", f"auth.api_keys_file={KEYS_FILE}")
def test_api_keys_gate_everything_but_healthz(app: Deployed) -> None:
    body = {"prompt": "a key", "num_inference_steps": 2}
    assert app.client.post("/v1/images/generations", json=body).status_code == 401
    wrong = app.client.post(
        "/v1/images/generations", json=body, headers={"Authorization": "Bearer nope"}
    )
    assert wrong.status_code == 401 and wrong.json()["error"]["code"] == "invalid_api_key"
    key = {"Authorization": "Bearer secret-one"}
    for route in ("/v1/models", "/v1/scheduler", "/metrics", "/docs", "/redoc", "/openapi.json"):
        refused = app.client.get(route)
        assert refused.status_code == 401, (route, refused.status_code)
        assert refused.json()["error"]["code"] == "invalid_api_key", route
        assert app.client.get(route, headers=key).status_code == 200, route
    right = app.client.post(
        "/v1/images/generations", json=body, headers={"Authorization": "Bearer secret-two"}
    )
    assert _png_sizes(right) == [(64, 64)]
    assert app.client.get("/healthz").status_code == 200
    served = app.client.get("/openapi.json", headers=key).json()["paths"]
    assert "/v1/images/generations" in served and "/docs" not in served
    from ray import serve

    assert serve.get_app_handle(app.app_name).exposure.remote().result()["keys_required"] is True


def test_gpu_config_fails_fast_when_the_cluster_lacks_gpus(ray_cluster: dict[str, Any]) -> None:
    from serve.app import NoGPUError, check_gpus_exist
    from serve.settings import ResourceSettings

    check_gpus_exist(ResourceSettings(num_gpus=1))  # 4 fake GPUs in the session cluster
    with pytest.raises(NoGPUError, match="has 4 GPU"):
        check_gpus_exist(ResourceSettings(num_gpus=8))


@pytest.mark.parametrize(
    ("keys", "host", "allow", "refused"),
    [
        (frozenset(), "0.0.0.0", False, True),  # open API on the network: refuse to start
        (frozenset(), "10.1.2.3", False, True),
        (frozenset(), "127.0.0.1", False, False),  # loopback: reachable from this machine only
        (frozenset(), "::1", False, False),
        (frozenset({"k"}), "0.0.0.0", False, False),  # keys: fine anywhere
        (frozenset(), "0.0.0.0", True, False),  # explicitly allowed (someone in front authenticates)
        (frozenset(), None, False, False),  # bind address unknown (not under Serve)
    ],
)
def test_no_keys_on_a_network_address_refuses_to_start(
    keys: frozenset[str], host: str | None, allow: bool, refused: bool
) -> None:
    from serve.admission import refuse_open_network
    from serve.settings import AuthSettings

    auth = AuthSettings(allow_open_on_network=allow)
    if refused:
        with pytest.raises(RuntimeError, match=r"http_options.host.*SDSERVE_API_KEYS"):
            refuse_open_network(keys, host, auth)
    else:
        refuse_open_network(keys, host, auth)
