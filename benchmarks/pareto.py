"""``sdserve-bench pareto``: SLO attainment against cost, sweeping each policy's keep-alive knob, in
the fleet simulator (SIMULATION) — sdserve's fixed and learned keep-alive against Ray's default
with its ``downscale_to_zero_delay_s``. A policy is better if its curve lies above the other's at
every cost."""

from __future__ import annotations

import argparse
import json
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

from benchmarks.report import provenance
from benchmarks.sim_config import SimTarget, a10_service_model, load_target
from benchmarks.sim_report import plot_pareto
from benchmarks.simulate import clairvoyant_row, load_arrivals, run_one
from scheduler.simulation.workload import TRACE_MEDIAN_COLD_START_S


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--trace", required=True)
    parser.add_argument("--window", help="START..END, 'busiest' (hour) or 'busiest-day'; default: all")
    parser.add_argument("--config", default="configs/single.yaml", help="sdserve's config")
    parser.add_argument("--ray-config", default="configs/ray-default.yaml", help="Ray's default policy")
    parser.add_argument("--keep-alive", default="30,60,120,300,600,1200", help="sdserve fixed keep-alives, s")
    parser.add_argument("--penalty", default="0,50,150,300,600,1000", help="sdserve learned: cold_start_penalty_s")
    parser.add_argument("--window-s", default="20,120,600",
                        help="sdserve learned: one curve per stable_window_s (how long extra replicas stay)")
    parser.add_argument("--ray-delay", default="0,60,120,300,600,1200", help="Ray: downscale_to_zero_delay_s")
    parser.add_argument("--cold-start-s", type=float, default=TRACE_MEDIAN_COLD_START_S)
    parser.add_argument("--slo", type=float, default=30.0)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--out-dir", default="benchmarks/results")
    parser.add_argument("--name", default="sim-pareto")
    parser.add_argument("--time-scale", type=float, default=1.0, help=argparse.SUPPRESS)


def _numbers(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x.strip()]


def _run(job: tuple[str, str, SimTarget, list[Any], float]) -> dict[str, Any]:
    curve, label, target, arrivals, slo_s = job
    _, summary = run_one(target, target.requests(arrivals), a10_service_model(), slo_s)
    return {"curve": curve, "label": label, "replica_seconds": summary["replica_seconds"],
            "slo_attainment": summary["slo_attainment"], "p99_s": summary["latency_s"]["p99"],
            "replica_starts": summary["replica_starts"]}


def main(args: argparse.Namespace) -> int:
    arrivals = load_arrivals(args)
    sdserve = load_target(args.config, args.cold_start_s)
    ray = load_target(args.ray_config, args.cold_start_s)
    jobs = []
    for k in _numbers(args.keep_alive):
        jobs.append(("sdserve, fixed keep-alive", f"{k:g}s", sdserve.with_overrides(
            policy={"keep_alive": "fixed", "scale_to_zero_after_s": k})))
    for w in _numbers(args.window_s):
        for p in _numbers(args.penalty):
            jobs.append((f"sdserve, learned keep-alive, window {w:g}s", f"{p:g}", sdserve.with_overrides(
                policy={"keep_alive": "histogram", "cold_start_penalty_s": p, "stable_window_s": w})))
    for d in _numbers(args.ray_delay):
        jobs.append((f"Ray default (target_ongoing_requests {ray.ray_config.target_ongoing_requests:g})",
                     f"{d:g}s", ray.with_overrides(ray={"downscale_to_zero_delay_s": d})))
    print(f"[pareto] SIMULATION: {len(arrivals)} requests, {len(jobs)} runs", flush=True)
    started = time.perf_counter()
    with ProcessPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        points = []
        for point in pool.map(_run, [(c, label, t, arrivals, args.slo) for c, label, t in jobs]):
            print(f"[pareto] {point['curve']} {point['label']}: {100 * point['slo_attainment']:.2f}% "
                  f"at {point['replica_seconds']:.0f} replica-s", flush=True)
            points.append(point)
    floor = clairvoyant_row(sdserve.requests(arrivals), a10_service_model(), args.cold_start_s)
    curves: dict[str, list[dict[str, Any]]] = {}
    for point in points:
        curves.setdefault(point["curve"], []).append(point)
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    plot_pareto(curves, out_dir / f"{args.name}.png", floor, args.slo)
    lines = ["| policy | knob | SLO attainment | replica-seconds | / clairvoyant | p99, s | cold starts |",
             "|---|---|---|---|---|---|---|"]
    for name, pts in curves.items():
        for p in sorted(pts, key=lambda p: p["replica_seconds"]):
            lines.append(f"| {name} | {p['label']} | {100 * p['slo_attainment']:.2f}% | {p['replica_seconds']:.0f} | "
                         f"{p['replica_seconds'] / floor['replica_seconds']:.2f} | {p['p99_s']:.1f} | "
                         f"{p['replica_starts']} |")
    table = "\n".join(lines)
    meta = {**provenance(), "simulated": True,
            "window": args.window, "clairvoyant": floor, "wall_s": time.perf_counter() - started}
    (out_dir / f"{args.name}.json").write_text(json.dumps({"meta": meta, "points": points}, indent=1))
    (out_dir / f"{args.name}.md").write_text(
        f"# {args.name} (SIMULATION)\n\n`{meta['command']}`\n\nClairvoyant cost floor "
        f"{floor['replica_seconds']:.0f} replica-seconds.\n\n{table}\n\n![SLO vs cost]({args.name}.png)\n")
    print(table)
    return 0
