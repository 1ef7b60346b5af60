"""Tiny LoRA adapters for the ``tiny`` model, built offline: PEFT LoRA (rank 4) on the tiny UNet's
attention projections (``to_q``, ``to_k``, ``to_v``, ``to_out.0``) with weights from a seed, saved in
diffusers' LoRA format (``save_lora_weights``) and loaded back with ``load_lora_weights`` exactly as
a downloaded adapter would be. ``tiny-lora:N`` names the adapter from seed N. Like ``tiny`` they
draw noise; what they prove is the plumbing: an adapter at scale 0 gives the base image, at scale 1
another one, the same adapter twice the same image.
"""

from __future__ import annotations

from pathlib import Path

from models.tiny import TINY_MODEL_VERSION, build_once, default_cache_dir, ensure_tiny_model

TINY_LORA = "tiny-lora"
TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]


def tiny_lora_seed(source: str) -> int | None:
    """The seed of a ``tiny-lora:N`` source; None for any other."""
    name, sep, seed = source.partition(":")
    return int(seed) if name == TINY_LORA and sep and seed.isdigit() else None


def ensure_tiny_lora(seed: int, cache_dir: Path | None = None) -> Path:
    """The directory of the tiny LoRA from ``seed``, built first if it is not cached."""
    target = (cache_dir or default_cache_dir()) / f"{TINY_LORA}-v{TINY_MODEL_VERSION}-seed{seed}"
    return build_once(target, "pytorch_lora_weights.safetensors",
                      lambda work, out: _build(seed, ensure_tiny_model(cache_dir), out))


def _build(seed: int, base: Path, out: Path) -> None:
    import torch
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    unet = UNet2DConditionModel.from_pretrained(str(base), subfolder="unet")
    unet.add_adapter(LoraConfig(r=4, lora_alpha=4, target_modules=TARGETS))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, weight in unet.named_parameters():
            if "lora_" in name:  # PEFT starts B at zero (no effect): draw both
                weight.copy_(torch.randn(weight.shape, generator=generator) * 0.5)
    StableDiffusionPipeline.save_lora_weights(out, unet_lora_layers=get_peft_model_state_dict(unet))


def resolve_lora(source: str, cache_dir: Path | None = None) -> str:
    """Where an adapter's weights are: a built tiny LoRA, or a directory / ``.safetensors`` file."""
    seed = tiny_lora_seed(source)
    if seed is not None:
        return str(ensure_tiny_lora(seed, cache_dir))
    path = Path(source).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"LoRA {source!r}: no such file or directory (use a diffusers LoRA directory, "
                                "a .safetensors file, or tiny-lora:N)")
    return str(path)
