"""OOM isolation on real Ray Serve: fault injection at the models boundary, admission, start-up."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest

from scheduler.outcomes import Outcome
from serve.deploy import DeployError
from serve.fleet import state_name
from serve.settings import WORKER_DEPLOYMENT
from tests.conftest import CPU_PLAIN, AppPool, Deployed

pytestmark = pytest.mark.ray

URL = "/v1/images/generations"
INJECT = "testing.inject_oom_marker=POISON"


@CPU_PLAIN
def test_injected_oom_fails_only_its_request_and_the_replica_serves_on(app: Deployed) -> None:
    from ray import serve

    ooms = app.worker_stats()[0]["oom_count"]
    ok = app.client.post(URL, json={"prompt": "fine", "num_inference_steps": 2})
    poisoned = app.client.post(URL, json={"prompt": "POISON", "num_inference_steps": 2})
    after = app.client.post(URL, json={"prompt": "fine again", "num_inference_steps": 2})
    assert (ok.status_code, poisoned.status_code, after.status_code) == (200, 507, 200)
    assert poisoned.json()["error"]["code"] == Outcome.OUT_OF_MEMORY
    assert ok.headers["x-replica-id"] == after.headers["x-replica-id"]
    worker = serve.status().applications[app.app_name].deployments[WORKER_DEPLOYMENT]
    assert state_name(worker.status) == "HEALTHY"
    assert app.worker_stats()[0]["oom_count"] == ooms + 1


@pytest.mark.side_run
@pytest.mark.app("batched", INJECT, "batching.batch_wait_timeout_s=1.0")
def test_batch_of_four_with_one_poisoned_gives_three_200_and_one_507(app: Deployed) -> None:
    before = app.worker_stats()[0]
    prompts = ["a", "b POISON", "c", "d"]
    with ThreadPoolExecutor(4) as pool:
        responses = list(pool.map(
            lambda p: app.client.post(URL, json={"prompt": p, "size": "64x64", "num_inference_steps": 2}),
            prompts,
        ))
    assert [r.status_code for r in responses] == [200, 507, 200, 200]
    stats = app.worker_stats()[0]
    assert max(stats["requests_per_call"][len(before["requests_per_call"]):]) > 1  # they shared a batch first
    assert stats["oom_count"] - before["oom_count"] >= 2


@pytest.mark.app("cpu", "memory.cpu_budget_mb=8")
def test_request_that_never_fits_is_refused_before_the_pipeline(app: Deployed) -> None:
    calls = app.worker_stats()[0]["calls"]
    for _ in range(2):  # first refused by the worker, then by the ingress, which learnt the model
        response = app.client.post(URL, json={"prompt": "huge", "size": "512x512", "n": 4})
        assert response.status_code == 422, response.text
        error = response.json()["error"]
        assert error["code"] == "exceeds_memory_budget" and error["param"] == "size"
        assert "largest that fits" in error["message"]
    assert app.client.post(URL, json={"prompt": "small", "num_inference_steps": 2}).status_code == 200
    assert app.worker_stats()[0]["calls"] == calls + 1


#: One attempt at the constructor (Ray's default: 3 per replica), so the failure comes at once.
ONE_ATTEMPT = {WORKER_DEPLOYMENT: ["max_constructor_retry_count=1"]}


@pytest.mark.side_run
@pytest.mark.app("cpu", "model.id=nobody/no-such-model", deployments=ONE_ATTEMPT)
def test_model_that_cannot_load_fails_the_deploy_with_a_clear_message(app_pool: AppPool) -> None:
    with pytest.raises(DeployError, match="cannot load model"):
        app_pool.get("cpu", ["model.id=nobody/no-such-model"], ONE_ATTEMPT)
