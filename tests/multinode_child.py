"""Run in a subprocess by test_multinode.py: a 3-node Ray cluster on loopback (head + two workers
with 2 fake GPUs each) serving configs/sim-single.yaml with one GPU per replica.

Checks placement (the replicas Serve's controller reports running on each node; no dashboard, which
Ray's state API would need), serves a burst, then removes a worker node while requests are
in flight and keeps sending. Prints one JSON line with what it saw.
"""

from __future__ import annotations

import json
import socket
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import ray
from ray.cluster_utils import Cluster
from ray.serve.context import _get_global_client

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from serve.deploy import deploy  # noqa: E402
from serve.fleet import RUNNING_STATES, state_name  # noqa: E402
from serve.settings import INGRESS_DEPLOYMENT, WORKER_DEPLOYMENT, load_config  # noqa: E402

BODY = {"prompt": "cluster", "size": "64x64", "num_inference_steps": 10, "timeout_s": 60}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _worker_nodes(app_name: str) -> dict[str, int]:
    """Running worker replicas per node, as Serve's controller reports them."""
    details = _get_global_client().get_serve_details()
    counts: dict[str, int] = {}
    for replica in details["applications"][app_name]["deployments"][WORKER_DEPLOYMENT]["replicas"]:
        if state_name(replica["state"]) in RUNNING_STATES:
            counts[replica["node_id"]] = counts.get(replica["node_id"], 0) + 1
    return counts


def main() -> None:
    cluster = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 2, "num_gpus": 0, "resources": {"sdserve_head": 1}, "include_dashboard": False},
    )
    workers = [cluster.add_node(num_cpus=2, num_gpus=2) for _ in range(2)]
    ray.init(address=cluster.address, namespace="serve", logging_level="ERROR")
    result: dict = {}
    try:
        config = load_config(
            ROOT / "configs" / "sim-single.yaml",
            ["simulation.step_time_s={1: 0.1}", "simulation.scale_with_pixels=false",
             "simulation.load_time_s=0.5", "resources.num_gpus=1", "resources.num_cpus=0.1",
             "autoscaling.policy.min_replicas=4"],
            {WORKER_DEPLOYMENT: ["num_replicas=4"],
             # the HTTP entry point stays on the head node, which is not the one that goes away
             INGRESS_DEPLOYMENT: ["ray_actor_options.resources={sdserve_head: 0.01}"]},
        )
        port = _free_port()
        config["http_options"]["port"] = port
        deploy(config, timeout_s=120)
        worker_ids = {node.node_id for node in workers}
        placement = _worker_nodes(config["applications"][0]["name"])
        result["replicas_per_node"] = {("worker-%d" % sorted(worker_ids).index(n)) if n in worker_ids else "head": c
                                       for n, c in placement.items()}
        client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=90)
        with ThreadPoolExecutor(8) as pool:
            burst = list(pool.map(lambda _: client.post("/v1/images/generations", json=BODY), range(8)))
        result["burst_statuses"] = sorted(r.status_code for r in burst)
        result["burst_replicas"] = len({r.headers.get("x-replica-id") for r in burst})

        lost = workers[0]
        timer = threading.Timer(0.7, lambda: cluster.remove_node(lost, allow_graceful=False))
        started = time.monotonic()
        timer.start()
        with ThreadPoolExecutor(8) as pool:
            during = list(pool.map(lambda _: client.post("/v1/images/generations", json={**BODY, "num_inference_steps": 20}), range(8)))
        timer.join()
        result["during_loss"] = {
            "statuses": sorted(r.status_code for r in during),
            "codes": sorted((r.json().get("error") or {}).get("code", "") for r in during if r.status_code != 200),
            "seconds": round(time.monotonic() - started, 2),
        }
        after = [client.post("/v1/images/generations", json=BODY) for _ in range(4)]
        result["after_loss_statuses"] = [r.status_code for r in after]
        remaining = _worker_nodes(config["applications"][0]["name"])
        result["replicas_after_loss"] = {("worker-%d" % sorted(worker_ids).index(n)) if n in worker_ids else "head": c
                                         for n, c in remaining.items()}
        result["lost_node"] = "worker-%d" % sorted(worker_ids).index(lost.node_id)
    finally:
        print(json.dumps(result), flush=True)
        ray.shutdown()
        cluster.shutdown()


if __name__ == "__main__":
    main()
