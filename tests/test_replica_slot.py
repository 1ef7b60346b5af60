"""Ray's view of a worker replica's slot against its pipeline thread.

When Ray cancels a request (the client went away), the replica's slot must stay taken until the
pipeline thread has really returned; otherwise the router sends the next request to a replica
that is still busy and it queues there, invisible to Ray and to the autoscaler.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from serve.settings import WORKER_DEPLOYMENT
from tests.conftest import ONE_SIM_REPLICA, SIM_ARGS, Deployed

URL = "/v1/images/generations"
STEP_S = 2.0  # one simulated denoising step: a cancel lands mid-step and the step must finish


def _replica_actor(app_name: str) -> Any:
    import ray

    names = [a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
             if a["name"].startswith(f"SERVE_REPLICA::{app_name}#{WORKER_DEPLOYMENT}#")]
    assert len(names) == 1, names
    return ray.get_actor(names[0], namespace="serve")


@pytest.mark.ray
@pytest.mark.app("sim-single", *SIM_ARGS, *ONE_SIM_REPLICA, f"simulation.step_time_s={{1: {STEP_S}}}")
def test_a_cancelled_request_holds_its_slot_until_the_pipeline_returns(app: Deployed) -> None:
    import ray

    app.wait_for_workers(1)
    actor = _replica_actor(app.app_name)

    def ongoing() -> int:
        return ray.get(actor.get_num_ongoing_requests.remote())

    impatient = httpx.Client(base_url=app.url, timeout=STEP_S * 0.4)
    body = {"prompt": "cancel me", "size": "64x64", "num_inference_steps": 5, "timeout_s": 60}
    with ThreadPoolExecutor(1) as pool:
        sent = time.monotonic()
        future = pool.submit(impatient.post, URL, json=body)
        deadline = time.monotonic() + 10
        while ongoing() == 0 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert ongoing() == 1, "the request never reached the replica"
        try:
            future.result()
            raise AssertionError("the client should have hung up")
        except httpx.TimeoutException:
            hung_up = time.monotonic()
    impatient.close()
    # The pipeline is inside its first 2 s step when the client hangs up (~0.8 s in): it
    # stops at that step's end, ~1.2 s later. Ray's view must say busy until then.
    views = []
    while time.monotonic() - hung_up < 3 * STEP_S:
        views.append((time.monotonic() - hung_up, ongoing()))
        if views[-1][1] == 0:
            break
        time.sleep(0.05)
    freed_after = views[-1][0]
    assert views[-1][1] == 0, f"the slot was never released: {views[-5:]}"
    step_end = STEP_S - (hung_up - sent)
    assert freed_after >= step_end - 0.5, (
        f"Ray freed the slot {freed_after:.2f}s after the hang-up, the pipeline's step ended "
        f"{step_end:.2f}s after it: a request sent then would queue invisibly inside the replica")
    after = app.client.post(URL, json={**body, "num_inference_steps": 1})
    assert after.status_code == 200, after.text
