"""Resolve a model spec to a loaded diffusers pipeline on the right device and dtype.

A spec is one of:
- ``tiny``: the built-in offline model (see :mod:`models.tiny`), built on first use; ``tiny:N`` the
  same with weights from seed N;
- ``sd15-shaped`` (``:N``): SD 1.5's architecture with random weights, ~2.1 GB, built offline on first
  use (see :mod:`models.sd15_shaped`): for measuring loads and steps at full size, never for users;
- a path to a local diffusers directory (``model_index.json`` inside);
- a Hugging Face id such as ``stable-diffusion-v1-5/stable-diffusion-v1-5``, resolved from the local
  cache only unless ``allow_download`` is set, so a server never reaches the network by surprise.
All three go through the same ``from_pretrained`` call.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from models.sd15_shaped import ensure_sd15_shaped, sd15_shaped_seed
from models.tiny import ensure_tiny_model

log = logging.getLogger(__name__)

TINY_SPEC = "tiny"


class ModelLoadError(RuntimeError):
    """The model could not be loaded; the message says why and what to do."""


@dataclass(frozen=True)
class ModelSpec:
    """Where the weights come from and how to place them."""

    model: str = TINY_SPEC
    device: str = "auto"  # "auto" | "cpu" | "cuda" | "cuda:N"
    dtype: str = "auto"  # "auto" | "float32" | "float16" | "bfloat16"
    allow_download: bool = False
    compile_unet: bool = False
    cache_dir: str | None = None


def resolve_device(device: str) -> str:
    """``auto`` means CUDA when torch sees a GPU, else CPU."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ModelLoadError(f"device {device!r} requested but torch sees no CUDA GPU")
    return device


def resolve_dtype(dtype: str, device: str) -> Any:
    """``auto`` means float16 on CUDA (the usual SD serving setting) and float32 on CPU."""
    import torch

    if dtype == "auto":
        return torch.float16 if device.startswith("cuda") else torch.float32
    try:
        return {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[dtype]
    except KeyError:
        raise ModelLoadError(f"unknown dtype {dtype!r}: use auto, float32, float16 or bfloat16") from None


def tiny_seed(model: str) -> int | None:
    """The seed of a ``tiny`` / ``tiny:N`` spec; None for any other model."""
    if model == TINY_SPEC:
        return 0
    name, sep, seed = model.partition(":")
    if name == TINY_SPEC and sep and seed.isdigit():
        return int(seed)
    return None


def builtin_seed(model: str) -> int | None:
    """The seed of a model sdserve builds offline (``tiny``, ``sd15-shaped``, with ``:N``), else None."""
    seed = tiny_seed(model)
    return seed if seed is not None else sd15_shaped_seed(model)


def _weights_location(spec: ModelSpec) -> str:
    cache = Path(spec.cache_dir) if spec.cache_dir else None
    seed = tiny_seed(spec.model)
    if seed is not None:
        return str(ensure_tiny_model(cache, seed))
    seed = sd15_shaped_seed(spec.model)
    if seed is not None:
        log.warning("%s has SD 1.5's architecture and RANDOM weights: its images are noise (for measuring only)",
                    spec.model)
        return str(ensure_sd15_shaped(cache, seed, progress=log.warning))
    path = Path(spec.model).expanduser()
    if path.exists():
        if not (path / "model_index.json").is_file():
            raise ModelLoadError(f"{path} is not a diffusers model directory (no model_index.json)")
        return str(path)
    return spec.model


def check_available(spec: ModelSpec) -> None:
    """Fail at once, before torch and diffusers are even imported, for a Hugging Face id that is
    not in the local cache when downloads are off — a replica with a mistyped model id then fails
    in a second, not after its framework imports (Ray retries a failed replica start three times)."""
    if builtin_seed(spec.model) is not None or spec.allow_download or Path(spec.model).expanduser().exists():
        return
    from huggingface_hub import try_to_load_from_cache

    try:
        found = try_to_load_from_cache(spec.model, "model_index.json")
    except ValueError as exc:  # not even a valid repository id
        raise ModelLoadError(f"cannot load model {spec.model!r}: {exc}") from None
    if not isinstance(found, str):
        raise ModelLoadError(
            f"cannot load model {spec.model!r}: it is not in the local Hugging Face cache. Download it "
            f"first (`hf download {spec.model}`) or set allow_download: true.")


def load_pipeline(spec: ModelSpec):
    """Load the Stable Diffusion pipeline named by ``spec``; raise :class:`ModelLoadError` clearly."""
    import torch
    from diffusers import StableDiffusionPipeline

    device = resolve_device(spec.device)
    dtype = resolve_dtype(spec.dtype, device)
    location = _weights_location(spec)
    log.info("loading model %s from %s on %s (%s)", spec.model, location, device, dtype)
    try:
        pipeline = StableDiffusionPipeline.from_pretrained(
            location,
            dtype=dtype,
            local_files_only=not spec.allow_download,
        )
    except (OSError, ValueError) as exc:
        hint = (
            f" It is not in the local Hugging Face cache: download it first "
            f"(`hf download {spec.model}`) or set allow_download: true."
            if not spec.allow_download and builtin_seed(spec.model) is None
            else ""
        )
        raise ModelLoadError(f"cannot load model {spec.model!r}: {str(exc).rstrip('.')}.{hint}") from exc
    pipeline = pipeline.to(device)
    pipeline.set_progress_bar_config(disable=True)
    if spec.compile_unet:
        pipeline.unet = torch.compile(pipeline.unet, mode="reduce-overhead", fullgraph=True)
    return pipeline
