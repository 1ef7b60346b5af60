"""Fuzzing the real server: schemathesis over the OpenAPI schema it serves, for every
route, and hypothesis over raw request bodies. Zero 5xx, every error in OpenAI's shape, and the
server still serves afterwards. SIMULATED backend with fast steps, so valid requests finish fast."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
import schemathesis.specs.openapi.schemas  # noqa: F401  (see below)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import SIM_ARGS, Deployed

# schemathesis imports most of itself lazily, on the first schema it loads, and pytest rewrites a
# plugin's modules with ast.parse as they are imported. Once, under load, that import failed inside
# the test with CPython 3.11's "AST constructor recursion depth mismatch" (reported from threaded
# programs: python/cpython#106905, pytest-dev/pytest#10874), so the bulk of it is imported here, at
# collection, before Ray's threads and the other tests' objects are around.
KEY = "fuzz-key"
HEADERS = {"Authorization": f"Bearer {KEY}"}
KEYS_FILE = Path(tempfile.gettempdir()) / "sdserve-test-fuzz-keys.txt"
KEYS_FILE.write_text(KEY + "\n")
pytestmark = [pytest.mark.ray, pytest.mark.app(
    "sim-single", *SIM_ARGS, "simulation.step_time_s={1: 0.001, 8: 0.002}", "simulation.scale_with_pixels=false",
    "autoscaling.policy.min_replicas=1", "deadlines.default_timeout_s=30", f"auth.api_keys_file={KEYS_FILE}")]


@pytest.fixture
def fuzzed(app: Deployed) -> Deployed:
    return app


def _assert_answer_is_clean(response: Any) -> None:
    status = response.status_code
    assert status < 500 or status in (503, 504), f"{status}: {response.text[:300]}"
    if status >= 400:
        error = json.loads(response.content)["error"]
        assert set(error) == {"message", "type", "param", "code"} and error["message"], error


def test_every_route_survives_schema_fuzzing(fuzzed: Deployed) -> None:
    """Every operation of the schema the server itself serves, with schemathesis' generated cases
    (path, query, headers and bodies, valid and invalid)."""
    schema = schemathesis.openapi.from_dict(fuzzed.client.get("/openapi.json", headers=HEADERS).json())
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {op.path for op in operations} >= {"/v1/images/generations", "/v1/images/edits", "/v1/models", "/metrics",
                                              "/readyz"}
    statuses: dict[str, list[int]] = {}
    for operation in operations:
        @given(case=operation.as_strategy())
        @settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck))
        def call(case: Any) -> None:
            response = case.call(base_url=fuzzed.url, headers={**(case.headers or {}), **HEADERS}, timeout=60)
            _assert_answer_is_clean(response)
            statuses.setdefault(operation.path, []).append(response.status_code)

        call()
    generated = statuses["/v1/images/generations"]
    # the generator reached both sides of validation: accepted images and refused bodies
    assert 200 in generated and any(400 <= s < 500 for s in generated), sorted(set(generated))
    assert any(400 <= s < 500 for s in statuses["/v1/images/edits"])  # its multipart schema was fuzzed too


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=30),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4),
    max_leaves=12,
)
FIELDS = st.fixed_dictionaries({}, optional={
    "prompt": JSON, "n": JSON, "size": JSON | st.from_regex(r"\d{1,5}x\d{1,5}", fullmatch=True),
    "num_inference_steps": JSON, "guidance_scale": JSON, "seed": JSON, "timeout_s": JSON,
    "response_format": JSON, "model": JSON, "negative_prompt": JSON,
})


@given(body=FIELDS | JSON, raw=st.booleans(), junk=st.binary(max_size=64))
@settings(max_examples=120, deadline=None, suppress_health_check=list(HealthCheck))
def test_random_bodies_get_clean_answers(fuzzed: Deployed, body: Any, raw: bool, junk: bytes) -> None:
    content = junk if raw else json.dumps(body).encode()
    response = fuzzed.client.post("/v1/images/generations", content=content,
                                  headers={**HEADERS, "Content-Type": "application/json"})
    _assert_answer_is_clean(response)


def test_server_still_serves_after_fuzzing(fuzzed: Deployed) -> None:
    response = fuzzed.client.post("/v1/images/generations", headers=HEADERS,
                                  json={"prompt": "after the storm", "size": "64x64", "num_inference_steps": 2})
    assert response.status_code == 200, response.text
    assert httpx.get(f"{fuzzed.url}/healthz").status_code == 200
