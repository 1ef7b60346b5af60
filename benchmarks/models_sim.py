"""``sdserve-bench models``: many checkpoints on one fleet — how often a request waits for a load,
with sdserve's dispatcher placing requests where their checkpoint is, against Ray's model
multiplexing (SIMULATION).

The production trace names each request's checkpoint (87 of them). Both sides run the same config
and control loop and the same per-replica budgets (checkpoints on the GPU, more in host memory; a
replica starts holding the trace's most used checkpoint); only the placement differs: sdserve's
dispatcher (``queue.dispatch: true``) or Ray's router with ``@serve.multiplexed``'s routing
(``scheduler/simulation/models.py``). Load times are the trace's two modes: from host memory and
from disk. The control loop does not know about models (that is the next step), so both sides get
the same fleet sizing rules.
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
from scheduler.outcomes import Outcome
from scheduler.simulation.fleet import simulate
from scheduler.simulation.policies import FixedFleet
from scheduler.simulation.workload import TRACE_MEDIAN_COLD_START_S

#: placement → (the config's setting, a new replica preloads what the queue needs: scheduler/preload.py)
PLACEMENTS = {"sdserve dispatcher": ("queue.dispatch=true", False), "Ray multiplexing": ("queue.dispatch=false", False),
              "sdserve dispatcher + preload": ("queue.dispatch=true", True)}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--trace", required=True, help="the production trace (it has checkpoint_model_version_id)")
    parser.add_argument("--window", help="START..END; default: all")
    parser.add_argument("--config", default="configs/single.yaml")
    parser.add_argument("--gpu-models", default="1,2", help="checkpoints a replica holds on its GPU (each a run)")
    parser.add_argument("--host-models", type=int, default=4, help="more it keeps in host memory")
    parser.add_argument("--node-host-models", type=int, default=0, help="instead, the node's host memory holds "
                        "this many, shared by its replicas and outliving them (0: per replica)")
    parser.add_argument("--fixed", default="4", help="also run each placement on N warm replicas, never "
                        "stopped (a list runs each: '1,2,3,4'; 0: no): placement without the control loop's scale-downs")
    parser.add_argument("--no-control-loop", action="store_true", help="only the fixed fleets")
    parser.add_argument("--host-load-s", type=float, default=2.8)
    parser.add_argument("--disk-load-s", type=float, default=35.0)
    parser.add_argument("--slo", type=float, default=30.0)
    parser.add_argument("--cold-start-s", type=float, default=TRACE_MEDIAN_COLD_START_S)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--out-dir", default="benchmarks/results")
    parser.add_argument("--name", default="sim-models")
    parser.set_defaults(overrides=[], deployment_set=[], seed=0, cold_start_jitter_s=0.0, time_scale=1.0)


def _run(job: tuple[Any, list[Any], float, int]) -> dict[str, Any]:
    target, requests, slo_s, fixed = job
    started = time.perf_counter()
    policy = FixedFleet(fixed) if fixed else target.policy()
    result = simulate(requests, target.spec, a10_service_model(1.0), policy)
    loads = Counter(r.model_load for r in result.records if r.model_load is not None)
    ran = sum(loads.values())
    ok = np.array([r.latency_s for r in result.records if r.outcome == Outcome.OK])
    return {"gpu_models": target.spec.models_per_replica, "dispatch": target.spec.dispatch,
            "requests": len(result.records), "ran": ran,
            "loads_per_request": (loads["host"] + loads["disk"]) / ran if ran else None,
            "disk_loads": loads["disk"], "host_loads": loads["host"],
            "p50_s": float(np.percentile(ok, 50)) if len(ok) else None,
            "p99_s": float(np.percentile(ok, 99)) if len(ok) else None,
            "slo_attainment": float(np.sum(ok <= slo_s)) / len(result.records),
            "replica_seconds": result.replica_seconds(), "replica_starts": result.replica_starts(),
            "simulator_seconds": time.perf_counter() - started}


def main(args: argparse.Namespace) -> int:
    arrivals = load_arrivals(args)
    counts = Counter(a.model for a in arrivals)
    default = counts.most_common(1)[0][0]
    print(f"[models] SIMULATION: {len(arrivals)} requests over {len(counts)} checkpoints; the most used, "
          f"{default}, has {100 * counts[default] / len(arrivals):.1f} % and starts on every replica", flush=True)
    jobs, names = [], []
    fleets = ([] if args.no_control_loop else [0]) + [n for n in map(int, str(args.fixed).split(",")) if n]
    for fixed in fleets:
        for gpu in (int(g) for g in args.gpu_models.split(",")):
            for placement, (setting, preload) in PLACEMENTS.items():
                spec = {"models_per_replica": gpu, "host_models_per_replica": args.host_models,
                        "model_load_host_s": args.host_load_s, "model_load_disk_s": args.disk_load_s,
                        "default_model": default, "model_preload": preload,
                        "host_models_per_node": args.node_host_models}
                if fixed:
                    spec.update(initial_replicas=fixed, gpu_slots=fixed)
                target = config_target(f"{args.config}#{placement}#{setting}", args).with_overrides(spec=spec)
                jobs.append((target, target.requests(arrivals), args.slo, fixed))
                names.append(f"{placement}, {gpu} on GPU, " + (f"{fixed} fixed replicas" if fixed else "control loop"))
    results: dict[str, dict[str, Any]] = {}
    with ProcessPoolExecutor(max_workers=max(1, min(args.jobs, len(jobs)))) as pool:
        for name, row in zip(names, pool.map(_run, jobs)):
            results[name] = row
            print(f"[models] {name}: {row['loads_per_request']:.3f} loads/request ({row['disk_loads']} from disk, "
                  f"{row['host_loads']} from host), p99 {row['p99_s']:.1f}s, SLO {100 * row['slo_attainment']:.2f}%, "
                  f"{row['replica_seconds']:,.0f} replica-s ({row['simulator_seconds']:.0f}s)", flush=True)
    meta = {**provenance(), "simulated": True, "window": args.window, "config": args.config, "slo_s": args.slo,
            "checkpoints": len(counts), "default_model": default, "host_models": args.host_models,
            "node_host_models": args.node_host_models,
            "host_load_s": args.host_load_s, "disk_load_s": args.disk_load_s, "cold_start_s": args.cold_start_s}
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{args.name}.json").write_text(json.dumps({"meta": meta, "results": results}, indent=1))
    lines = ["| placement, checkpoints on the GPU, fleet | loads / request | from disk | from host | p50 s | p99 s | "
             "SLO % | replica-s | replica starts |", "|---|---|---|---|---|---|---|---|---|"]
    for name, r in results.items():
        lines.append(f"| {name} | {r['loads_per_request']:.3f} | {r['disk_loads']} | {r['host_loads']} | "
                     f"{r['p50_s']:.2f} | {r['p99_s']:.2f} | {100 * r['slo_attainment']:.2f} | "
                     f"{r['replica_seconds']:,.0f} | {r['replica_starts']} |")
    (out / f"{args.name}.md").write_text(
        f"# {args.name} (SIMULATION)\n\n{len(arrivals)} requests of the production trace over {len(counts)} "
        f"checkpoints, `{args.config}`'s control loop for both placements; " + (
            f"the node's host memory holds {args.node_host_models} checkpoints, shared by its replicas and outliving "
            "them" if args.node_host_models else f"{args.host_models} more checkpoints in host memory per replica") +
        f"; a load takes {args.host_load_s:g} s from host memory, {args.disk_load_s:g} s "
        f"from disk; every replica starts holding {default} ({100 * counts[default] / len(arrivals):.1f} % of "
        f"requests). SLO: answered within {args.slo:g} s (loads included).\n\n" + "\n".join(lines) +
        f"\n\n{meta['when']} · commit {meta['commit']} · `{meta['command']}`\n")
    print(f"[models] wrote {out / args.name}.json and .md")
    return 0
