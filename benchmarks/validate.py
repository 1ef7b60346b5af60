"""``sdserve-bench validate``: the simulator is only worth what it predicts — replay one trace window
live (simulated backend on a real Ray Serve) and in the simulator, and compare.

A live run compressed k× must compress *everything* k×, or it measures a different system: the
arrival gaps, the simulated service and load times (``simulation.time_scale``), the request
deadlines, and every time constant of the policies (Ray's delays, look-back and metrics interval;
sdserve's windows and keep-alive). The same compressed configs go to both sides. What cannot be
compressed — Ray's own replica start and per-request overheads on this machine — is measured in
the live run and handed to the simulator: the cold start as ∫(starting replicas) dt ÷ starts, the
per-request overhead as the median of latency − queue wait − service time.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.loadgen import RequestTemplate
from benchmarks.report import environment, provenance
from benchmarks.runner import Target, Workload, run_target
from benchmarks.sim_config import ModelReplay, a10_service_model, load_target
from benchmarks.simulate import load_arrivals, records_of, run_one, samples_of
from scheduler.outcomes import Outcome
from scheduler.simulation.journal import first_difference
from scheduler.simulation.ray_autoscaler import RayAutoscalingConfig
from serve.settings import WORKER_DEPLOYMENT, load_config

#: Agreement the simulator must reach; a failure is reported, never widened.
TOLERANCE = {"slo_points": 3.0, "replica_seconds_rel": 0.10, "p50_rel": 0.15, "starts_abs": 1, "loads_rel": 0.15}
RAY_TIME_KNOBS = ("upscale_delay_s", "downscale_delay_s", "downscale_to_zero_delay_s", "look_back_period_s",
                  "metrics_interval_s")
#: Ray's control loop cannot run its metrics faster than this on a 2-core machine; both sides get
#: the floored value, so they still model the same system.
FLOORS = {"metrics_interval_s": 0.25, "look_back_period_s": 1.0}
POLICY_TIME_KNOBS = ("stable_window_s", "scale_down_interval_s", "scale_to_zero_after_s",
                     "default_service_time_s", "default_cold_start_s", "latency_objective_s",
                     "cold_start_penalty_s", "keep_alive_max_s", "just_in_time_margin_s")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--trace", required=True)
    parser.add_argument("--window", required=True, help="START..END of the trace")
    parser.add_argument("--time-scale", type=float, default=15.0, help="k: compress everything k×")
    parser.add_argument("--config", action="append", default=[], help="sim-* Serve configs to validate")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="an override of every config's args, in trace time (time knobs are compressed "
                             "k× with the config's own), e.g. queue.urgent_within_s=25")
    parser.add_argument("--slo", type=float, default=30.0, help="latency objective in trace time, seconds")
    parser.add_argument("--out-dir", default="benchmarks/results")
    parser.add_argument("--name", default="sim-vs-live")
    parser.add_argument("--models", action="store_true",
                        help="replay each request's checkpoint: a simulated catalog of the window's checkpoints "
                             "live (the most used the default), the same in the simulator")
    parser.add_argument("--loras", action="store_true",
                        help="with --models: send each request's LoRAs too; live, the window's adapters are "
                             "declared and each load takes --lora-load-s")
    parser.add_argument("--resident-models", type=int, default=1, help="with --models: checkpoints on a replica's GPU")
    parser.add_argument("--host-memory-gb", type=float, default=8.4, help="with --models: per replica")
    parser.add_argument("--page-cache-models", type=int, default=0,
                        help="with --models: checkpoints the node's page cache holds (live: the simulated page "
                             "cache, filled by reads and the ingress's prefetch; simulated: the node's host pool)")
    parser.add_argument("--host-load-s", type=float, default=2.8, help="with --models: trace seconds")
    parser.add_argument("--disk-load-s", type=float, default=35.0, help="with --models: trace seconds")
    parser.add_argument("--lora-load-s", type=float, default=4.4, help="with --loras: trace seconds")
    parser.add_argument("--resimulate", metavar="RESULT_JSON",
                        help="reuse the live side of an earlier validate result (its runs, measurements and "
                             "overrides) and recompute only the simulation: for a changed simulator")


def compressed_overrides(path: str, k: float, overrides: Sequence[str] = ()) -> tuple[list[str], list[str]]:
    """``args`` and worker-deployment overrides that run ``path``'s config, with ``overrides`` of its
    args (``--set``, in trace time), k× faster: the overrides first, then the compressed times."""
    config = load_config(path, list(overrides))
    app = config["applications"][0]
    args = app.get("args") or {}
    timeout = ((args.get("deadlines") or {}).get("default_timeout_s")) or 120.0
    arg_overrides = [*overrides, f"simulation.time_scale={k}", f"deadlines.default_timeout_s={timeout / k}"]
    worker = next(d for d in app["deployments"] if d["name"] == WORKER_DEPLOYMENT)
    loop = (args.get("autoscaling") or {})
    if app.get("external_scaler_enabled") and loop.get("enabled"):  # sdserve's loop: knobs in args
        # (the loop's own interval and fleet poll stay: the simulator models them as they are)
        policy = loop.get("policy") or {}
        arg_overrides += [f"autoscaling.policy.{knob}={policy[knob] / k}" for knob in POLICY_TIME_KNOBS
                          if policy.get(knob) is not None]
        urgent = (args.get("queue") or {}).get("urgent_within_s")
        arg_overrides += [f"queue.urgent_within_s={urgent / k}"] if urgent is not None else []
        return arg_overrides, []
    scaling = worker.get("autoscaling_config") or {}
    ray_defaults = RayAutoscalingConfig()
    deployment = []
    for knob in RAY_TIME_KNOBS:
        value = scaling.get(knob, getattr(ray_defaults, knob))
        if value is None and knob == "downscale_to_zero_delay_s":
            value = scaling.get("downscale_delay_s", ray_defaults.downscale_delay_s)
        deployment.append(f"autoscaling_config.{knob}={max(value / k, FLOORS.get(knob, 0.0))}")
    kwargs = ((scaling.get("policy") or {}).get("policy_kwargs")) or {}
    deployment += [f"autoscaling_config.policy.policy_kwargs.{knob}={kwargs[knob] / k}"
                   for knob in POLICY_TIME_KNOBS if knob in kwargs]
    return arg_overrides, deployment


def model_overrides(arrivals: list[Any], args: argparse.Namespace) -> list[str]:
    """A simulated catalog of the checkpoints ``arrivals`` name (the most used the default), with
    the per-tier load times in trace seconds (``simulation.time_scale`` compresses them live)."""
    used = Counter(a.model for a in arrivals if a.model)
    default, *others = [name for name, _ in used.most_common()]
    adapters = sorted({name.partition(":")[0] for a in arrivals for name in a.loras})
    return [f"model.id={default}", *(f"model.catalog.{name}=simulated" for name in others),
            f"model.resident_models={args.resident_models}", f"model.host_memory_gb={args.host_memory_gb}",
            f"simulation.load_time_s={args.disk_load_s}", f"simulation.host_load_time_s={args.host_load_s}",
            f"simulation.page_cache_checkpoints={args.page_cache_models}",
            *(f"model.loras.{name}=simulated" for name in adapters),
            *([f"simulation.lora_load_time_s={args.lora_load_s}"] if adapters else [])]


def loads_per_request(records: list[dict[str, Any]]) -> float | None:
    """Checkpoint loads (from host memory or disk) per request that ran, as the replies said."""
    ran = [r.get("model_load") for r in records if r.get("model_load") is not None]
    return sum(tier in ("host", "disk") for tier in ran) / len(ran) if ran else None


def live_cold_start_s(samples: list[dict[str, float]], starts: int) -> float | None:
    """Mean replica start → running, from the polled fleet: ∫(replicas − running) dt ÷ starts."""
    if starts <= 0 or len(samples) < 2:
        return None
    t = np.array([s["t"] for s in samples])
    starting = np.array([s["replicas"] - s["running"] for s in samples], dtype=float)
    return float(np.sum(starting[:-1] * np.diff(t)) / starts)


def live_overhead_s(records: list[dict[str, Any]]) -> float:
    """Median per-request time outside the queue and the pipeline (HTTP, proxy, ingress, PNG)."""
    parts = [r["latency_s"] - r["queue_wait_s"] - r["service_time_s"] for r in records
             if r["outcome"] == Outcome.OK and r["queue_wait_s"] is not None and r["service_time_s"] is not None]
    return float(np.median(parts)) if parts else 0.0


def agreement(live: dict[str, Any], sim: dict[str, Any]) -> dict[str, Any]:
    def rel(a: float | None, b: float | None) -> float | None:
        return None if not a or b is None else (b - a) / a

    rows = {
        "slo_points": 100 * (sim["slo_attainment"] - live["slo_attainment"]),
        "replica_seconds_rel": rel(live["replica_seconds"], sim["replica_seconds"]),
        "p50_rel": rel(live["latency_s"]["p50"], sim["latency_s"]["p50"]),
        "starts_abs": sim["replica_starts"] - live["replica_starts"],
    }
    if live.get("loads_per_request") is not None:  # checkpoints replayed
        rows["loads_rel"] = rel(live["loads_per_request"], sim.get("loads_per_request"))
    passed = {k: v is not None and abs(v) <= TOLERANCE[k] for k, v in rows.items()}
    return {"difference": rows, "within_tolerance": passed, "all_within": all(passed.values())}


def validate_one(config: str, args: argparse.Namespace) -> dict[str, Any]:
    k = args.time_scale
    arg_overrides, deployment = compressed_overrides(config, k, args.overrides)
    arrivals = _arrivals(args)  # compressed k× by --time-scale
    if args.models:
        arg_overrides += model_overrides(arrivals, args)
    name = Path(config).stem
    journal = Path(tempfile.mkdtemp(prefix="sdserve-validate-")) / "page-cache.journal" if args.models else None
    live_only = [f"simulation.page_cache_journal={journal}"] if journal else []
    live = run_target(Target(name, config=config, overrides=arg_overrides + live_only,
                             deployment_overrides={WORKER_DEPLOYMENT: deployment}),
                      Workload("open", arrivals), RequestTemplate(model_prefix="simulated:" if args.models else None,
                                                                  loras=getattr(args, "loras", False)),
                      args.slo / k, warmup=1)
    live["summary"]["loads_per_request"] = loads_per_request(live["records"])
    measured = {"cold_start_s": live_cold_start_s(live["samples"], live["summary"]["replica_starts"]),
                # each replica's, asked for → running, in the order they were asked for
                "cold_starts_s": live.get("replica_starts_s", []),
                "request_overhead_s": live_overhead_s(live["records"]),
                # what a replica itself measured: the one asked last, and each in the order they replied
                "reported_cold_start_s": (live.get("worker") or {}).get("cold_start_s"),
                "reported_cold_starts_s": [c["cold_start_s"] for c in live.get("cold_starts", [])]}
    earlier = {"config": config, "overrides": arg_overrides, "deployment_overrides": deployment,
               "measured": measured, "live": live["summary"], "live_samples": live["samples"],
               "live_records": live["records"], "live_page_cache": read_journal(journal, live["t0_wall"])}
    return simulate_side(earlier, arrivals, args)


def read_journal(path: Path | None, t0_wall: float) -> list[list[Any]]:
    """The live simulated page cache's journal, in seconds since the replay began, checkpoints by
    their served names' markers with the simulated prefix dropped (as the simulator names them);
    its file is removed once read."""
    if path is None or not path.is_file():
        return []
    events = []
    for line in path.read_text().splitlines():
        wall, event, marker = line.split(maxsplit=2)
        events.append([round(float(wall) - t0_wall, 4), event, marker.removeprefix("simulated_")])
    shutil.rmtree(path.parent, ignore_errors=True)
    return events


def simulate_side(earlier: dict[str, Any], arrivals: list, args: argparse.Namespace) -> dict[str, Any]:
    """The simulated half for one config, from a live half (just run, or read back from a result)."""
    k, slo = args.time_scale, args.slo / args.time_scale
    measured, deployment = earlier["measured"], earlier["deployment_overrides"]
    target = load_target(earlier["config"], measured["cold_start_s"] or 0.0, earlier["overrides"],
                         {WORKER_DEPLOYMENT: deployment})
    target = target.with_overrides(spec={"request_overhead_s": measured["request_overhead_s"],
                                         "reported_cold_start_s": measured["reported_cold_start_s"],
                                         # absent from results measured before replicas were listed
                                         "reported_cold_starts_s": tuple(measured.get("reported_cold_starts_s", ())),
                                         "cold_starts_s": tuple(measured.get("cold_starts_s", ())),
                                         "journal_node_memory": True})
    if getattr(args, "models", False):  # the live catalog's tiers, compressed as live
        settings = target.settings.simulation
        target = ModelReplay(settings.host_load_time_s / k, settings.load_time_s / k, settings.lora_load_time_s / k,
                             settings.checkpoint_gb, settings.page_cache_checkpoints).apply(target, arrivals)
    result, sim = run_one(target, target.requests(arrivals), a10_service_model(k), slo)
    sim["loads_per_request"] = loads_per_request([r.to_dict() for r in records_of(result)])
    node_memory = [[round(t, 4), event, model] for t, event, model in result.node_memory_events]
    live_memory = earlier.get("live_page_cache") or []
    return {**earlier, "simulated": sim, "agreement": agreement(earlier["live"], sim),
            "simulated_page_cache": node_memory,
            "page_cache_first_difference": first_difference(live_memory, node_memory) if live_memory else None,
            "simulated_samples": samples_of(result), "simulated_records": [r.to_dict() for r in records_of(result)]}


def resimulate(args: argparse.Namespace) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    """Every config of an earlier result, its live half kept as measured, its simulation redone;
    and the provenance of that live half (the original run's, kept across re-simulations)."""
    earlier = json.loads(Path(args.resimulate).read_text())
    meta = earlier["meta"]
    if args.window != meta["window"] or args.time_scale != meta["time_scale"]:
        raise SystemExit(f"{args.resimulate} was run on window {meta['window']!r} at k = {meta['time_scale']}: "
                         "give the same --window and --time-scale")
    arrivals = _arrivals(args)
    results = {name: simulate_side(r, arrivals, args) for name, r in earlier["results"].items()}
    return results, meta.get("live_side_from", meta)


def _arrivals(args: argparse.Namespace) -> list[Any]:
    """The window's arrivals, compressed; without ``--models`` none names a checkpoint, without
    ``--loras`` none names an adapter. None names its tenant: live, every request comes from the
    load generator's one address without a key, so the dispatcher's fair queue sees one tenant, and
    the simulator must too."""
    loras = args.models and getattr(args, "loras", False)
    return [dataclasses.replace(a, loras=a.loras if loras else (), model=a.model if args.models else "", tenant="")
            for a in load_arrivals(args)]


def markdown(results: dict[str, dict[str, Any]], k: float, slo: float) -> str:
    lines = [f"Compressed k = {k:g}× (arrivals, service and load times, deadlines, policy time constants); "
             f"SLO {slo:g}s of trace time = {slo / k:.2f}s live. Times below are live (compressed) seconds.", "",
             "| config | | SLO attainment | replica-seconds | p50 latency, s | replica starts |",
             "|---|---|---|---|---|---|"]
    for name, r in results.items():
        live, sim, diff = r["live"], r["simulated"], r["agreement"]["difference"]
        ok = r["agreement"]["within_tolerance"]

        def mark(key: str) -> str:
            return "✓" if ok[key] else "✗"

        lines.append(f"| {name} | live | {100 * live['slo_attainment']:.1f}% | {live['replica_seconds']:.1f} | "
                     f"{live['latency_s']['p50']:.3f} | {live['replica_starts']} |")
        lines.append(f"| | simulated | {100 * sim['slo_attainment']:.1f}% | {sim['replica_seconds']:.1f} | "
                     f"{sim['latency_s']['p50']:.3f} | {sim['replica_starts']} |")
        rs = diff["replica_seconds_rel"]
        p50 = diff["p50_rel"]
        lines.append(f"| | difference | {diff['slo_points']:+.1f} pp {mark('slo_points')} | "
                     f"{'-' if rs is None else f'{100 * rs:+.1f}%'} {mark('replica_seconds_rel')} | "
                     f"{'-' if p50 is None else f'{100 * p50:+.1f}%'} {mark('p50_rel')} | "
                     f"{diff['starts_abs']:+d} {mark('starts_abs')} |")
        if "loads_rel" in diff:
            loads = diff["loads_rel"]
            lines.append(f"| | checkpoint loads per request: live {live['loads_per_request']:.3f}, simulated "
                         f"{sim['loads_per_request'] or 0:.3f} | {'-' if loads is None else f'{100 * loads:+.1f}%'} "
                         f"{mark('loads_rel')} | | | |")
        if r.get("live_page_cache"):
            lines.append(f"| | node page cache, reads and evictions in order: {_memory_agreement(r)} | | | | |")
        m = r["measured"]
        lines.append(f"| | measured live, given to the simulator | cold start {_each(m.get('cold_starts_s'), m['cold_start_s'])} "
                     f"(replicas report {_each(m.get('reported_cold_starts_s'), m['reported_cold_start_s'])}) | "
                     f"per-request overhead {1000 * m['request_overhead_s']:.0f} ms | | |")
    lines.append("")
    lines.append(f"Tolerance: SLO ±{TOLERANCE['slo_points']:g} pp, replica-seconds ±{100 * TOLERANCE['replica_seconds_rel']:g}%, "
                 f"p50 ±{100 * TOLERANCE['p50_rel']:g}%, starts ±{TOLERANCE['starts_abs']}, checkpoint loads "
                 f"±{100 * TOLERANCE['loads_rel']:g}% (when replayed).")
    return "\n".join(lines)


def _memory_agreement(result: dict[str, Any]) -> str:
    """Where the live page cache's journal and the simulator's node memory first part, if they do."""
    first = result.get("page_cache_first_difference")
    if first is None:
        moves = [sum(event != "use" for _, event, _ in result[side])
                 for side in ("live_page_cache", "simulated_page_cache")]
        return f"the same through {min(moves)} (live {moves[0]}, simulated {moves[1]})"
    (lt, le, lm), (st, se, sm) = first["live"], first["simulated"]
    return (f"the same for {first['index']}, then live `{le} {lm}` at {lt:.1f} s, "
            f"simulated `{se} {sm}` at {st:.1f} s")


def _each(values: list[float] | None, mean: float | None) -> str:
    """Per-replica values in order when measured, else the one value."""
    if values:
        return f"{len(values)}, in order: " + ", ".join(f"{v:.2f}" for v in values) + " s"
    return f"{mean or 0:.2f}s"


def resimulated_note(meta: dict[str, Any]) -> str:
    source = meta.get("live_side_from")
    if not source:
        return ""
    return (f"The live side is the run of {source['when']} (`{source['command']}`), kept as measured; "
            f"only the simulation was recomputed (simulator changed since).\n\n")


def main(args: argparse.Namespace) -> int:
    started = time.time()
    if args.resimulate:
        results, live_from = resimulate(args)
    else:
        if not args.config:
            raise SystemExit("give --config (sim-* configs: the live side uses the simulated backend)")
        results, live_from = {}, None
        try:
            for config in args.config:
                results[Path(config).stem] = validate_one(config, args)
        finally:
            import ray

            if ray.is_initialized():
                ray.shutdown()
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    table = markdown(results, args.time_scale, args.slo)
    meta = {**provenance(), "environment": environment(),
            "window": args.window, "time_scale": args.time_scale, "wall_s": time.time() - started,
            "tolerance": TOLERANCE}
    if live_from is not None:  # the live runs are the earlier ones: say so and keep their provenance
        meta["live_side_from"] = {"file": args.resimulate, "command": live_from["command"],
                                  "when": live_from["when"], "environment": live_from["environment"]}
    (out_dir / f"{args.name}.json").write_text(json.dumps({"meta": meta, "results": results}, indent=1, default=str))
    (out_dir / f"{args.name}.md").write_text(
        f"# {args.name}: the fleet simulator against live runs\n\nWindow {args.window} of the production trace, "
        f"replayed live (simulated A10 backend on Ray Serve, this machine) and in the simulator.\n\n"
        f"`{meta['command']}`\n\n{resimulated_note(meta)}{table}\n")
    print(table)
    return 0 if all(r["agreement"]["all_within"] for r in results.values()) else 1
