"""``sdserve-bench simulate``: replay a trace against configs in the fleet simulator (SIMULATION).

Same configs, same trace reader and the same summary shape as ``sdserve-bench run``; the fleet is
the discrete-event simulator in ``scheduler/simulation`` and the service time the simulated A10
profile, so days of production load replay in seconds. Every output says it is simulated.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

from benchmarks.config_spec import parse_config_spec
from benchmarks.loadgen import Record
from benchmarks.per_model import PerModelRun, simulate_per_model
from benchmarks.report import provenance, write_outputs
from benchmarks.sim_bounds import attach, bounds_row, describe_bounds, mode_key, own_lower_bound
from benchmarks.sim_breakdown import breakdown, describe
from benchmarks.sim_config import ModelReplay, SimTarget, a10_service_model, load_target
from benchmarks.sim_report import downsample, plot_pareto
from benchmarks.stats import summarize
from benchmarks.traces import Arrival, read_trace, resolve_window
from scheduler.outcomes import Outcome
from scheduler.simulation.fleet import simulate
from scheduler.simulation.policies import FixedFleet
from scheduler.simulation.records import SimResult
from scheduler.simulation.workload import STOP_ORDERS, TRACE_MEDIAN_COLD_START_S, ServiceModel, SimRequest

#: Per-request records are kept in the JSON up to this many requests (the whole trace would be MBs).
MAX_RECORDS = 1000


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--trace", required=True, help="CSV of arrivals (production trace or timestamp[,n,steps])")
    parser.add_argument("--window", help="START..END, 'busiest' (hour) or 'busiest-day'; default: all")
    parser.add_argument("--config", action="append", default=[], metavar="PATH[#NAME[#OVERRIDE...]]",
                        help="Serve config (repeat to compare); a variant: "
                             "'configs/ray-default.yaml#ray-target-2#DiffusionWorker:autoscaling_config.target_ongoing_requests=2' "
                             "(OVERRIDE: KEY=VALUE for args, DEPLOYMENT:KEY=VALUE for a deployment)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override an args key in every config")
    parser.add_argument("--deployment-set", action="append", default=[], metavar="DEPLOYMENT:KEY=VALUE",
                        help="override a deployment option in every config")
    parser.add_argument("--no-bounds", dest="bounds", action="store_false",
                        help="skip the cost bounds (busy time, lower bound, offline schedule)")
    parser.add_argument("--fixed", type=int, action="append", default=[], metavar="N",
                        help="add a fixed fleet of N warm replicas (the first config's rules)")
    parser.add_argument("--per-model", action="append", default=[], metavar="PATH[#NAME[#OVERRIDE...]]",
                        help="add one deployment per checkpoint, each this config (as --config; e.g. "
                             "configs/ray-default.yaml): the naive per-model fleet, its deployments not "
                             "capped together unless --per-model-shared-gpus")
    parser.add_argument("--stop-order", action="append", default=[], choices=STOP_ORDERS,
                        help="which replicas a scale-down stops (repeat: every config under each): 'ray', "
                             "Ray 2.60's (starting first, then the newest; the default), or 'least-loss', a "
                             "what-if Ray offers no way to choose (the fewest requests in the last hour for the "
                             "checkpoints only they hold first), run as NAME-least-loss")
    parser.add_argument("--lora-warming", type=int, action="append", default=[], metavar="K",
                        help="a what-if (repeat: every config under each; 0: off, the default): an idle replica "
                             "loads the K adapters its checkpoints' requests used most in the last day, one at "
                             "a time (scheduler/simulation/lora_warming.py), run as NAME-lora-warming-K")
    parser.add_argument("--cold-start-s", type=float, default=TRACE_MEDIAN_COLD_START_S,
                        help="replica start → ready (default: the trace's median base-model load)")
    parser.add_argument("--cold-start-jitter-s", type=float, default=0.0, help="uniform ± jitter")
    parser.add_argument("--time-scale", type=float, default=1.0,
                        help="compress arrivals AND service times by this factor (for sim-vs-live)")
    parser.add_argument("--size", help="image size (default: each config's default_size)")
    parser.add_argument("--timeout", type=float, help="timeout_s of every request (default: the config's)")
    parser.add_argument("--slo", type=float, default=30.0, help="latency objective, seconds")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--jobs", type=int, default=2, help="configs simulated in parallel (processes)")
    parser.add_argument("--out-dir", default="benchmarks/results")
    parser.add_argument("--name", default="simulation", help="file stem of the outputs")
    parser.add_argument("--description", default="")
    ModelReplay.add_arguments(parser)


def config_target(spec: str, args: argparse.Namespace) -> SimTarget:
    """``PATH[#NAME[#OVERRIDE...]]`` (benchmarks/config_spec.py) → a target."""
    parsed = parse_config_spec(spec, args.overrides, args.deployment_set)
    return load_target(parsed.path, args.cold_start_s, parsed.overrides, parsed.deployment_overrides,
                       args.seed, args.cold_start_jitter_s, name=parsed.name)


def records_of(result: SimResult) -> list[Record]:
    """The simulator's outcomes as the load generator's records (one per request)."""
    return [
        Record(index=r.index, scheduled_s=r.arrival_s, sent_s=r.arrival_s, done_s=r.done_s, outcome=r.outcome,
               n=r.n, queue_wait_s=r.queue_wait_s if r.outcome == Outcome.OK else None,
               service_time_s=r.service_time_s, batch_images=r.batch_images,
               replica_id="" if r.replica is None else f"sim-{r.replica}", model_load=r.model_load)
        for r in result.records
    ]


def samples_of(result: SimResult) -> list[dict[str, float]]:
    return [{"t": t, "replicas": a, "running": r, "outstanding": o} for t, a, r, o in result.samples]


def summarize_result(result: SimResult, slo_s: float) -> dict[str, Any]:
    samples = samples_of(result)
    summary = summarize(records_of(result), samples, slo_s, paid_s=result.replica_seconds(),
                        starts=result.replica_starts())
    summary["policy_calls"] = result.policy_calls
    ran = [r for r in result.records if r.model_load is not None]
    if ran:  # checkpoints replayed: loads per request that ran, by the tier they came from
        tiers = Counter(r.model_load for r in ran)
        summary["model_loads"] = {"per_request": (tiers["host"] + tiers["disk"]) / len(ran), "host": tiers["host"],
                                  "disk": tiers["disk"], "lora": sum(r.lora_loads for r in ran),
                                  "lora_warmed": sum(r.warm_loads for r in result.replicas)}
    summary["breakdown"] = breakdown(result, slo_s)
    return summary


def run_one(target: SimTarget, requests: list[SimRequest], service: ServiceModel, slo_s: float,
            policy: Any = None, score_from_s: float = 0.0) -> tuple[SimResult, dict[str, Any]]:
    """One simulation and its summary; ``score_from_s``: what ran before it is warm-up, not scored
    (:meth:`SimResult.from_time`)."""
    started = time.perf_counter()
    result = simulate(requests, target.spec, service, policy or target.policy())
    alive = result.alive_at(score_from_s) if score_from_s > 0 else target.spec.initial_replicas
    if score_from_s > 0:
        result = result.from_time(score_from_s)
    summary = summarize_result(result, slo_s)
    summary["alive_at_start"] = alive
    summary["simulator_seconds"] = time.perf_counter() - started
    return result, summary


def summarize_per_model(run: PerModelRun, slo_s: float) -> dict[str, Any]:
    """The per-model fleet's summary: as any run's, with its deployments, the replicas it ran at
    once at the peak, and those holding a GPU when scoring began."""
    summary = summarize_result(run.result, slo_s)
    summary.update(deployments=run.deployments, peak_replicas=run.peak_replicas, alive_at_start=run.alive_at_start)
    return summary


def _bounds_job(requests: list[SimRequest], spec: Any, time_scale: float, slo_s: float) -> dict[str, Any]:
    """The cost bounds of one mode, in a worker process."""
    return bounds_row(requests, a10_service_model(time_scale), spec, slo_s)


def _per_model_job(job: tuple[SimTarget, list[Arrival], float, bool]) -> dict[str, Any]:
    """One per-model fleet's run, in a worker process."""
    target, arrivals, slo_s, shared_gpus = job
    started = time.perf_counter()
    run = simulate_per_model(target, arrivals, shared_gpus=shared_gpus)
    summary = summarize_per_model(run, slo_s)
    summary["simulator_seconds"] = time.perf_counter() - started
    return {"target": {"config": target.path, "policy": "per-model", "spec": target.spec.__dict__},
            "summary": summary, "samples": downsample(samples_of(run.result)), "records": []}


def _simulate_job(job: tuple[SimTarget, list[SimRequest], float, float, Any]) -> dict[str, Any]:
    """One config's run, in a worker process (the configs of a comparison run side by side)."""
    target, requests, time_scale, slo_s, policy = job
    result, summary = run_one(target, requests, a10_service_model(time_scale), slo_s, policy)
    summary["own_lower_bound_replica_seconds"] = own_lower_bound(result, target.spec)
    return {"target": {"config": target.path, "policy": target.policy_kind, "spec": target.spec.__dict__},
            "summary": summary, "samples": downsample(samples_of(result)),
            "records": [r.to_dict() for r in records_of(result)] if len(requests) <= MAX_RECORDS else []}


def _print_run(name: str, summary: dict[str, Any]) -> None:
    loads = summary.get("model_loads")
    print(f"[simulate] {name}: {summary['simulator_seconds']:.1f}s, "
          f"SLO {100 * summary['slo_attainment']:.2f}%, {summary['replica_seconds']:.0f} replica-s" + (
              f", {loads['per_request']:.3f} loads/request ({loads['disk']} from disk, {loads['host']} from "
              f"host, {loads['lora']} LoRA" + (f", {loads['lora_warmed']} warmed while idle" if loads.get("lora_warmed") else "")
              + ")" if loads else "") + f"; {describe(summary['breakdown'])}", flush=True)


def load_arrivals(args: argparse.Namespace) -> list[Arrival]:
    args.window = resolve_window(args.trace, args.window)
    arrivals = read_trace(args.trace, args.window, args.time_scale)
    if not arrivals:
        raise SystemExit(f"no arrivals in {args.trace} window {args.window}")
    if getattr(args, "one_checkpoint", False):
        return [dataclasses.replace(a, model="", loras=()) for a in arrivals]
    return arrivals


def main(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    if not args.config and not args.per_model:
        raise SystemExit("give at least one --config or --per-model")
    if args.fixed and not args.config:
        raise SystemExit("--fixed takes the rules of the first --config: give one")
    arrivals = load_arrivals(args)
    targets = [config_target(c, args) for c in args.config]
    targets = [t if order == "ray" else t.with_overrides(name=f"{t.name}-{order}", spec={"stop_order": order})
               for t in targets for order in args.stop_order or ["ray"]]
    targets = [t if not k else t.with_overrides(name=f"{t.name}-lora-warming-{k}", spec={"lora_warming": k})
               for t in targets for k in args.lora_warming or [0]]
    replay = ModelReplay.from_args(args)
    cold = replay.cold_start_text(args.cold_start_s, any(a.model for a in arrivals))
    print(f"[simulate] SIMULATION: {len(arrivals)} requests over {arrivals[-1].at / 3600:.1f} h "
          f"(window {args.window or 'all'}), {cold}", flush=True)
    results: dict[str, dict[str, Any]] = {}
    runs = [(t, None) for t in targets] + [
        (targets[0].with_overrides(name=f"fixed-{n}", spec={"initial_replicas": n}), FixedFleet(n, f"fixed-{n}"))
        for n in args.fixed]
    runs = [(replay.apply(target, arrivals), policy) for target, policy in runs]
    jobs = [(target, target.requests(arrivals, args.size, args.timeout), args.time_scale, args.slo, policy)
            for target, policy in runs]
    per_model = [replay.apply(config_target(c, args), arrivals) for c in args.per_model]
    if per_model and not per_model[0].spec.models_per_replica:
        raise SystemExit("--per-model needs a trace that names checkpoints")
    suffix = "-per-model" + ("-shared-gpus" if replay.per_model_shared_gpus else "")
    per_model = [t.with_overrides(name=f"{t.name}{suffix}") for t in per_model]
    # the cost bounds, one per mode (batch size, GPUs, cold start), from the requests of its first run
    modes: dict[str, tuple[list[SimRequest], Any]] = {}
    ran = [(job[0], job[1]) for job in jobs] + [(t, t.requests(arrivals, args.size, args.timeout)) for t in per_model]
    for target, requests in ran if args.bounds else []:
        modes.setdefault(mode_key(target.spec), (requests, target.spec))
    # everything runs side by side, the longest first: the per-model fleets, the bounds, the configs
    with ProcessPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        per_model_futures = [(target, pool.submit(_per_model_job, (target, arrivals, args.slo, replay.per_model_shared_gpus)))
                             for target in per_model]
        bound_futures = {key: pool.submit(_bounds_job, requests, spec, args.time_scale, args.slo)
                         for key, (requests, spec) in modes.items()}
        futures = [(job[0], pool.submit(_simulate_job, job)) for job in jobs] + per_model_futures
        for target, future in futures:
            entry = future.result()
            _print_run(target.name, entry["summary"])
            results[target.name] = entry
        bounds = {key: future.result() for key, future in bound_futures.items()}
    for key, row in bounds.items():
        print(f"[simulate] {describe_bounds(key, row, len(modes[key][0]))}", flush=True)
        row["requests"] = len(modes[key][0])
    for target in [job[0] for job in jobs] + per_model:
        if (key := mode_key(target.spec)) in bounds:
            attach(results[target.name]["summary"], bounds[key])
    meta = {**provenance(), "simulated": True, "wall_s": time.perf_counter() - started,
            "bounds": bounds, "settings": {k: v for k, v in vars(args).items() if k != "func"},
            "description": args.description or "SIMULATION (fleet simulator, simulated A10 SD 1.5 service times)"}
    out_dir = Path(args.out_dir)
    for path in write_outputs(results, meta, out_dir, args.name):
        print(f"[simulate] wrote {path}")
    pareto = out_dir / f"{args.name}-slo-vs-cost.png"
    plot_pareto({name: [r["summary"]] for name, r in results.items()}, pareto, bounds, args.slo)
    print(f"[simulate] wrote {pareto}")
    return 0
