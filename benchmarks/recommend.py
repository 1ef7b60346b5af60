"""``sdserve-bench recommend``: the cheapest config meeting an SLO target on your trace, by simulation.

Sweeps mode (single; batched 2/4/8), keep-alive, stable window and max replicas in the fleet
simulator (SIMULATION: simulated A10 SD 1.5 service times) on the first part of the trace, scores
the Pareto front again on the rest (held out: what the choice does on load it was not chosen on),
prints both and writes the winner as a ready-to-deploy Serve YAML derived from
``configs/single.yaml`` or ``configs/batched.yaml``.
"""

from __future__ import annotations

import argparse
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import yaml

from benchmarks.report import command_line
from benchmarks.sim_config import SimTarget, a10_service_model, load_target
from benchmarks.sim_report import plot_pareto
from benchmarks.simulate import load_arrivals, run_one
from benchmarks.traces import Arrival, split_arrivals
from scheduler.recommend import Candidate, Score, choose, grid, pareto_front, recommend
from scheduler.simulation.workload import TRACE_MEDIAN_COLD_START_S, ServiceModel, SimRequest
from serve.settings import WORKER_DEPLOYMENT, load_config


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--trace", required=True, help="CSV of arrivals (production trace or timestamp[,n,steps])")
    parser.add_argument("--window", help="START..END, 'busiest' (hour) or 'busiest-day'; default: all")
    parser.add_argument("--slo", type=float, default=30.0, help="latency objective, seconds")
    parser.add_argument("--target", type=float, default=0.99, help="fraction of requests within the SLO")
    parser.add_argument("--max-replicas", type=int, default=4, help="the most replicas (GPUs) to consider")
    parser.add_argument("--modes", default="1,2,4,8", help="batch sizes to try (1 = single)")
    parser.add_argument("--keep-alive", default="60,120,300,600", help="scale_to_zero_after_s values")
    parser.add_argument("--stable-window", default="30,60", help="stable_window_s values")
    parser.add_argument("--cold-start-penalty", default="150",
                        help="cold_start_penalty_s values for learned keep-alive candidates ('' for none)")
    parser.add_argument("--holdout", type=float, default=0.5,
                        help="the last fraction of the trace's time kept out of the choice and scored after it (0: none)")
    parser.add_argument("--cold-start-s", type=float, default=TRACE_MEDIAN_COLD_START_S)
    parser.add_argument("--single-config", default="configs/single.yaml")
    parser.add_argument("--batched-config", default="configs/batched.yaml")
    parser.add_argument("--jobs", type=int, default=2, help="simulations in parallel")
    parser.add_argument("--out", default="recommended.yaml", help="where to write the chosen Serve config")
    parser.add_argument("--out-dir", default="benchmarks/results", help="for the Pareto table and plot")
    parser.add_argument("--name", default="recommend")
    parser.add_argument("--time-scale", type=float, default=1.0, help=argparse.SUPPRESS)


def _floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x.strip()]


def variant(base: SimTarget, candidate: Candidate) -> SimTarget:
    """``base`` with the candidate's knobs, as :func:`write_config` would deploy them."""
    b = candidate.batch_size
    return base.with_overrides(
        name=candidate.label,
        spec={"max_batch_size": b, "max_ongoing_requests": b, "gpu_slots": candidate.max_replicas,
              "initial_replicas": min(base.spec.initial_replicas, candidate.max_replicas)},
        ray={"max_replicas": candidate.max_replicas,
             "initial_replicas": min(base.ray_config.initial_replicas or 0, candidate.max_replicas)},
        policy=policy_knobs(candidate),
    )


def policy_knobs(candidate: Candidate) -> dict[str, Any]:
    """The AutoscalerConfig fields a candidate sets."""
    knobs: dict[str, Any] = {"capacity_per_replica": candidate.batch_size, "max_replicas": candidate.max_replicas,
                             "scale_to_zero_after_s": candidate.keep_alive_s,
                             "stable_window_s": candidate.stable_window_s}
    if candidate.penalty_s >= 0:
        knobs.update(keep_alive="histogram", cold_start_penalty_s=candidate.penalty_s)
    else:
        knobs.update(keep_alive="fixed", cold_start_penalty_s=None)
    return knobs


def score(target: SimTarget, requests: list[SimRequest], service: ServiceModel, slo_s: float,
          candidate: Candidate) -> Score:
    _, summary = run_one(target, requests, service, slo_s)
    return Score(candidate, summary["slo_attainment"], summary["replica_seconds"], summary["latency_s"]["p99"])


def _score_job(job: tuple[SimTarget, list[SimRequest], float, float, Candidate]) -> Score:
    target, requests, time_scale, slo_s, candidate = job
    return score(target, requests, a10_service_model(time_scale), slo_s, candidate)


def write_config(candidate: Candidate, base_path: str, out: Path, note: str) -> None:
    """The base config with the candidate's knobs set, as a Serve YAML ``serve run`` accepts."""
    config = load_config(base_path)
    app = config["applications"][0]
    app["args"].setdefault("batching", {})["max_batch_size"] = candidate.batch_size
    worker = next(d for d in app["deployments"] if d["name"] == WORKER_DEPLOYMENT)
    worker["max_ongoing_requests"] = candidate.batch_size
    knobs = policy_knobs(candidate)
    if app.get("external_scaler_enabled"):  # sdserve's own loop: its knobs live in args
        app["args"]["autoscaling"].setdefault("policy", {}).update(knobs)
        worker["num_replicas"] = min(worker.get("num_replicas", 1), candidate.max_replicas)
    else:  # Ray's policy hook
        scaling = worker["autoscaling_config"]
        scaling["max_replicas"] = candidate.max_replicas
        scaling["initial_replicas"] = min(scaling.get("initial_replicas") or 0, candidate.max_replicas)
        knobs.pop("max_replicas")
        scaling.setdefault("policy", {}).setdefault("policy_kwargs", {}).update(knobs)
    out.write_text(f"# {note}\n# Derived from {base_path}; see it for what each setting means.\n"
                   + yaml.safe_dump(config, sort_keys=False))


def pareto_markdown(front: list[Score], chosen: Score | None, slo_s: float,
                    held: dict[Candidate, Score] | None = None) -> str:
    held = held or {}
    lines = [f"| config | SLO attainment ({slo_s:g}s) | replica-seconds | p99 latency, s | held out: SLO, replica-s | |",
             "|---|---|---|---|---|---|"]
    for s in front:
        p99 = "-" if s.p99_latency_s is None else f"{s.p99_latency_s:.1f}"
        mark = "**chosen**" if chosen is not None and s.candidate == chosen.candidate else ""
        kept = held.get(s.candidate)
        out = "-" if kept is None else f"{100 * kept.slo_attainment:.2f}%, {kept.replica_seconds:.0f}"
        lines.append(f"| {s.candidate.label} | {100 * s.slo_attainment:.2f}% | {s.replica_seconds:.0f} | {p99} | "
                     f"{out} | {mark} |")
    return "\n".join(lines)


def _score_all(candidates: list[Candidate], bases: dict[int, SimTarget], arrivals: list[Arrival],
               args: argparse.Namespace, what: str) -> list[Score]:
    jobs = []
    for c in candidates:
        base = bases[1 if c.batch_size == 1 else 2]
        jobs.append((variant(base, c), base.requests(arrivals), args.time_scale, args.slo, c))
    with ProcessPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        scores_iter = pool.map(_score_job, jobs)
        _, scores = recommend(candidates, lambda _c: next(scores_iter), args.target,
                              lambda done, total: print(f"[recommend] {what}: {done}/{total}", flush=True)
                              if done % max(1, total // 10) == 0 or done == total else None)
    return scores


def main(args: argparse.Namespace) -> int:
    arrivals = load_arrivals(args)
    if not 0 <= args.holdout < 1:
        raise SystemExit("--holdout must be in [0, 1)")
    split_at = arrivals[-1].at * (1 - args.holdout)
    tune, held = split_arrivals(arrivals, split_at) if args.holdout else (arrivals, [])
    bases = {1: load_target(args.single_config, args.cold_start_s), 2: load_target(args.batched_config, args.cold_start_s)}
    batch_sizes = [int(x) for x in _floats(args.modes)]
    candidates = grid(batch_sizes, _floats(args.keep_alive), _floats(args.stable_window),
                      range(1, args.max_replicas + 1), _floats(args.cold_start_penalty))
    print(f"[recommend] SIMULATION: {len(arrivals)} requests ({len(tune)} to choose on, {len(held)} held out), "
          f"{len(candidates)} candidates, target {100 * args.target:g}% within {args.slo:g}s", flush=True)
    started = time.perf_counter()
    scores = _score_all(candidates, bases, tune, args, "choosing")
    chosen = choose(scores, args.target)
    front = pareto_front(scores)
    held_scores: dict[Candidate, Score] = {}
    if held:  # what the front (and so the choice) does on the part it was not chosen on
        held_scores = {s.candidate: s for s in _score_all([f.candidate for f in front], bases, held, args, "held out")}
    table = pareto_markdown(front, chosen, args.slo, held_scores)
    print(table)
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    split = (f"chosen on the first {len(tune)} requests, scored on the last {len(held)} (held out)" if held
             else "chosen and scored on the whole trace (--holdout 0)")
    (out_dir / f"{args.name}.md").write_text(
        f"# {args.name} (SIMULATION)\n\n`{command_line()}`\n\nPareto front of {len(scores)} candidates, {split} "
        f"({time.perf_counter() - started:.0f}s):\n\n{table}\n")
    curves = {mode: [{"replica_seconds": s.replica_seconds, "slo_attainment": s.slo_attainment}
                     for s in pareto_front(x for x in scores if x.candidate.mode == mode)]
              for mode in dict.fromkeys(c.mode for c in candidates)}
    plot_pareto(curves, out_dir / f"{args.name}-pareto.png", {}, args.slo)
    if chosen is None:
        print(f"[recommend] no candidate reaches {100 * args.target:g}% within {args.slo:g}s: "
              f"raise --max-replicas or relax --target/--slo")
        return 1
    said = f"{100 * chosen.slo_attainment:.2f}% within {args.slo:g}s at {chosen.replica_seconds:.0f} replica-seconds"
    if held:
        kept = held_scores[chosen.candidate]
        said = (f"{said} where chosen; held out: {100 * kept.slo_attainment:.2f}% at "
                f"{kept.replica_seconds:.0f} replica-seconds")
        if kept.slo_attainment < args.target:
            print(f"[recommend] WARNING: on the held-out part the choice reaches {100 * kept.slo_attainment:.2f}%, "
                  f"under the {100 * args.target:g}% target: the load changes; consider a higher --target", flush=True)
    base_path = args.single_config if chosen.candidate.batch_size == 1 else args.batched_config
    write_config(chosen.candidate, base_path, Path(args.out),
                 f"sdserve-bench recommend: {chosen.candidate.label} — {said} (SIMULATION)")
    print(f"[recommend] chosen: {chosen.candidate.label} — {said}; wrote {args.out}")
    return 0
