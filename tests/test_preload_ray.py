"""Preloading on a real Ray Serve: two checkpoints' bursts reach a fleet at zero, sdserve's loop
starts two replicas, and each loads the checkpoint its burst needs during its start (tiny catalog,
one checkpoint on each replica's device). The prefetch is off here: with it, both checkpoints are in
the node's page cache, so the replica that is up first may copy the other burst's checkpoint from
there instead of leaving it to the replica still starting, and who serves what is a race
(tests/test_catalog.py checks the prefetch on Ray)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.conftest import Deployed
from tests.test_autoscaling_ray import FAST_POLICY, _wait_for

pytestmark = pytest.mark.ray

CATALOG = ["model.backend=diffusers", "model.device=cpu", "model.catalog.tiny-1=tiny:1", "model.catalog.tiny-2=tiny:2",
           "model.resident_models=1", "resources.num_cpus=0.25", "limits.default_size=64x64",
           "autoscaling.policy.max_replicas=2", "autoscaling.policy.default_service_time_s=0.5",
           "model.prefetch=false"]


@pytest.mark.app("sim-single", *CATALOG, *FAST_POLICY)
def test_two_bursts_from_zero_each_new_replica_preloads_the_checkpoint_its_burst_needs(app: Deployed) -> None:
    _wait_for(lambda: sum(app.worker_replicas().values()) == 0, 60, "zero replicas after the keep-alive")

    def post(model: str):
        return app.client.post("/v1/images/generations", json={
            "prompt": "a harbour", "model": model, "size": "64x64", "num_inference_steps": 2, "timeout_s": 120})

    with ThreadPoolExecutor(8) as pool:
        responses = list(pool.map(post, ["tiny-1", "tiny-2"] * 4))
    assert [r.status_code for r in responses] == [200] * 8, [r.text for r in responses if r.status_code != 200]
    first: dict[str, tuple[float, str, str]] = {}  # replica → its first call: (queue wait, checkpoint, load)
    for model, response in zip(["tiny-1", "tiny-2"] * 4, responses):
        assert response.headers["x-model"] == model
        call = (float(response.headers["x-queue-wait-seconds"]), model, response.headers["x-model-load"])
        replica = response.headers["x-replica-id"]
        first[replica] = min(first.get(replica, call), call)
    # each new replica's first call found its checkpoint loaded (its start loaded it), and the two
    # were told different checkpoints; later calls may spread a checkpoint (docs/scheduling.md)
    assert len(first) == 2, first
    assert sorted((model, load) for _, model, load in first.values()) == [("tiny-1", "none"), ("tiny-2", "none")], first
