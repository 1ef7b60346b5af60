"""``sdserve-bench flood``: one tenant floods, another sends one request — with sdserve's dispatcher
and with Ray's router queue, on the same server config (live).

Tenant A (one API key) sends ``--flood`` requests at once; what its share allows
(``queue.max_outstanding_per_client``) is accepted, the rest is 429. When they are queued, tenant B
(another key) sends one request; its latency, in service times, is the figure. Then the flood's
clients go away (their requests leave the queue) and the next variant starts.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx

from benchmarks.report import environment, provenance

URL = "/v1/images/generations"
VARIANTS = {"dispatcher": "queue.dispatch=true", "ray-router": "queue.dispatch=false"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default="configs/sim-single.yaml")
    parser.add_argument("--set", dest="overrides", action="append",
                        default=["model.backend=simulated", "simulation.step_time_s={1: 0.05}",
                                 "simulation.scale_with_pixels=false", "autoscaling.policy.min_replicas=1",
                                 "autoscaling.policy.max_replicas=1", "deadlines.shed_hopeless=false",
                                 "resources.num_gpus=0", "resources.num_cpus=0.25"],
                        metavar="KEY=VALUE", help="args overrides (default: one simulated replica, 0.5 s a request)")
    parser.add_argument("--flood", type=int, default=60, help="requests tenant A sends at once")
    parser.add_argument("--share", type=int, default=48, help="queue.max_outstanding_per_client")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--out-dir", default="benchmarks/results")
    parser.add_argument("--name", default="flood")


async def _post(client: httpx.AsyncClient, key: str, body: dict[str, Any]) -> httpx.Response:
    return await client.post(URL, json=body, headers={"Authorization": f"Bearer {key}"})


async def _scenario(url: str, flood: int, share: int, steps: int) -> dict[str, Any]:
    body = {"prompt": "flood", "size": "64x64", "num_inference_steps": steps, "timeout_s": 600}
    async with httpx.AsyncClient(base_url=url, timeout=900) as client:
        alone = await _post(client, "tenant-b", body)  # the service time, warm
        service_s = float(alone.headers["X-Service-Time-Seconds"])
        tasks = [asyncio.create_task(_post(client, "tenant-a", body)) for _ in range(flood)]
        deadline = time.monotonic() + 60
        while (await client.get("/readyz")).json()["outstanding"] < share and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        await asyncio.sleep(1.0)
        refused = Counter(t.result().status_code for t in tasks if t.done())
        sent = time.monotonic()
        other = await _post(client, "tenant-b", {**body, "prompt": "the other tenant"})
        latency = time.monotonic() - sent
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return {"service_s": service_s, "flood_refused": dict(refused), "other_status": other.status_code,
            "other_latency_s": latency, "other_in_service_times": latency / service_s,
            "other_queue_wait_s": float(other.headers.get("X-Queue-Wait-Seconds", "nan"))}


def main(args: argparse.Namespace) -> int:
    from benchmarks.runner import Target, _start, _stop

    keys = Path(tempfile.mkdtemp()) / "keys.txt"
    keys.write_text("tenant-a\ntenant-b\n")
    common = [*args.overrides, f"auth.api_keys_file={keys}", f"queue.max_outstanding_per_client={args.share}"]
    results: dict[str, Any] = {}
    for name, setting in VARIANTS.items():
        url, app_name = _start(Target(name, config=args.config, overrides=[*common, setting]))
        try:
            results[name] = asyncio.run(_scenario(url, args.flood, args.share, args.steps))
        finally:
            _stop(app_name)
        r = results[name]
        print(f"[flood] {name}: tenant B answered {r['other_status']} in {r['other_latency_s']:.2f}s = "
              f"{r['other_in_service_times']:.1f} service times; flood refused {r['flood_refused']}", flush=True)
    meta = {**provenance(), "environment": environment(), "config": args.config, "overrides": common,
            "flood": args.flood, "share": args.share}
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{args.name}.json").write_text(json.dumps({"meta": meta, "results": results}, indent=1))
    rows = [f"| {name} | {r['other_status']} | {r['other_latency_s']:.2f} | {r['service_s']:.3f} | "
            f"{r['other_in_service_times']:.1f} | {r['flood_refused']} |" for name, r in results.items()]
    (out / f"{args.name}.md").write_text(
        f"# {args.name}: one tenant's flood of {args.flood}, another tenant's one request (live)\n\n"
        f"Config {args.config} with {', '.join(common)}. Tenant A's share is {args.share}; tenant B sends "
        "one request once the flood is queued.\n\n| queue | B's status | B's latency s | service s | "
        "in service times | flood statuses already answered |\n|---|---|---|---|---|---|\n" + "\n".join(rows) +
        f"\n\n{meta['when']} · commit {meta['commit']} · `{meta['command']}` · {meta['environment']}\n")
    print(f"[flood] wrote {out / args.name}.json and .md")
    return 0
