"""``sdserve-bench tenants``: what the largest tenant's bursts do to everyone else (SIMULATION).

The production trace names each request's tenant (``groupId``). This replays it in the fleet
simulator under one autoscaling config with two queues — sdserve's dispatcher (fair across
tenants, earliest deadline first within one, no polling) and Ray's router (first in, first out,
polling with backoff) — and Ray's default config as a third reference. It reports the latency of
the small tenants' requests (the 90 % of tenants with the fewest requests) that arrive during the
largest tenant's bursts (every ``--burst-window-s`` stretch in which it sends at least
``--burst-requests``), next to the same figures over the whole trace.
"""

from __future__ import annotations

import argparse
import json
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.report import provenance
from benchmarks.sim_config import a10_service_model
from benchmarks.simulate import config_target, load_arrivals
from benchmarks.traces import Arrival
from scheduler.outcomes import Outcome
from scheduler.simulation.fleet import simulate
from scheduler.simulation.workload import TRACE_MEDIAN_COLD_START_S

DEFAULT_CONFIGS = ("configs/sim-single.yaml#sdserve-dispatcher",
                   "configs/sim-single.yaml#sdserve-ray-router#queue.dispatch=false",
                   "configs/sim-ray-default.yaml#ray-default")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--trace", required=True, help="the production trace (it has groupId)")
    parser.add_argument("--window", help="START..END; default: all")
    parser.add_argument("--config", action="append", default=[], metavar="PATH[#NAME[#OVERRIDE...]]",
                        help=f"configs to compare (default: {', '.join(DEFAULT_CONFIGS)})")
    parser.add_argument("--burst-window-s", type=float, default=600.0)
    parser.add_argument("--burst-requests", type=int, default=10)
    parser.add_argument("--small-share", type=float, default=0.9, help="share of tenants counted as small")
    parser.add_argument("--slo", type=float, default=30.0)
    parser.add_argument("--cold-start-s", type=float, default=TRACE_MEDIAN_COLD_START_S)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--out-dir", default="benchmarks/results")
    parser.add_argument("--name", default="sim-tenants")
    parser.set_defaults(overrides=[], deployment_set=[], seed=0, cold_start_jitter_s=0.0, time_scale=1.0,
                        size=None, timeout=None)


def burst_spans(times: list[float], window_s: float, least: int) -> list[tuple[float, float]]:
    """Merged ``[start, start + window_s)`` spans, each starting at a request of the tenant and
    holding at least ``least`` of its requests."""
    spans: list[tuple[float, float]] = []
    ordered = sorted(times)
    end_index = 0
    for i, start in enumerate(ordered):
        end_index = max(end_index, i)
        while end_index < len(ordered) and ordered[end_index] < start + window_s:
            end_index += 1
        if end_index - i >= least:
            if spans and start <= spans[-1][1]:
                spans[-1] = (spans[-1][0], start + window_s)
            else:
                spans.append((start, start + window_s))
    return spans


def within(t: float, spans: list[tuple[float, float]]) -> bool:
    index = int(np.searchsorted([s for s, _ in spans], t, side="right")) - 1
    return index >= 0 and t < spans[index][1]


def groups(arrivals: list[Arrival], window_s: float, least: int, small_share: float) -> dict[str, Any]:
    """The largest tenant, the small tenants, and which arrivals fall in the largest one's bursts."""
    counts = Counter(a.tenant for a in arrivals)
    ranked = sorted(counts, key=lambda t: (counts[t], t))
    small = set(ranked[: int(len(ranked) * small_share)])
    largest = ranked[-1]
    spans = burst_spans([a.at for a in arrivals if a.tenant == largest], window_s, least)
    return {"tenants": len(counts), "largest": largest, "largest_requests": counts[largest],
            "small": small, "small_requests": sum(counts[t] for t in small), "spans": spans,
            "burst_hours": sum(e - s for s, e in spans) / 3600}


def _latency_stats(latencies: list[float], outcomes: list[Outcome], slo_s: float) -> dict[str, Any]:
    ok = np.array([x for x, o in zip(latencies, outcomes) if o == Outcome.OK])
    n = len(outcomes)
    return {"requests": n, "ok": int(len(ok)),
            "p50_s": float(np.percentile(ok, 50)) if len(ok) else None,
            "p99_s": float(np.percentile(ok, 99)) if len(ok) else None,
            "slo_attainment": float(np.sum(ok <= slo_s)) / n if n else None}


def _run(job: tuple[Any, list[Arrival], dict[str, Any], float]) -> dict[str, Any]:
    target, arrivals, grouping, slo_s = job
    requests = target.requests(arrivals, None, None)
    started = time.perf_counter()
    result = simulate(requests, target.spec, a10_service_model(1.0), target.policy())
    order = sorted(range(len(requests)), key=lambda i: requests[i].arrival_s)  # the simulator's order
    rows: dict[str, tuple[list[float], list[Outcome]]] = {k: ([], []) for k in
                                                          ("small_in_bursts", "small_all", "largest", "all")}
    for record, i in zip(result.records, order):
        request = requests[i]
        keys = ["all"]
        if request.tenant == grouping["largest"]:
            keys.append("largest")
        if request.tenant in grouping["small"]:
            keys.append("small_all")
            if within(request.arrival_s, grouping["spans"]):
                keys.append("small_in_bursts")
        for key in keys:
            rows[key][0].append(record.done_s - record.arrival_s)
            rows[key][1].append(record.outcome)
    return {"config": target.path, "dispatch": target.spec.dispatch, "simulator_seconds": time.perf_counter() - started,
            "replica_seconds": result.replica_seconds(),
            **{key: _latency_stats(lat, out, slo_s) for key, (lat, out) in rows.items()}}


def _table(results: dict[str, dict[str, Any]]) -> str:
    lines = ["| config | queue | small tenants in bursts: p50 / p99 s | SLO % | small tenants, all: p99 s | "
             "largest tenant: p99 s | all: SLO % | replica-s |", "|---|---|---|---|---|---|---|---|"]
    for name, r in results.items():
        b, s, big, every = r["small_in_bursts"], r["small_all"], r["largest"], r["all"]
        lines.append(f"| {name} | {'dispatcher' if r['dispatch'] else 'Ray router'} | {b['p50_s']:.2f} / "
                     f"{b['p99_s']:.2f} | {100 * b['slo_attainment']:.2f} | {s['p99_s']:.2f} | {big['p99_s']:.2f} | "
                     f"{100 * every['slo_attainment']:.2f} | {r['replica_seconds']:,.0f} |")
    return "\n".join(lines)


def main(args: argparse.Namespace) -> int:
    arrivals = load_arrivals(args)
    grouping = groups(arrivals, args.burst_window_s, args.burst_requests, args.small_share)
    in_bursts = sum(1 for a in arrivals if a.tenant in grouping["small"] and within(a.at, grouping["spans"]))
    print(f"[tenants] SIMULATION: {len(arrivals)} requests, {grouping['tenants']} tenants; largest "
          f"{grouping['largest']} ({grouping['largest_requests']} requests), {len(grouping['spans'])} bursts "
          f"({grouping['burst_hours']:.1f} h); {in_bursts} small-tenant requests arrive in them", flush=True)
    targets = [config_target(c, args) for c in (args.config or DEFAULT_CONFIGS)]
    jobs = [(t, arrivals, grouping, args.slo) for t in targets]
    results: dict[str, dict[str, Any]] = {}
    with ProcessPoolExecutor(max_workers=max(1, min(args.jobs, len(jobs)))) as pool:
        for target, row in zip(targets, pool.map(_run, jobs)):
            results[target.name] = row
            b = row["small_in_bursts"]
            print(f"[tenants] {target.name}: small tenants in bursts p99 {b['p99_s']:.2f}s, "
                  f"SLO {100 * b['slo_attainment']:.2f}% ({row['simulator_seconds']:.0f}s)", flush=True)
    meta = {**provenance(), "simulated": True, "window": args.window, "slo_s": args.slo,
            "burst_window_s": args.burst_window_s, "burst_requests": args.burst_requests,
            "small_share": args.small_share, "tenants": grouping["tenants"], "largest": grouping["largest"],
            "largest_requests": grouping["largest_requests"], "bursts": len(grouping["spans"]),
            "burst_hours": grouping["burst_hours"], "small_requests_in_bursts": in_bursts}
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{args.name}.json").write_text(json.dumps({"meta": meta, "results": results}, indent=1))
    (out / f"{args.name}.md").write_text(
        f"# {args.name} (SIMULATION)\n\nThe production trace's tenants (groupId) in the fleet simulator: "
        f"{grouping['tenants']} tenants; the largest, {grouping['largest']}, sent {grouping['largest_requests']} "
        f"requests; its bursts (≥ {args.burst_requests} requests in {args.burst_window_s:g} s) cover "
        f"{grouping['burst_hours']:.1f} h, in which {in_bursts} requests of the small tenants (the "
        f"{100 * args.small_share:g} % with the fewest requests) arrive. Latency in seconds of answered requests; "
        f"SLO: answered within {args.slo:g} s.\n\n{_table(results)}\n\n"
        f"{meta['when']} · commit {meta['commit']} · `{meta['command']}`\n")
    print(f"[tenants] wrote {out / args.name}.json and .md")
    return 0
