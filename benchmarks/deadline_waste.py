"""How much compute runs after a deadline: sdserve vs a plain Ray Serve sync handler.

Both serve the tiny model on CPU, one replica, one request at a time. The same open-loop stream of
requests with tight deadlines goes to each (sdserve: ``timeout_s`` in the body; plain Ray:
``http_options.request_timeout_s``, answered 408 by the proxy). For every request we compare the
moment its deadline passed with the moment its pipeline call actually ended, both measured on the
replica, and sum the difference (pipeline wall-seconds past deadlines), and we measure the replica
process's CPU-seconds over the run (psutil) next to the number of images actually delivered.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from benchmarks.runner import free_port
from serve.settings import WORKER_DEPLOYMENT

URL_PATH = "/v1/images/generations"


async def _open_loop(url: str, bodies: list[dict[str, Any]], rate: float, timeout: float) -> list[dict]:
    """Send ``bodies`` at ``rate`` per second without waiting for answers; record each outcome."""
    async with httpx.AsyncClient(base_url=url, timeout=timeout + 30) as client:
        async def one(i: int, body: dict[str, Any]) -> dict[str, Any]:
            await asyncio.sleep(i / rate)
            sent = time.time()
            response = await client.post(URL_PATH, json=body, headers={"X-Bench-Id": str(i)})
            code = ""
            if response.status_code >= 400 and "json" in response.headers.get("content-type", ""):
                code = (response.json().get("error") or {}).get("code", "")
            return {"id": str(i), "sent": sent, "status": response.status_code, "code": code,
                    "latency_s": time.time() - sent}

        return await asyncio.gather(*(one(i, b) for i, b in enumerate(bodies)))


def _summary(overruns: list[float], records: list[dict], extra: dict[str, Any]) -> dict[str, Any]:
    values = np.array(overruns or [0.0])
    statuses: dict[str, int] = {}
    for record in records:
        key = f"{record['status']} {record['code']}".strip()
        statuses[key] = statuses.get(key, 0) + 1
    return {
        "requests": len(records),
        "images_delivered": sum(r["status"] == 200 for r in records),
        "statuses": statuses,
        "calls_past_deadline": len(overruns),
        "overrun_median_s": float(np.median(values)) if overruns else 0.0,
        "overrun_max_s": float(values.max()) if overruns else 0.0,
        "pipeline_wall_s_past_deadlines": float(values.sum()) if overruns else 0.0,
        **extra,
    }


def run_sdserve(args: Any, port: int) -> dict[str, Any]:
    from ray import serve

    from serve.deploy import deploy
    from serve.settings import load_config

    config = load_config(args.sdserve_config, ["model.torch_threads=1",
                                               "queue.max_outstanding_per_client=null"])  # one address sends it all
    config["http_options"]["port"] = port
    deploy(config, timeout_s=300)
    handle = serve.get_deployment_handle(WORKER_DEPLOYMENT, app_name="sdserve")
    cpu_before = handle.stats.remote().result()["process_cpu_s"]
    bodies = [dict(prompt="deadline", size=args.size, num_inference_steps=args.steps,
                   seed=i, timeout_s=args.timeout) for i in range(args.requests)]
    records = asyncio.run(_open_loop(f"http://127.0.0.1:{port}", bodies, args.rate, args.timeout))
    stats = handle.stats.remote().result()
    serve.delete("sdserve")
    return _summary(stats["deadline_overruns_s"], records, {
        "replica_cpu_s": stats["process_cpu_s"] - cpu_before,
        "max_concurrent_pipeline_calls": stats["max_active_calls"],
        "pipeline_calls": stats["calls"],
    })


def run_plain_ray(args: Any, port: int) -> dict[str, Any]:
    from ray import serve

    from benchmarks.baseline_sync import PlainSyncWorker

    serve.start(http_options={"host": "127.0.0.1", "port": port, "request_timeout_s": args.timeout})
    serve.run(PlainSyncWorker.bind(), name="plain", route_prefix="/")
    cpu_before = httpx.get(f"http://127.0.0.1:{port}/report", timeout=60).json()["process_cpu_s"]
    bodies = [dict(prompt="deadline", size=args.size, num_inference_steps=args.steps, seed=i)
              for i in range(args.requests)]
    records = asyncio.run(_open_loop(f"http://127.0.0.1:{port}", bodies, args.rate, args.timeout))
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=600) as client:
        report = client.get("/report").json()
        while report["active_calls"]:  # threads Ray "timed out" are still running: wait for them
            time.sleep(0.5)
            report = client.get("/report").json()
    sent = {r["id"]: r["sent"] for r in records}
    overruns = [max(0.0, end - (sent[i] + args.timeout)) for i, end in report["ended"].items() if i in sent]
    serve.delete("plain")
    return _summary([o for o in overruns if o > 0], records, {
        "replica_cpu_s": report["process_cpu_s"] - cpu_before,
        "max_concurrent_pipeline_calls": report["max_active_calls"],
        "pipeline_calls": report["calls"],
    })


def main(args: Any) -> int:
    import ray
    from ray import serve

    ray.init(namespace="serve", include_dashboard=False, logging_level="ERROR")
    try:
        print(f"[bench] sdserve ({args.sdserve_config}): {args.requests} requests at {args.rate}/s, "
              f"{args.size} x {args.steps} steps, timeout {args.timeout}s", flush=True)
        ours = run_sdserve(args, free_port())
        serve.shutdown()
        print("[bench] plain Ray Serve sync handler with request_timeout_s", flush=True)
        plain = run_plain_ray(args, free_port())
    finally:
        serve.shutdown()
        ray.shutdown()
    result = {"settings": vars(args) | {"sdserve_config": str(args.sdserve_config)},
              "sdserve": ours, "plain_ray_sync": plain}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, default=str))
    rows = [("", "sdserve", "plain Ray sync"),
            *[(k, _fmt(ours[k]), _fmt(plain[k])) for k in ours if k != "statuses"],
            ("statuses", _fmt(ours["statuses"]), _fmt(plain["statuses"]))]
    table = "\n".join(f"| {a} | {b} | {c} |" for a, b, c in rows[:1]) + "\n|---|---|---|\n" + \
        "\n".join(f"| {a} | {b} | {c} |" for a, b, c in rows[1:])
    print(table)
    out.with_suffix(".md").write_text(table + "\n")
    print(f"[bench] wrote {out} and {out.with_suffix('.md')}")
    return 0


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3f}"
    if isinstance(value, dict):
        return ", ".join(f"{k}: {v}" for k, v in sorted(value.items()))
    return str(value)
