"""``sdserve-bench switch``: what bringing a checkpoint onto a replica costs, tier by tier.

In process, no Ray: the code a worker replica runs (:mod:`models.loader`, :mod:`models.host_tier`,
:class:`models.catalog.CatalogGenerator`) timed directly, each measurement ``--repeat`` times:

- **disk, page cache cold**: ``from_pretrained`` after the checkpoint's files were dropped from the
  page cache with ``posix_fadvise(DONTNEED)`` (no root needed; the kernel may keep pages another
  process maps — the result says the method);
- **disk, page cache warm**: the same load right after another;
- **host → device**: the weights copied from the host tier into a built pipeline of another
  checkpoint (what ``X-Model-Load: host`` costs), and **device → host**: the snapshot an eviction takes.
  On CPU a just-loaded pipeline's weights are the mapped safetensors file: the first copy into it
  pays a copy-on-write fault per page, so it is reported apart from the steady state (a pipeline whose
  weights are already in memory, as a replica's catalog has after its first switch). Every load
  counts reading its weights (each page touched), since on CPU the map defers them to first use;
- **LoRA**: ``load_lora_weights`` of one adapter into a pipeline, and its ``delete_adapters``;
- **through the catalog**: a replica's catalog with one resident checkpoint and a host tier, switching
  round the checkpoints; the tiers and seconds its results report (the reply headers' numbers).

The figures are for the checkpoints given (default: the tiny catalog of ``configs/cpu.yaml``) on
this machine; they say what the tiers cost relative to each other, not what SD 1.5 costs on a GPU.
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.report import write_result


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", action="append", default=[], metavar="SPEC",
                        help="a checkpoint ('tiny:N', a diffusers directory; repeat, two at least; "
                             "default tiny, tiny:1, tiny:2, tiny:3)")
    parser.add_argument("--lora", default="tiny-lora:1", help="adapter for the LoRA figures ('' to skip)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="auto", help="auto (fp16 on CUDA, fp32 on CPU), float16, float32")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--out-dir", default="benchmarks/results")
    parser.add_argument("--name", default="cpu-switch")


def drop_page_cache(directory: Path) -> None:
    """Ask the kernel to drop the files' cached pages (POSIX_FADV_DONTNEED; written back first, since
    dirty pages cannot be dropped)."""
    os.sync()
    for path in directory.rglob("*"):
        if path.is_file():
            fd = os.open(path, os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def _timed(action: Callable[[], Any]) -> tuple[float, Any]:
    started = time.perf_counter()
    result = action()
    return time.perf_counter() - started, result


def _summary(seconds: list[float]) -> dict[str, Any]:
    a = np.array(seconds)
    return {"n": len(a), "median_s": float(np.median(a)), "p90_s": float(np.percentile(a, 90)),
            "min_s": float(a.min()), "max_s": float(a.max())}


def measure(models: list[str], lora: str, device: str, repeat: int, dtype: str = "auto") -> dict[str, Any]:
    from models.built_loras import resolve_lora
    from models.catalog import CatalogGenerator
    from models.generator import DiffusionGenerator
    from models.host_tier import restore, snapshot
    from models.loader import ModelSpec, _weights_location, load_pipeline
    from models.request import GenerationRequest

    specs = [ModelSpec(m, device=device, dtype=dtype) for m in models]
    directories = [Path(_weights_location(s)) for s in specs]  # builds tiny ones first, outside the timing

    def loaded(spec: ModelSpec) -> Any:
        """Loaded with every weight read: on CPU ``from_pretrained`` maps the safetensors files and
        the reads happen on first use; touching each page charges them to the load."""
        pipeline = load_pipeline(spec)
        for module in (c for c in pipeline.components.values() if hasattr(c, "state_dict")):
            for tensor in module.state_dict().values():
                flat = tensor.reshape(-1)
                flat[:: max(1, 4096 // tensor.element_size())].sum()  # one element per page
        return pipeline

    loaded(specs[0])  # imports and first-use costs out of the figures
    cold, warm, to_host, first_copy, from_host, lora_load, lora_delete = [], [], [], [], [], [], []
    for k in range(repeat):
        spec, directory = specs[k % len(specs)], directories[k % len(specs)]
        if directory.is_dir():
            drop_page_cache(directory)
        cold.append(_timed(lambda: loaded(spec))[0])
        seconds, pipeline = _timed(lambda: loaded(spec))
        warm.append(seconds)
        seconds, weights = _timed(lambda: snapshot(pipeline))
        to_host.append(seconds)
        other = loaded(specs[(k + 1) % len(specs)])
        first_copy.append(_timed(lambda: restore(other, weights))[0])
        from_host.append(_timed(lambda: restore(other, weights))[0])
        if lora:
            path = resolve_lora(lora)
            lora_load.append(_timed(lambda: other.load_lora_weights(path, adapter_name="bench"))[0])
            lora_delete.append(_timed(lambda: other.delete_adapters("bench"))[0])
    nbytes = snapshot(load_pipeline(specs[0])).nbytes

    loaders = {m: (lambda spec=spec: DiffusionGenerator(load_pipeline(spec), spec.model)) for m, spec in zip(models, specs)}
    catalog = CatalogGenerator(loaders, models[0], resident=1, host_bytes=nbytes * len(models) * 2)
    by_tier: dict[str, list[float]] = {}
    for k in range(repeat * len(models)):
        request = GenerationRequest("switch", 64, 64, 1, 1.0, 0, model=models[(k + 1) % len(models)])
        tier, seconds = catalog.prepare(request)
        by_tier.setdefault(tier, []).append(seconds)
    return {
        "weights_bytes": nbytes,
        "page_cache_drop": "posix_fadvise(POSIX_FADV_DONTNEED) on the checkpoint's files",
        "tiers": {"disk, page cache cold": _summary(cold), "disk, page cache warm": _summary(warm),
                  "host → device (copy into a built pipeline)": _summary(from_host),
                  "host → device, first copy into a just-loaded pipeline": _summary(first_copy),
                  "device → host (eviction snapshot)": _summary(to_host),
                  **({"LoRA load": _summary(lora_load), "LoRA delete": _summary(lora_delete)} if lora else {})},
        "catalog": {tier: _summary(s) for tier, s in sorted(by_tier.items())},
    }


def main(args: argparse.Namespace) -> int:
    models = args.model or ["tiny", "tiny:1", "tiny:2", "tiny:3"]
    if len(models) < 2:
        raise SystemExit("switch needs two checkpoints at least (--model, repeated)")
    print(f"[switch] {len(models)} checkpoints on {args.device}, {args.repeat} repeats", flush=True)
    result = measure(models, args.lora, args.device, args.repeat, args.dtype)
    lines = [f"Checkpoints {', '.join(models)} on {args.device} ({args.dtype}); weights "
             f"{result['weights_bytes'] / 2**20:.1f} MiB each in memory.",
             "", "| what | median, s | p90, s | n |", "|---|---|---|---|"]
    lines += [f"| {name} | {s['median_s']:.4f} | {s['p90_s']:.4f} | {s['n']} |" for name, s in result["tiers"].items()]
    lines += ["", "Through the catalog (one resident checkpoint, a host tier; switching round them):", "",
              "| tier the result reported | median, s | p90, s | n |", "|---|---|---|---|"]
    lines += [f"| {tier} | {s['median_s']:.4f} | {s['p90_s']:.4f} | {s['n']} |" for tier, s in result["catalog"].items()]
    write_result(args.out_dir, args.name, result, "\n".join(lines))
    return 0
