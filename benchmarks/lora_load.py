"""``sdserve-bench lora-load``: what loading a LoRA adapter costs, split into the part that can
happen before its call (reading the adapter's file into host memory) and the part that cannot
(applying it to the pipeline: PEFT wraps each adapted layer and copies the weights in).

In process, no Ray: each measurement ``--repeat`` times on a pipeline of ``--model``, alternating
the adapters given so that every load is of an adapter the pipeline does not hold:

- **read, page cache cold / warm**: ``safetensors.torch.load_file`` of the adapter's file (what
  ``load_lora_weights`` does first) after its pages were dropped with ``posix_fadvise(DONTNEED)``,
  then again right after;
- **apply**: ``load_lora_weights`` of the state dict already in memory, whole and its UNet layers
  only;
- **whole, page cache cold / warm**: ``load_lora_weights`` of the file, as a replica loads one;
- **hotswap apply**: ``load_lora_weights(..., hotswap=True)`` into an adapter slot already loaded,
  UNet layers only (diffusers does not hotswap text-encoder adapters);
- **delete**: ``delete_adapters``.

A prefetch that reads an adapter's file while its request queues turns a cold read into a warm one
at most; applying it stays on the call's path. The figures are for this machine's disk and CPU:
on a GPU the apply also copies the weights to the device (tens of MB: milliseconds), while its
layer wrapping is CPU work.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from benchmarks.report import write_result
from benchmarks.switch import _summary, _timed, drop_page_cache


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="tiny", help="the base checkpoint ('tiny', 'sd15-shaped', a directory)")
    parser.add_argument("--lora", action="append", default=[], metavar="SOURCE",
                        help="an adapter (repeat, two at least; default tiny-lora:1 and tiny-lora:2; "
                             "'sd15-shaped-lora:N' for SD 1.5's size)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="auto", help="auto (fp16 on CUDA, fp32 on CPU), float16, float32")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--out-dir", default="benchmarks/results")
    parser.add_argument("--name", default="cpu-lora-load")


def weights_file(directory: str) -> Path:
    path = Path(directory)
    return path if path.is_file() else next(path.glob("*.safetensors"))


def measure(model: str, loras: list[str], device: str, repeat: int, dtype: str = "auto") -> dict[str, Any]:
    """The figures for adapters ``loras`` on a pipeline of ``model`` built here."""
    from models.built_loras import resolve_lora
    from models.loader import ModelSpec, load_pipeline

    files = [weights_file(resolve_lora(source)) for source in loras]  # built first, outside the timing
    return measure_on(load_pipeline(ModelSpec(model, device=device, dtype=dtype)), files, repeat)


def measure_on(pipeline: Any, files: list[Path], repeat: int) -> dict[str, Any]:
    """The figures for the adapter ``files`` on a loaded ``pipeline`` (left as it was found)."""
    from safetensors.torch import load_file

    from models.adapters import quiet_foreign_missing_keys

    def load(source: Any, name: str, **options: Any) -> None:
        """``load_lora_weights`` as a replica calls it (transformers' false MISSING reports dropped)."""
        with quiet_foreign_missing_keys(name):
            pipeline.load_lora_weights(source, adapter_name=name, **options)

    load(str(files[0]), "warm-up")  # imports, first-use costs out
    pipeline.delete_adapters("warm-up")
    figures: dict[str, list[float]] = {}

    def timed(what: str, action: Any) -> Any:
        seconds, result = _timed(action)
        figures.setdefault(what, []).append(seconds)
        return result

    hotswap_error = ""
    for k in range(repeat):
        path = files[k % len(files)]
        drop_page_cache(path.parent)
        state = timed("read, page cache cold", lambda: load_file(str(path)))
        timed("read, page cache warm", lambda: load_file(str(path)))
        timed("apply (state dict in memory)", lambda: load(dict(state), "a"))
        timed("delete", lambda: pipeline.delete_adapters("a"))
        unet_only = {key: value for key, value in state.items() if key.startswith("unet.")}
        timed("apply, UNet layers only", lambda: load(dict(unet_only), "u"))
        pipeline.delete_adapters("u")
        drop_page_cache(path.parent)
        timed("whole load, page cache cold", lambda: load(str(path), "b"))
        pipeline.delete_adapters("b")
        timed("whole load, page cache warm", lambda: load(str(path), "b"))
        pipeline.delete_adapters("b")
        if not hotswap_error:
            hotswap_error = _hotswap(pipeline, load, [load_file(str(f)) for f in (path, files[(k + 1) % len(files)])],
                                     timed)
    return {
        "adapter_bytes": [f.stat().st_size for f in files],
        "adapted_tensors": len(load_file(str(files[0]))),
        "page_cache_drop": "posix_fadvise(POSIX_FADV_DONTNEED) on the adapter's file",
        "hotswap_error": hotswap_error,
        "figures": {what: _summary(seconds) for what, seconds in figures.items()},
    }


def _hotswap(pipeline: Any, load: Any, states: list[dict[str, Any]], timed: Any) -> str:
    """Load the first adapter's UNet layers as slot ``s``, time hotswapping the second's into it,
    then delete the slot; the error if diffusers refuses the hotswap (nothing timed)."""
    unet_only = [{k: v for k, v in state.items() if k.startswith("unet.")} for state in states]
    load(dict(unet_only[0]), "s")
    try:
        timed("hotswap apply, UNet layers only (into a loaded adapter)", lambda: load(dict(unet_only[1]), "s", hotswap=True))
        return ""
    except Exception as error:  # noqa: BLE001 - reported in the result: which diffusers refuses
        return f"{type(error).__name__}: {error}"
    finally:
        pipeline.delete_adapters("s")


def main(args: argparse.Namespace) -> int:
    loras = args.lora or ["tiny-lora:1", "tiny-lora:2"]
    if len(loras) < 2:
        raise SystemExit("lora-load needs two adapters at least (--lora, repeated)")
    print(f"[lora-load] {len(loras)} adapters on {args.model}, {args.device}, {args.repeat} repeats", flush=True)
    result = measure(args.model, loras, args.device, args.repeat, args.dtype)
    write_result(args.out_dir, args.name, result, "\n".join(table(result, loras, f"{args.model}, {args.device} ({args.dtype})")))
    return 0


def table(result: dict[str, Any], loras: list[str] | tuple[str, ...], where: str) -> list[str]:
    """The figures as Markdown lines."""
    sizes = ", ".join(f"{b / 2**20:.2f} MiB" for b in result["adapter_bytes"])
    lines = [f"Adapters {', '.join(loras)} ({sizes}; {result['adapted_tensors']} tensors) on {where}.",
             "", "| what | median, s | p90, s | n |", "|---|---|---|---|"]
    lines += [f"| {name} | {s['median_s']:.4f} | {s['p90_s']:.4f} | {s['n']} |" for name, s in result["figures"].items()]
    return lines + (["", f"Hotswap refused: {result['hotswap_error']}"] if result["hotswap_error"] else [])
