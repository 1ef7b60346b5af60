"""``sdserve-bench gpu-check``: what only a GPU can tell, measured in one short run (≤ 8 minutes).

On a GPU host with no network it builds the SD 1.5-shaped checkpoint (``sd15-shaped``: SD 1.5's
architecture, random weights, 2.1 GB fp16) and measures, through the code a worker replica runs:

- **start**: the imports (a fresh interpreter), the CUDA context (a fresh process's first CUDA call),
  the weights from disk with the page cache dropped and warm, the first call;
- **steps**: seconds per denoising step at 512×512 for batches of 1, 2, 4 and 8 (fp16; diffusers'
  default attention, SDPA on torch 2) and each batch's peak device memory;
- **out of memory**: the process's device memory capped (``set_per_process_memory_fraction``) below
  what the largest batch needs; that batch, sent through the worker's own ``JobRunner``, must come back
  ``out_of_memory`` (507) and the next request succeed on the same runner;
- **deadline**: a request whose deadline falls mid-run must stop within one step (its overrun past
  the deadline against the step time);
- **switch**: the checkpoint's weights copied from pinned host RAM into a built pipeline (the host
  tier), against a load from disk;
- **LoRA**: an SD 1.5-size adapter (``sd15-shaped-lora``, rank 64, 72 MiB) loaded, split into reading
  its file and applying it to the pipeline, and hotswapped into a loaded one
  (:mod:`benchmarks.lora_load`).

It writes JSON and Markdown with the device, driver, CUDA, torch and diffusers versions. ``--dry-run``
runs the same sequence anywhere (CI runs it in ``make test``): the tiny model on CPU, 64×64, batches
of 1 and 2, and an out-of-memory *injected* (``models.oom.InjectedOOM``; a CPU has no device memory to
cap) — the dry run proves the script works, its numbers say nothing about a GPU.
"""

from __future__ import annotations

import argparse
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import lora_load
from benchmarks.report import write_result
from benchmarks.switch import drop_page_cache


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dry-run", action="store_true", help="tiny model on CPU: checks the script, not a GPU")
    parser.add_argument("--out-dir", default="benchmarks/results")
    parser.add_argument("--name", help="file stem (default gpu-check, or cpu-gpu-check-dry-run)")


class Plan:
    """What the run measures: the full-size GPU plan, or the dry run's small one."""

    def __init__(self, dry_run: bool) -> None:
        self.dry_run = dry_run
        self.models = ("tiny", "tiny:1") if dry_run else ("sd15-shaped", "sd15-shaped:1")
        self.loras = ("tiny-lora:1", "tiny-lora:2") if dry_run else ("sd15-shaped-lora:1", "sd15-shaped-lora:2")
        self.device, self.dtype = ("cpu", "float32") if dry_run else ("cuda", "float16")
        self.side = 64 if dry_run else 512
        self.batches = (1, 2) if dry_run else (1, 2, 4, 8)
        self.steps = 4 if dry_run else 20


def _seconds(command: str) -> float:
    """Wall seconds of ``python -c command`` in a fresh interpreter (its own result, printed)."""
    out = subprocess.run([sys.executable, "-c", command], capture_output=True, text=True, timeout=300, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def _environment(plan: Plan) -> dict[str, Any]:
    import diffusers
    import torch

    env: dict[str, Any] = {"python": platform.python_version(), "torch": torch.__version__,
                           "diffusers": diffusers.__version__, "cuda": torch.version.cuda, "device": plan.device}
    if plan.device.startswith("cuda"):
        props = torch.cuda.get_device_properties(0)
        env.update(device_name=props.name, device_memory_gb=round(props.total_memory / 2**30, 1))
        try:
            env["driver"] = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                           capture_output=True, text=True, timeout=30).stdout.strip()
        except (OSError, subprocess.SubprocessError) as exc:
            env["driver"] = f"unknown ({exc})"
    return env


def _start(plan: Plan) -> dict[str, Any]:
    from models.loader import ModelSpec, _weights_location

    directory = Path(_weights_location(ModelSpec(plan.models[0])))  # built now if not cached
    for model in plan.models[1:]:
        _weights_location(ModelSpec(model))
    start = {"imports_s": _seconds("import time; t = time.perf_counter(); import torch, diffusers, transformers; "
                                   "from diffusers import StableDiffusionPipeline; print(time.perf_counter() - t)")}
    if plan.device.startswith("cuda"):
        start["cuda_context_s"] = _seconds("import torch, time; t = time.perf_counter(); torch.zeros(1, device='cuda'); "
                                           "torch.cuda.synchronize(); print(time.perf_counter() - t)")
    return {**start, "directory": str(directory)}


def _load(plan: Plan, model: str, cold: bool) -> tuple[float, Any]:
    from models.generator import DiffusionGenerator
    from models.loader import ModelSpec, _weights_location, load_pipeline

    spec = ModelSpec(model, device=plan.device, dtype=plan.dtype)
    if cold:
        drop_page_cache(Path(_weights_location(spec)))
    started = time.perf_counter()
    pipeline = load_pipeline(spec)
    _sync(plan.device)
    return time.perf_counter() - started, DiffusionGenerator(pipeline, model)


def _steps(plan: Plan, generator: Any) -> dict[str, Any]:
    """Seconds per step (median of the steps after the first) and peak memory, per batch."""
    import torch

    from models.request import GenerationRequest

    cuda = plan.device.startswith("cuda")
    rows = {}
    for batch in plan.batches:
        stamps: list[float] = []

        def stamp(step: int) -> None:
            _sync(plan.device)
            stamps.append(time.perf_counter())

        request = GenerationRequest("a lighthouse", plan.side, plan.side, plan.steps, 7.5, 1, n=batch)
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        generator.generate([request], should_stop=lambda step: stamp(step))
        per_step = float(np.median(np.diff(stamps))) if len(stamps) > 2 else None
        rows[str(batch)] = {"s_per_step": per_step, "s_per_image_step": per_step / batch if per_step else None,
                            "peak_memory_gb": round(torch.cuda.max_memory_allocated() / 2**30, 2) if cuda else None}
        print(f"[gpu-check] batch {batch}: {per_step:.4f} s/step", flush=True)
    return rows


def _job(request: Any, deadline_s: float | None = None) -> Any:
    from serve.protocol import WorkerJob

    now = time.time()
    return WorkerJob(request, f"check-{request.prompt}", now, now + deadline_s if deadline_s else None)


def _out_of_memory(plan: Plan, generator: Any, steps: dict[str, Any]) -> dict[str, Any]:
    """The largest batch under a cap it cannot fit: 507 for it, then a normal request served."""
    import torch

    from models.oom import InjectedOOM
    from models.request import GenerationRequest
    from scheduler.admission import ReplicaRules
    from serve.execution import JobRunner

    largest = plan.batches[-1]
    if plan.dry_run:
        backend, prompt, cap = InjectedOOM(generator, "POISON"), "POISON lighthouse", None
    else:  # room for the weights and one image's call, not for the largest batch
        one = steps["1"]["peak_memory_gb"] * 2**30
        cap = min(1.0, (torch.cuda.memory_allocated() + 1.5 * (one - torch.cuda.memory_allocated()))
                  / torch.cuda.get_device_properties(0).total_memory)
        torch.cuda.set_per_process_memory_fraction(cap)
        backend, prompt = generator, "lighthouse"
    runner = JobRunner(backend, "gpu-check", ReplicaRules(shed_hopeless=False))
    try:
        too_big = GenerationRequest(prompt, plan.side, plan.side, plan.steps, 7.5, 1, n=largest)
        [failed] = runner.run([_job(too_big)], lambda job: False)
        after = GenerationRequest("after", plan.side, plan.side, plan.steps, 7.5, 2)
        [served] = runner.run([_job(after)], lambda job: False)
    finally:
        if cap is not None:
            torch.cuda.set_per_process_memory_fraction(1.0)
    return {"cap_fraction": cap, "batch": largest, "injected": plan.dry_run, "outcome": str(failed.outcome),
            "message": failed.message, "next_request": str(served.outcome), "oom_count": runner.oom_count,
            "unhealthy": runner.unhealthy_reason}


def _deadline(plan: Plan, generator: Any, step_s: float) -> dict[str, Any]:
    """A request due after a few of its steps: stopped within one step of its deadline."""
    from models.request import GenerationRequest
    from scheduler.admission import ReplicaRules
    from serve.execution import JobRunner

    runner = JobRunner(generator, "gpu-check", ReplicaRules(shed_hopeless=False))
    steps = plan.steps * 20  # far past the deadline even if the step time was measured on a busy machine
    request = GenerationRequest("deadline", plan.side, plan.side, steps, 7.5, 3)
    [reply] = runner.run([_job(request, deadline_s=4.5 * step_s)], lambda job: False)
    overrun = max(runner.calls.deadline_overruns_s, default=None)
    return {"outcome": str(reply.outcome), "steps_done": reply.steps_done, "steps": steps, "step_s": step_s,
            "overrun_s": overrun, "within_one_step": overrun is not None and overrun <= step_s}


def _switch(plan: Plan, generator: Any, other: Any) -> dict[str, Any]:
    """The first checkpoint's weights from (pinned) host RAM into the second's built pipeline."""
    from models.host_tier import restore, snapshot

    started = time.perf_counter()
    weights = snapshot(generator.pipeline)
    to_host = time.perf_counter() - started
    started = time.perf_counter()
    restore(other.pipeline, weights)
    _sync(plan.device)
    return {"weights_gb": round(weights.nbytes / 2**30, 2), "device_to_host_s": to_host,
            "host_to_device_s": time.perf_counter() - started,
            "pinned": plan.device.startswith("cuda")}


def run_check(plan: Plan) -> dict[str, Any]:
    started = time.perf_counter()
    result: dict[str, Any] = {"environment": _environment(plan), "plan": {
        "models": plan.models, "loras": plan.loras, "size": f"{plan.side}x{plan.side}", "batches": plan.batches, "steps": plan.steps,
        "dtype": plan.dtype, "dry_run": plan.dry_run}}
    print("[gpu-check] building or finding the checkpoints, timing imports and the CUDA context", flush=True)
    result["start"] = _start(plan)
    from serve.worker_setup import framework_imports

    framework_imports("diffusers")  # as a replica does before its weights: imports are not load time
    cold_s, generator = _load(plan, plan.models[0], cold=True)
    del generator
    warm_s, generator = _load(plan, plan.models[0], cold=False)
    first = time.perf_counter()
    from models.request import GenerationRequest

    generator.generate([GenerationRequest("warm-up", plan.side, plan.side, 2, 7.5, 0)])
    _sync(plan.device)
    result["start"].update(weights_disk_cold_s=cold_s, weights_disk_warm_s=warm_s,
                           first_call_s=time.perf_counter() - first)
    print(f"[gpu-check] weights: {cold_s:.2f} s page cache dropped, {warm_s:.2f} s warm", flush=True)
    result["steps"] = _steps(plan, generator)
    result["out_of_memory"] = _out_of_memory(plan, generator, result["steps"])
    result["deadline"] = _deadline(plan, generator, result["steps"]["1"]["s_per_step"])
    disk_s, other = _load(plan, plan.models[1], cold=False)
    result["switch"] = {**_switch(plan, generator, other), "disk_s": disk_s}
    del other
    print("[gpu-check] LoRA: reading and applying an adapter", flush=True)
    from models.built_loras import resolve_lora

    files = [lora_load.weights_file(resolve_lora(source)) for source in plan.loras]
    result["lora"] = lora_load.measure_on(generator.pipeline, files, repeat=3)
    result["seconds"] = time.perf_counter() - started
    return result


def _markdown(result: dict[str, Any]) -> str:
    env, start, sw = result["environment"], result["start"], result["switch"]
    lines = [f"Device: {env.get('device_name', env['device'])} · driver {env.get('driver', '-')} · CUDA {env['cuda']} · "
             f"torch {env['torch']} · diffusers {env['diffusers']} · {result['plan']['models'][0]} "
             f"{result['plan']['dtype']} {result['plan']['size']}" + (" · DRY RUN (tiny on CPU)" if result["plan"]["dry_run"] else ""),
             "", "| batch | s / step | s / image-step | peak memory, GB |", "|---|---|---|---|"]
    lines += [f"| {b} | {r['s_per_step']:.4f} | {r['s_per_image_step']:.4f} | {r['peak_memory_gb'] or '-'} |"
              for b, r in result["steps"].items()]
    oom, dl = result["out_of_memory"], result["deadline"]
    lines += ["", f"Start: imports {start['imports_s']:.2f} s, CUDA context {start.get('cuda_context_s', float('nan')):.2f} s, "
              f"weights {start['weights_disk_cold_s']:.2f} s (page cache dropped) / {start['weights_disk_warm_s']:.2f} s "
              f"(warm), first call {start['first_call_s']:.2f} s.",
              f"Out of memory (batch {oom['batch']}{', injected' if oom['injected'] else ''}): {oom['outcome']}, "
              f"then {oom['next_request']} on the same runner.",
              f"Deadline: {dl['outcome']} after {dl['steps_done']} of {dl['steps']} steps, overrun "
              f"{dl['overrun_s'] if dl['overrun_s'] is not None else float('nan'):.3f} s against a step of {dl['step_s']:.3f} s.",
              f"Switch ({sw['weights_gb']} GB): host RAM{' (pinned)' if sw['pinned'] else ''} → device "
              f"{sw['host_to_device_s']:.3f} s, device → host {sw['device_to_host_s']:.3f} s, disk {sw['disk_s']:.2f} s.",
              f"Whole check: {result['seconds']:.0f} s.", ""]
    lines += lora_load.table(result["lora"], result["plan"]["loras"], result["plan"]["models"][0])
    return "\n".join(lines)


def main(args: argparse.Namespace) -> int:
    import torch

    if not args.dry_run and not torch.cuda.is_available():
        raise SystemExit("gpu-check needs a CUDA GPU; --dry-run checks the script on CPU")
    plan = Plan(args.dry_run)
    result = run_check(plan)
    name = args.name or ("cpu-gpu-check-dry-run" if args.dry_run else "gpu-check")
    write_result(args.out_dir, name, result, _markdown(result), with_environment=False)  # it has its own
    return 0
