"""``sdserve-bench stream``: what streaming costs and how soon a client hears something.

Sends streaming requests one after another (``partial_images`` previews each) and measures, per
request: time to the first event, to the first progress event, to the first partial image, and to
the completed image; and, from the worker, each preview's render time against the request's
service time (the goal: previews under 10 % of it).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from benchmarks.report import environment, provenance
from serve.settings import WORKER_DEPLOYMENT

PATH = "/v1/images/generations"


def one(client: httpx.Client, body: dict[str, Any]) -> dict[str, float]:
    """Seconds from sending to the first event of each kind (the stream read as it arrives)."""
    first: dict[str, float] = {}
    sent = time.monotonic()
    with client.stream("POST", PATH, json=body) as response:
        response.raise_for_status()
        for line in response.iter_lines():
            if not line.startswith("data: "):
                continue
            kind = json.loads(line[6:])["type"]
            first.setdefault("first_event", time.monotonic() - sent)
            first.setdefault(kind, time.monotonic() - sent)
            if kind == "sdserve.done":
                first["service_time_s"] = json.loads(line[6:])["service_time_s"]
    return first


def preview_render_s(side: int, repeats: int = 10) -> float:
    """Median seconds to render one preview of a ``side``×``side`` request from random latents
    (noise: the worst case for PNG), in this process: the cost a GPU replica's thread would pay."""
    import torch

    from models.preview import latent_preview_png

    latents = torch.randn(1, 4, side // 8, side // 8, generator=torch.Generator().manual_seed(0))
    latent_preview_png(latents, 0, side, side)  # warm-up
    times = []
    for _ in range(repeats):
        began = time.perf_counter()
        latent_preview_png(latents, 0, side, side)
        times.append(time.perf_counter() - began)
    return float(np.median(times))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default="configs/cpu.yaml")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--requests", type=int, default=10)
    parser.add_argument("--size", default="128x128")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--partial-images", type=int, default=3)
    parser.add_argument("--out-dir", default="benchmarks/results")
    parser.add_argument("--name", default="cpu-streaming")


def main(args: argparse.Namespace) -> int:
    from ray import serve

    from benchmarks.runner import Target, _start, _stop

    url, app_name = _start(Target(args.name, config=args.config, overrides=args.overrides))
    try:
        body = {"prompt": "a lighthouse at dawn", "size": args.size, "num_inference_steps": args.steps,
                "stream": True, "partial_images": args.partial_images}
        with httpx.Client(base_url=url, timeout=300) as client:
            one(client, {**body, "partial_images": 0})  # warm-up
            runs = [one(client, {**body, "seed": i}) for i in range(args.requests)]
        stats = serve.get_deployment_handle(WORKER_DEPLOYMENT, app_name=app_name).stats.remote().result()
    finally:
        _stop(app_name)
    previews = np.array(stats["preview_seconds"])
    service = np.array([r["service_time_s"] for r in runs])

    def p50(key: str) -> float:
        return float(np.median([r[key] for r in runs if key in r]))

    result = {
        "requests": args.requests, "size": args.size, "steps": args.steps, "partial_images": args.partial_images,
        "time_to_first_event_s": p50("first_event"), "time_to_first_progress_s": p50("sdserve.progress"),
        "time_to_first_partial_s": p50("image_generation.partial_image"),
        "time_to_completed_s": p50("image_generation.completed"),
        "service_time_s_p50": float(np.median(service)),
        "preview_render_s_p50": float(np.median(previews)) if previews.size else None,
        "preview_render_s_max": float(previews.max()) if previews.size else None,
        "preview_share_of_service": float(args.partial_images * np.median(previews) / np.median(service))
        if previews.size else None,
        "per_step_s": float(np.median(service) / args.steps),
        # SD 1.5's native size, rendered here: compare with a GPU's step time (A10: ~0.059 s)
        "preview_render_512x512_s": preview_render_s(512),
    }
    meta = {**provenance(), "environment": environment(),
            "model": stats.get("model"), "device": stats.get("device")}
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{args.name}.json").write_text(json.dumps({"meta": meta, "result": result}, indent=1))
    rows = [f"| {k} | {v:.4f} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in result.items()]
    text = "\n".join([f"# {args.name}: streaming cost and first-event latency", "", f"`{meta['command']}`", "",
                      f"{meta['when']}; model {meta['model']} on {meta['device']}; {meta['environment']}", "",
                      "| figure (medians over the requests) | value |", "|---|---|", *rows, ""])
    (out / f"{args.name}.md").write_text(text)
    print(text)
    return 0
