"""``sdserve-bench`` / ``python -m benchmarks``: the benchmark commands."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from benchmarks import (
    cold_start,
    deadline_waste,
    flood,
    gpu_check,
    heldout,
    host_memory,
    lora_load,
    memory_calibration,
    models_sim,
    online_reference,
    recommend,
    results_index,
    simulate,
    soak,
    streaming,
    switch,
    tenants,
    validate,
)
from benchmarks.config_spec import parse_config_spec
from benchmarks.loadgen import RequestTemplate
from benchmarks.report import environment, provenance, write_outputs
from benchmarks.runner import Target, Workload, run_target
from benchmarks.traces import TraceError, read_trace, resolve_window
from benchmarks.workloads import burst, poisson

#: Commands whose module brings its own ``add_arguments`` and ``main``.
MODULE_COMMANDS = (
    ("simulate", simulate, "replay a trace in the fleet simulator (SIMULATION)"),
    ("heldout", heldout, "each policy tuned on one part of a trace, scored on the other (SIMULATION)"),
    ("online-reference", online_reference, "what not foreseeing arrivals costs: a shared replica's keep-alive per traffic class (SIMULATION)"),
    ("recommend", recommend, "cheapest config meeting an SLO target, by simulation"),
    ("flood", flood, "one tenant's flood against another's request: sdserve's dispatcher vs Ray's router (live)"),
    ("models", models_sim, "many checkpoints: sdserve's placement vs Ray's model multiplexing (SIMULATION)"),
    ("host-memory", host_memory, "requests read from disk per size of a node's host memory: LRU and the fewest possible"),
    ("tenants", tenants, "the largest tenant's bursts against everyone else's latency (SIMULATION)"),
    ("validate", validate, "the simulator against a live replay of the same window"),
    ("cold-start", cold_start, "where a worker replica's cold start goes"),
    ("gpu-check", gpu_check, "steps, peak memory, a real CUDA OOM, a deadline, switches on a GPU (--dry-run: CPU)"),
    ("switch", switch, "what bringing a checkpoint onto a replica costs, by tier (disk, host RAM, LoRA)"),
    ("lora-load", lora_load, "a LoRA load split: reading its file (can overlap the queue) and applying it"),
    ("stream", streaming, "streaming: time to first event, preview cost against service time"),
    ("soak", soak, "minutes of mixed abuse at a multiple of capacity: accounting, statuses, memory"),
    ("index", results_index, "write benchmarks/results/README.md, one row per committed result"),
)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sdserve-bench", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="compare configs on the same workload")
    run.add_argument("--config", action="append", default=[], metavar="PATH[#NAME[#OVERRIDE...]]",
                     help="Serve config (repeat to compare), optionally a named variant (see simulate)")
    run.add_argument("--url", help="benchmark a server already running instead of --config")
    run.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                     help="override an args key in every config (e.g. model.id=tiny)")
    run.add_argument("--deployment-set", action="append", default=[], metavar="DEPLOYMENT:KEY=VALUE",
                     help="override a deployment option, e.g. DiffusionWorker:autoscaling_config.initial_replicas=0")
    run.add_argument("--workload", choices=("burst", "poisson", "sweep", "trace"), default="burst")
    run.add_argument("--requests", type=int, default=12, help="burst size")
    run.add_argument("--rate", type=float, default=1.0, help="poisson arrivals per second")
    run.add_argument("--duration", type=float, default=60.0, help="poisson duration, seconds")
    run.add_argument("--seed", type=int, default=0)
    run.add_argument("--concurrency", default="1,2,4,8", help="sweep levels")
    run.add_argument("--requests-per-level", type=int, default=16)
    run.add_argument("--trace", help="CSV of arrivals (production trace or timestamp[,n,steps])")
    run.add_argument("--window", help="START..END of the trace, 'busiest' (hour) or 'busiest-day'")
    run.add_argument("--time-scale", type=float, default=1.0, help="compress trace time by this factor")
    run.add_argument("--size", default="512x512")
    run.add_argument("--steps", type=int, help="denoising steps (default: trace's, else server's)")
    run.add_argument("--timeout", type=float, help="timeout_s sent with every request")
    run.add_argument("--slo", type=float, default=30.0, help="latency objective, seconds")
    run.add_argument("--warmup", type=int, default=2, help="requests sent before measuring")
    run.add_argument("--idle", type=float, default=0.0, help="seconds of quiet before the load")
    run.add_argument("--out-dir", default="benchmarks/results")
    run.add_argument("--name", default="comparison", help="file stem of the outputs")
    run.add_argument("--description", default="")
    run.set_defaults(func=run_comparison)

    waste = commands.add_parser("deadlines", help="compute run past deadlines: sdserve vs plain Ray")
    waste.add_argument("--sdserve-config", default="configs/cpu.yaml")
    waste.add_argument("--requests", type=int, default=50)
    waste.add_argument("--rate", type=float, default=2.0, help="arrivals per second (open loop)")
    waste.add_argument("--timeout", type=float, default=1.5, help="deadline per request, seconds")
    waste.add_argument("--size", default="128x128")
    waste.add_argument("--steps", type=int, default=20)
    waste.add_argument("--out", default="benchmarks/results/cpu-deadlines.json")
    waste.set_defaults(func=deadline_waste.main)

    for name, module, summary in MODULE_COMMANDS:
        sub = commands.add_parser(name, help=summary)
        module.add_arguments(sub)
        sub.set_defaults(func=module.main)

    memory = commands.add_parser("memory", help="memory estimate vs measured peak, per shape")
    memory.add_argument("--model", default="tiny")
    memory.add_argument("--device", default="auto")
    memory.add_argument("--threads", type=int, default=1)
    memory.add_argument("--out", default="benchmarks/results/cpu-memory-calibration.json")
    memory.set_defaults(func=memory_calibration.main)
    return parser


def missing_inputs(args: argparse.Namespace) -> list[str]:
    """The ``--trace`` and ``--config`` files a command was given that do not exist (checked before
    any work starts, so a long run does not fail at its first read)."""
    configs = getattr(args, "config", None) or []
    specs = [configs] if isinstance(configs, str) else configs
    paths = [getattr(args, "trace", None)] + [parse_config_spec(spec).path for spec in specs]
    return [path for path in paths if path and not Path(path).is_file()]


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if missing := missing_inputs(args):
        parser.exit(2, f"sdserve-bench {args.command}: error: no such file: {', '.join(missing)}\n")
    try:
        return args.func(args)
    except TraceError as error:
        parser.exit(2, f"sdserve-bench {args.command}: error: {error}\n")


def _workload(args: argparse.Namespace) -> Workload:
    if args.workload == "burst":
        return Workload("open", burst(args.requests), idle_before_s=args.idle)
    if args.workload == "poisson":
        return Workload("open", poisson(args.rate, args.duration, args.seed), idle_before_s=args.idle)
    if args.workload == "sweep":
        levels = [int(c) for c in args.concurrency.split(",")]
        return Workload("sweep", concurrency=levels, requests_per_level=args.requests_per_level)
    if not args.trace:
        raise SystemExit("--workload trace needs --trace PATH")
    window = resolve_window(args.trace, args.window)
    args.window = window
    arrivals = read_trace(args.trace, window, args.time_scale)
    if not arrivals:
        raise SystemExit(f"no arrivals in {args.trace} window {window}")
    return Workload("open", arrivals, idle_before_s=args.idle)


def run_comparison(args: argparse.Namespace) -> int:
    if not args.config and not args.url:
        raise SystemExit("give --config (one or more) or --url")
    workload = _workload(args)
    template = RequestTemplate(size=args.size, steps=args.steps, timeout_s=args.timeout)
    specs = [parse_config_spec(c, args.overrides, args.deployment_set) for c in args.config]
    targets = [Target(args.url, url=args.url)] if args.url else [
        Target(s.name, config=s.path, overrides=s.overrides, deployment_overrides=s.deployment_overrides)
        for s in specs
    ]
    results: dict[str, Any] = {}
    try:
        for target in targets:
            results[target.name] = run_target(target, workload, template, args.slo, args.warmup)
    finally:
        import ray

        if ray.is_initialized():
            ray.shutdown()
    meta = {**provenance(),
            "environment": environment(), "settings": {k: v for k, v in vars(args).items() if k != "func"},
            "description": args.description}
    for path in write_outputs(results, meta, Path(args.out_dir), args.name):
        print(f"[bench] wrote {path}")
    return 0
