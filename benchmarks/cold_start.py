"""``sdserve-bench cold-start``: where a worker replica's cold start goes, phase by phase.

Deploys a config on a local Ray, reads the first worker replica's measured phases (process start,
imports, Serve's replica setup, weights, memory calibration) and times its first and second
requests; then deploys it again on the now-warm machine (OS file cache, the memory-probe cache) and
measures once more. Prints and writes a JSON + Markdown table.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import httpx

from benchmarks.report import write_result
from serve.settings import WORKER_DEPLOYMENT

PHASES = ("process_start", "imports", "replica_setup", "weights", "calibration")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", action="append", default=[], help="Serve config (repeat)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--size", default="64x64")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--out-dir", default="benchmarks/results")
    parser.add_argument("--name", default="cpu-cold-start")


def _one_deploy(config_path: str, overrides: list[str], body: dict[str, Any]) -> dict[str, Any]:
    from ray import serve

    from benchmarks.runner import free_port
    from serve.deploy import deploy
    from serve.settings import load_config

    config = load_config(config_path, overrides)
    port = free_port()
    config["http_options"]["port"] = port
    started = time.monotonic()
    deploy(config, timeout_s=600)
    deployed_s = time.monotonic() - started
    app = config["applications"][0]["name"]
    stats = serve.get_deployment_handle(WORKER_DEPLOYMENT, app_name=app).stats.remote().result(timeout_s=60)
    calls = []
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=120) as client:
        for _ in range(2):
            response = client.post("/v1/images/generations", json=body)
            response.raise_for_status()
            calls.append(float(response.headers["x-service-time-seconds"]))
    serve.shutdown()
    phases = stats["cold_start_phases"]
    return {"deploy_s": deployed_s, "cold_start_s": stats["cold_start_s"], "phases": phases,
            "beyond_weights_s": stats["cold_start_s"] - phases["weights"],
            "first_call_s": calls[0], "second_call_s": calls[1], "model": stats["model"]}


def main(args: argparse.Namespace) -> int:
    import ray

    body = {"prompt": "cold start", "size": args.size, "num_inference_steps": args.steps, "seed": 1}
    results: dict[str, Any] = {}
    try:
        for config in args.config or ["configs/cpu.yaml"]:
            if not ray.is_initialized():
                ray.init(namespace="serve", include_dashboard=False, logging_level="ERROR")
            for attempt in ("first deploy", "warm machine"):
                print(f"[cold-start] {config}: {attempt}", flush=True)
                results[f"{Path(config).stem} ({attempt})"] = _one_deploy(config, args.overrides, body)
    finally:
        if ray.is_initialized():
            ray.shutdown()
    lines = ["| config | cold start, s | " + " | ".join(PHASES) + " | beyond weights, s | 1st / 2nd call, s |",
             "|---|---|" + "---|" * len(PHASES) + "---|---|"]
    for name, r in results.items():
        lines.append(f"| {name} | {r['cold_start_s']:.2f} | " + " | ".join(f"{r['phases'][p]:.2f}" for p in PHASES)
                     + f" | {r['beyond_weights_s']:.2f} | {r['first_call_s']:.3f} / {r['second_call_s']:.3f} |")
    write_result(args.out_dir, args.name, results, "\n".join(lines))
    return 0
