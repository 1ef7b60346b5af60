"""``sdserve-bench heldout``: each policy's knobs chosen on one part of a trace and scored on the
other (SIMULATION).

sdserve's control loop and Ray's default policy each get a grid of settings of the same size over
the knobs that move cost and latency (:data:`GRIDS`). Every setting runs on both parts (by default
days 1–11 and days 12–23 of the production trace). Then, for each direction (tune on one part, score
on the other): each policy's Pareto front on the tuning part, scored on the held-out part; each
policy's choice for an SLO target (the cheapest setting meeting it on the tuning part) scored on the
held-out part; whether every held-out Ray point is matched by a held-out sdserve point with at least
its SLO attainment at no more cost; and every cost against the held-out part's lower bound.
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from benchmarks.per_model import simulate_per_model
from benchmarks.report import provenance
from benchmarks.sim_bounds import bounds_row
from benchmarks.sim_config import ModelReplay, SimTarget, a10_service_model, load_target
from benchmarks.simulate import load_arrivals, run_one, summarize_per_model
from benchmarks.traces import Arrival, split_arrivals
from scheduler.recommend import pareto_front
from scheduler.simulation.workload import TRACE_MEDIAN_COLD_START_S

SDSERVE, RAY, PER_MODEL = "sdserve", "Ray default", "per-model deployments"


@dataclass(frozen=True)
class Setting:
    policy: str  # SDSERVE or RAY
    label: str
    knobs: dict[str, Any]  # AutoscalerConfig fields (sdserve) or Ray autoscaling_config fields


def sdserve_settings(grid: str = "full", objective: float | None = None) -> list[Setting]:
    """Keep-alive (learned with a cold-start penalty, or fixed) × stable window × latency objective
    (``objective``, when given — ``--set autoscaling.policy.latency_objective_s=…`` — is the only one)."""
    keeps: list[tuple[str, dict[str, Any]]] = [
        (f"learned {p:g}", {"keep_alive": "histogram", "cold_start_penalty_s": p}) for p in (50, 150, 300, 600, 1000)
    ] + [(f"fixed {k:g}s", {"keep_alive": "fixed", "cold_start_penalty_s": None, "scale_to_zero_after_s": k})
         for k in (60, 300, 1200)]
    windows, objectives = (20, 120, 600), (15, 30)
    if grid == "small":
        keeps, windows, objectives = [keeps[1], keeps[5]], (20,), (30,)
    elif grid == "medium":  # 12, as Ray's: the window reaches Ray's longest downscale delay (600 s)
        keeps, windows, objectives = [keeps[1], keeps[3], keeps[5], keeps[7]], (20, 120, 600), (30,)
    elif grid == "dense":  # 16, as Ray's: medium with the midpoint of its widest step (window 300 s)
        keeps, windows, objectives = [keeps[1], keeps[3], keeps[5], keeps[7]], (20, 120, 300, 600), (30,)
    elif grid in ("fast-start", "fast-start-wide"):  # 12, as Ray's: shorter keep-alives and windows, for a
        # cold start well under the SLO; wide (16, as Ray's): the window also reaches Ray's longest downscale delay
        keeps = [(f"fixed {k:g}s", {"keep_alive": "fixed", "cold_start_penalty_s": None, "scale_to_zero_after_s": k})
                 for k in (0, 30)] + [keeps[0], keeps[1]]
        windows, objectives = (0, 20, 120) + ((600,) if grid == "fast-start-wide" else ()), (30,)
    if objective is not None:
        objectives = (objective,)
    return [Setting(SDSERVE, f"{keep}, window {w}s, objective {o:g}s",
                    {**knobs, "stable_window_s": w, "latency_objective_s": o})
            for (keep, knobs), w, o in itertools.product(keeps, windows, objectives)]


OBJECTIVE_KEY = "autoscaling.policy.latency_objective_s"  # a --set of it replaces the grid's objectives


def _objective_set(overrides: list[str]) -> float | None:
    """The latency objective a ``--set`` gives sdserve's policy, if any (the last one counts)."""
    values = [item.split("=", 1)[1] for item in overrides if item.startswith(OBJECTIVE_KEY + "=")]
    return float(values[-1]) if values else None


def ray_settings(grid: str = "full", policy: str = RAY) -> list[Setting]:
    """target_ongoing_requests × upscale_delay_s × downscale_delay_s × downscale_to_zero_delay_s ×
    look_back_period_s: as many settings as sdserve gets (the per-model fleet: the same, for each
    of its deployments)."""
    axes: tuple[tuple[float, ...], ...] = ((1, 2), (0, 30), (60, 600), (60, 300, 1200), (10, 30))
    if grid == "small":
        axes = ((1,), (30,), (600,), (60, 1200), (30,))
    elif grid == "medium":  # 12, as sdserve's: to zero after 60, 300 or 1200 s
        axes = ((1, 2), (30,), (60, 600), (60, 300, 1200), (30,))
    elif grid == "dense":  # 16, as sdserve's: medium with the midpoint of its widest step (to zero 600 s)
        axes = ((1, 2), (30,), (60, 600), (60, 300, 600, 1200), (30,))
    elif grid == "fast-start":  # 12, as sdserve's: no upscale delay, to zero at once, after 60 or 300 s
        axes = ((1, 2), (0,), (30, 600), (0, 60, 300), (30,))
    elif grid == "fast-start-wide":  # 16, as sdserve's: fast-start, to zero also after 1200 s (the full grid's longest)
        axes = ((1, 2), (0,), (30, 600), (0, 60, 300, 1200), (30,))
    return [Setting(policy, f"target {t:g}, up {u:g}s, down {d:g}s, to zero {z:g}s, look-back {b:g}s",
                    {"target_ongoing_requests": t, "upscale_delay_s": u, "downscale_delay_s": d,
                     "downscale_to_zero_delay_s": z, "look_back_period_s": b})
            for t, u, d, z, b in itertools.product(*axes)]


@dataclass(frozen=True)
class Point:
    """One setting's result on one part of the trace."""

    policy: str
    label: str
    part: str
    slo_attainment: float
    replica_seconds: float
    p99_s: float | None
    replica_starts: int
    peak_replicas: int | None = None  # the per-model fleet: replicas at once over all its deployments
    alive_at_start: int = 0  # replicas holding a GPU when scoring began (after a warm-up: what it left)
    breakdown: dict[str, Any] | None = None  # where its replica-seconds went, its misses by cause (sim_breakdown)
    p50_s: float | None = None
    loads: dict[str, Any] | None = None  # checkpoints replayed: loads per request by tier (simulate's model_loads)


def cheapest_meeting(points: list[Point], target: float) -> Point:
    """The cheapest point with at least ``target`` attainment; the best attainment if none has."""
    meeting = [p for p in points if p.slo_attainment >= target]
    if meeting:
        return min(meeting, key=lambda p: (p.replica_seconds, -p.slo_attainment))
    return max(points, key=lambda p: (p.slo_attainment, -p.replica_seconds))


def strictly_beaten(ours: list[Point], theirs: Point) -> bool:
    """Whether one of ours has a strictly higher attainment at no more cost: "strictly ahead"."""
    return any(p.slo_attainment > theirs.slo_attainment and p.replica_seconds <= theirs.replica_seconds for p in ours)


def matched_by(ours: list[Point], theirs: Point) -> Point | None:
    """Our cheapest point with at least ``theirs``' attainment at no more cost (None: none is)."""
    better = [p for p in ours if p.slo_attainment >= theirs.slo_attainment and p.replica_seconds <= theirs.replica_seconds]
    return min(better, key=lambda p: p.replica_seconds) if better else None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--trace", required=True)
    parser.add_argument("--window", help="START..END of the trace to use; default: all")
    parser.add_argument("--split-s", type=float, default=11 * 86400.0,
                        help="where the first part ends, seconds from the trace's start (default: 11 days)")
    parser.add_argument("--config", default="configs/single.yaml", help="sdserve's config")
    parser.add_argument("--ray-config", default="configs/ray-default.yaml", help="Ray's default policy")
    parser.add_argument("--grid", choices=("full", "dense", "medium", "small", "fast-start", "fast-start-wide"),
                        default="full")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override an args key in both configs (e.g. model.resident_models=4)")
    parser.add_argument("--gpus", type=int, default=None, metavar="N",
                        help="the GPUs: both policies' max_replicas and the cap (default: the configs')")
    ModelReplay.add_arguments(parser)
    parser.add_argument("--cold-start-s", type=float, default=TRACE_MEDIAN_COLD_START_S)
    parser.add_argument("--slo", type=float, default=30.0)
    parser.add_argument("--target", type=float, default=0.99, help="SLO attainment each policy's choice must reach")
    parser.add_argument("--share", type=float, default=0.98,
                        help="an SLO attainment whose bound (serving only that share in time) and whose cheapest "
                             "held-out point per policy are reported (default 0.98)")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--out-dir", default="benchmarks/results")
    parser.add_argument("--name", default="sim-heldout")
    parser.add_argument("--warm-up", action="store_true",
                        help="score the later part after running the earlier one first, as production would "
                             "(history, replicas and memory carried over; only the later part scored)")
    parser.add_argument("--time-scale", type=float, default=1.0, help=argparse.SUPPRESS)


def base_targets(args: argparse.Namespace, replay: ModelReplay, arrivals: list[Arrival]) -> dict[str, SimTarget]:
    """sdserve's and Ray's configs as every setting varies them, on ``args.gpus`` GPUs if given."""
    bases = {SDSERVE: replay.apply(load_target(args.config, args.cold_start_s, args.overrides), arrivals),
             RAY: replay.apply(load_target(args.ray_config, args.cold_start_s, args.overrides), arrivals)}
    if args.gpus is None:
        return bases
    gpus = {"gpu_slots": args.gpus}
    return {SDSERVE: bases[SDSERVE].with_overrides(policy={"max_replicas": args.gpus}, spec=gpus),
            RAY: bases[RAY].with_overrides(ray={"max_replicas": args.gpus}, spec=gpus)}


def _variant(bases: dict[str, SimTarget], setting: Setting) -> SimTarget:
    base = bases[RAY if setting.policy == PER_MODEL else setting.policy]
    if setting.policy == SDSERVE:
        return base.with_overrides(policy=setting.knobs, name=setting.label)
    return base.with_overrides(ray=setting.knobs, name=setting.label)


@dataclass(frozen=True)
class Part:
    """One part of the trace as a run replays it: ``arrivals`` (from 0), scored from ``score_from_s``
    on (what comes before it is warm-up)."""

    arrivals: list[Arrival]
    score_from_s: float = 0.0


def _run(job: tuple[Setting, SimTarget, str, Part, float, bool]) -> Point:
    setting, target, name, part, slo_s, shared_gpus = job
    if setting.policy == PER_MODEL:
        summary = summarize_per_model(simulate_per_model(target, part.arrivals, part.score_from_s, shared_gpus), slo_s)
    else:
        _, summary = run_one(target, target.requests(part.arrivals), a10_service_model(), slo_s,
                             score_from_s=part.score_from_s)
    return Point(setting.policy, setting.label, name, summary["slo_attainment"], summary["replica_seconds"],
                 summary["latency_s"]["p99"], summary["replica_starts"], summary.get("peak_replicas"), summary["alive_at_start"],
                 summary.get("breakdown"), summary["latency_s"]["p50"], summary.get("model_loads"))


def main(args: argparse.Namespace) -> int:
    arrivals = load_arrivals(args)
    first, second = split_arrivals(arrivals, args.split_s)
    if not first or not second:
        raise SystemExit(f"--split-s {args.split_s:g} leaves a part empty")
    day = 86400.0
    parts = {f"first {args.split_s / day:.3g} days": first, f"last {second[-1].at / day:.3g} days": second}
    runs = {name: Part(a) for name, a in parts.items()}
    if args.warm_up:  # the later part: the whole trace replayed, scored from the split on
        runs[list(parts)[1]] = Part(arrivals, args.split_s)
    replay = ModelReplay.from_args(args)
    bases = base_targets(args, replay, arrivals)
    per_model = bases[RAY].spec.models_per_replica > 0  # checkpoints replayed: the per-model fleet too
    settings = sdserve_settings(args.grid, _objective_set(args.overrides)) + ray_settings(args.grid) + (
        ray_settings(args.grid, PER_MODEL) if per_model else [])
    shipped = [Setting(SDSERVE, f"shipped {args.config}", {}), Setting(RAY, f"shipped {args.ray_config}", {})] + (
        [Setting(PER_MODEL, f"shipped {args.ray_config}, per checkpoint", {})] if per_model else [])
    jobs = [(s, _variant(bases, s), name, part, args.slo, replay.per_model_shared_gpus)
            for s in settings + shipped for name, part in runs.items()]
    print(f"[heldout] SIMULATION: {len(arrivals)} requests split {len(first)} / {len(second)}; "
          f"{len(settings)} settings ({sum(s.policy == SDSERVE for s in settings)} sdserve, "
          f"{sum(s.policy == RAY for s in settings)} Ray, {sum(s.policy == PER_MODEL for s in settings)} per-model) "
          f"+ the shipped configs, each on both parts: {len(jobs)} runs",
          flush=True)
    started = time.perf_counter()
    points: list[Point] = []
    with ProcessPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        for done, point in enumerate(pool.map(_run, jobs), 1):
            points.append(point)
            if done % max(1, len(jobs) // 20) == 0 or done == len(jobs):
                print(f"[heldout] {done}/{len(jobs)} runs, {time.perf_counter() - started:.0f}s", flush=True)
    service = a10_service_model()
    # a replica running when scoring begins spares at most one replica start: the bounds allow as
    # many as any run had (so they hold for every point scored)
    print(f"[heldout] the bounds of each part, with the bound for serving {100 * args.share:g} % in time "
          f"(a minute or two each)", flush=True)
    bounds = {name: {**bounds_row(bases[SDSERVE].requests(a), service, bases[SDSERVE].spec, args.slo,
                                  max(p.alive_at_start for p in points if p.part == name), args.share), "requests": len(a)}
              for name, a in parts.items()}
    names = list(parts)
    directions = [evaluate(points, tune, score, args.target, args.share)
                  for tune, score in ((names[0], names[1]), (names[1], names[0]))]
    meta = {**provenance(), "simulated": True, "trace": args.trace, "window": args.window, "split_s": args.split_s,
            "overrides": args.overrides, "model_replay": asdict(replay) if per_model else None,
            "parts": {p: len(a) for p, a in parts.items()}, "warm_up": args.warm_up, "slo_s": args.slo, "target": args.target,
            "grid": args.grid, "wall_s": time.perf_counter() - started,
            "description": f"SIMULATION: knobs chosen on one part of the trace, scored on the other; "
                           f"{sum(s.policy == SDSERVE for s in settings)} settings per policy; SLO {args.slo:g}s; "
                           f"{bases[RAY].spec.gpu_slots} GPUs; "
                           + replay.cold_start_text(args.cold_start_s, per_model) + (
                               "; the later part scored after a warm-up on the earlier one (the whole trace "
                               "replayed, only the later part's requests and replica-seconds counted)"
                               if args.warm_up else "") + (
                               f"; checkpoints and LoRAs replayed ({asdict(replay)}, settings {args.overrides}); "
                               + replay.per_model_text(bases[RAY].spec.gpu_slots) if per_model else "")}
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"{args.name}.json").write_text(json.dumps(
        {"meta": meta, "bounds": bounds, "settings": [asdict(s) for s in settings + shipped],
         "points": [asdict(p) for p in points], "directions": directions}, indent=1))
    from benchmarks.heldout_report import write_report  # matplotlib only when writing

    for path in write_report(out_dir, args.name, meta, bounds, directions):
        print(f"[heldout] wrote {path}")
    return 0


def evaluate(points: list[Point], tune: str, score: str, target: float, share: float | None = None) -> dict[str, Any]:
    """One direction: fronts and choices made on ``tune``, as they score on ``score``; with ``share``,
    each policy's cheapest setting at that SLO attainment or more on ``score`` (chosen there, with
    hindsight, for every policy alike), or its highest attainment there when none reaches it."""
    on = {(p.policy, p.label, p.part): p for p in points}
    result: dict[str, Any] = {"tune": tune, "score": score, "fronts": {}, "choices": {}, "shipped": {},
                              "cheapest_at_share": {}, "highest_below_share": {}}
    policies = [policy for policy in (SDSERVE, RAY, PER_MODEL) if any(p.policy == policy for p in points)]
    for policy in policies:
        tuned = [p for p in points if p.policy == policy and p.part == tune and not p.label.startswith("shipped")]
        front = pareto_front(tuned)
        result["fronts"][policy] = [{"tuned": asdict(p), "held_out": asdict(on[(policy, p.label, score)])} for p in front]
        choice = cheapest_meeting(tuned, target)
        result["choices"][policy] = {"tuned": asdict(choice), "held_out": asdict(on[(policy, choice.label, score)])}
        result["shipped"][policy] = next(asdict(p) for p in points
                                         if p.policy == policy and p.part == score and p.label.startswith("shipped"))
        if share is not None:
            scored = [p for p in points if p.policy == policy and p.part == score]
            meeting = [p for p in scored if p.slo_attainment >= share]
            result["cheapest_at_share"][policy] = asdict(min(meeting, key=lambda p: p.replica_seconds)) if meeting else None
            if not meeting:  # how near it came, and what stopped it
                result["highest_below_share"][policy] = asdict(max(scored, key=lambda p: (p.slo_attainment, -p.replica_seconds)))
    ours = [Point(**f["held_out"]) for f in result["fronts"][SDSERVE]]
    result["matched"] = {}  # each baseline's front point, and sdserve's cheapest at least as good
    for baseline in policies[1:]:
        result["matched"][baseline] = [
            {"baseline": entry["held_out"], "sdserve": None if (m := matched_by(ours, Point(**entry["held_out"]))) is None
             else asdict(m)} for entry in result["fronts"][baseline]]
    return result
