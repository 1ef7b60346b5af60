"""Run one workload against one config: start it (or use ``--url``), warm up, drive, collect, stop."""

from __future__ import annotations

import asyncio
import socket
import time
from dataclasses import dataclass, field
from typing import Any

import httpx
from tqdm import tqdm

from benchmarks.loadgen import Record, RequestTemplate, Tracker, closed_loop, open_loop
from benchmarks.monitor import FleetMonitor
from benchmarks.stats import replica_seconds, summarize, time_to_replicas
from benchmarks.traces import Arrival
from serve.settings import WORKER_DEPLOYMENT


@dataclass
class Workload:
    kind: str  # "open" (burst, poisson, trace) or "sweep"
    arrivals: list[Arrival] = field(default_factory=list)
    concurrency: list[int] = field(default_factory=list)
    requests_per_level: int = 16
    idle_before_s: float = 0.0  # quiet time before the load (lets a burst come "after idle")


@dataclass
class Target:
    name: str
    config: str | None = None  # a Serve config file the benchmark deploys
    url: str | None = None  # or a server already running
    overrides: list[str] = field(default_factory=list)
    deployment_overrides: dict[str, list[str]] = field(default_factory=dict)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _start(target: Target) -> tuple[str, str | None]:
    """Deploy the target's config on a local Ray; return its URL and application name."""
    if target.url:
        return target.url.rstrip("/"), None
    import ray

    from serve.deploy import deploy
    from serve.settings import load_config

    if not ray.is_initialized():
        ray.init(namespace="serve", include_dashboard=False, logging_level="ERROR")
    config = load_config(target.config, target.overrides, target.deployment_overrides)
    for attempt in (1, 2):
        port = free_port()
        config.setdefault("http_options", {})["port"] = port
        print(f"[bench] {target.name}: deploying {target.config}", flush=True)
        try:
            deploy(config, timeout_s=600, progress=lambda line: print(f"[bench]   {line}", flush=True))
            break
        except Exception as exc:  # a port taken between choosing and binding it: once more, elsewhere
            if attempt == 2 or "Failed to bind" not in str(exc):
                raise
            print(f"[bench] {target.name}: port {port} was taken; retrying on another", flush=True)
            from ray import serve

            serve.shutdown()
    return f"http://127.0.0.1:{port}", config["applications"][0]["name"]


def _stop(app_name: str | None) -> None:
    if app_name is not None:
        from ray import serve

        serve.shutdown()  # http options may differ between configs: start clean each time


def _worker_info(app_name: str | None) -> dict[str, Any]:
    if app_name is None:
        return {}
    from ray import serve

    try:
        stats = serve.get_deployment_handle(WORKER_DEPLOYMENT, app_name=app_name).stats.remote().result(
            timeout_s=30
        )
    except Exception as exc:  # no replica left (scaled to zero): report what we know
        return {"worker_stats_error": f"{type(exc).__name__}: {exc}"}
    keys = ("model", "device", "device_name", "peak_memory_bytes", "load_time_s", "cold_start_s")
    return {k: stats.get(k) for k in keys}


def _replica_cold_starts(url: str) -> list[dict[str, Any]]:
    """Each worker replica's own cold start, in the order they first replied (``GET /v1/scheduler``)."""
    try:
        return list(httpx.get(f"{url}/v1/scheduler", timeout=30).raise_for_status().json().get("cold_starts", []))
    except httpx.HTTPError as exc:  # a server without the route or behind a key: the run stands without them
        print(f"[bench] no per-replica cold starts: {exc}", flush=True)
        return []


def run_target(target: Target, workload: Workload, template: RequestTemplate, slo_s: float,
               warmup: int, tail_s: float = 2.0) -> dict[str, Any]:
    url, app_name = _start(target)
    try:
        if warmup:
            asyncio.run(closed_loop(url, 1, warmup, template))
        if workload.idle_before_s:
            print(f"[bench] {target.name}: idle {workload.idle_before_s:g}s before the load", flush=True)
            time.sleep(workload.idle_before_s)
        records: list[Record] = []
        total = len(workload.arrivals) if workload.kind == "open" else (
            workload.requests_per_level * len(workload.concurrency))
        bar = tqdm(total=total, desc=target.name, unit="req")
        tracker = Tracker(on_done=lambda record: bar.update(1))
        t0, t0_wall = time.monotonic(), time.time()
        monitor = FleetMonitor(app_name, lambda: tracker.outstanding).start(t0)
        levels, windows = [], []
        if workload.kind == "open":
            records = asyncio.run(open_loop(url, workload.arrivals, template, tracker=tracker, t0=t0))
        else:
            for concurrency in workload.concurrency:
                start = time.monotonic() - t0
                level = asyncio.run(closed_loop(url, concurrency, workload.requests_per_level, template,
                                                tracker=tracker, t0=t0))
                for record in level:
                    record.index += len(records)
                records.extend(level)
                windows.append((concurrency, start, time.monotonic() - t0, level))
        time.sleep(tail_s)
        samples = monitor.stop()
        for concurrency, start, end, level in windows:  # each level pays for the fleet during it
            paid = replica_seconds([s for s in samples if start <= s["t"] <= end])
            levels.append({"concurrency": concurrency, "start_s": start, **summarize(level, [], slo_s, paid_s=paid)})
        bar.close()
        summary = summarize(records, samples, slo_s)
        first = min((r.sent_s for r in records), default=0.0)
        summary["seconds_to_running_replicas"] = time_to_replicas(samples, first)
        info = _worker_info(app_name)  # after the load: asking earlier could wake a scaled-to-zero fleet
        return {"target": target.__dict__, "worker": info, "cold_starts": _replica_cold_starts(url),
                "replica_starts_s": monitor.starts.durations(), "t0_wall": t0_wall,
                "summary": summary, "levels": levels,
                "records": [r.to_dict() for r in records], "samples": samples}
    finally:
        _stop(app_name)

