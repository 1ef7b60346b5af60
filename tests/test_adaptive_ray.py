"""The adaptive setting on a real Ray Serve: a tight-deadline request is not put in a
batch that would make it miss, while loose ones are batched. SIMULATED backend whose call time grows
with the batch (10 steps: 0.5 s alone, 0.8 s for 2, 1.4 s for 4, 2.6 s for 8)."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tests.conftest import SIM_ARGS, Deployed

pytestmark = pytest.mark.ray

URL = "/v1/images/generations"
BODY = {"prompt": "adaptive", "size": "64x64", "num_inference_steps": 10}


@pytest.mark.app("sim-adaptive", *SIM_ARGS, "simulation.step_time_s={1: 0.05, 2: 0.08, 4: 0.14, 8: 0.26}",
                 "simulation.scale_with_pixels=false", "autoscaling.policy.min_replicas=1",
                 "autoscaling.policy.max_replicas=1", "batching.batch_wait_timeout_s=0.2")
def test_tight_deadline_runs_alone_loose_ones_batch(app: Deployed) -> None:
    def burst(bodies: list[dict]) -> list[httpx.Response]:
        barrier = threading.Barrier(len(bodies))

        def send(body: dict) -> httpx.Response:
            barrier.wait()
            return app.client.post(URL, json=body)

        with ThreadPoolExecutor(len(bodies)) as pool:
            return list(pool.map(send, bodies))

    for round_ in range(5):  # teach the replica its latency model (AIMD grows the batches meanwhile)
        assert all(r.status_code == 200 for r in burst([{**BODY, "seed": i, "timeout_s": 60} for i in range(4)]))
    tight = {**BODY, "seed": 99, "timeout_s": 1.0}  # ~0.75 s left at its call: 1 image (0.5 s) fits, 2 (0.8 s) not
    responses = burst([tight] + [{**BODY, "seed": i, "timeout_s": 60} for i in range(5)])
    assert [r.status_code for r in responses] == [200] * 6, [r.text[:120] for r in responses]
    assert responses[0].headers["x-batch-images"] == "1", responses[0].headers
    loose_batches = [int(r.headers["x-batch-images"]) for r in responses[1:]]
    assert max(loose_batches) > 1, loose_batches
    metrics = app.client.get("/metrics").text
    assert "sdserve_batch_requests_bucket" in metrics
    misses = [line for line in metrics.splitlines() if line.startswith("sdserve_batch_deadline_misses_total")]
    assert misses and all(float(line.split()[-1]) == 0 for line in misses), misses
