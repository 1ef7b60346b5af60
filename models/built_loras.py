"""LoRA adapters sdserve builds offline, saved in diffusers' LoRA format (``save_lora_weights``) and
loaded back with ``load_lora_weights`` exactly as a downloaded adapter would be:

- ``tiny-lora:N``: rank 4 on the tiny UNet's attention projections, weights from seed N. Like
  ``tiny`` it draws noise; what it proves is the plumbing: an adapter at scale 0 gives the base
  image, at scale 1 another one, the same adapter twice the same image.
- ``sd15-shaped-lora:N``: the shape of a common SD 1.5 LoRA (kohya's default targets: every linear
  layer of the UNet's transformer blocks and of the CLIP text encoder's layers, rank 64, fp16;
  ~72 MiB) on :mod:`models.sd15_shaped`. Its weights are random: it exists to measure what reading
  and applying an adapter of that size costs, never to serve users.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from models.sd15_shaped import SD15_SHAPED_VERSION, ensure_sd15_shaped
from models.tiny import TINY_MODEL_VERSION, build_once, default_cache_dir, ensure_tiny_model

TINY_LORA = "tiny-lora"
SD15_SHAPED_LORA = "sd15-shaped-lora"
WEIGHTS_FILE = "pytorch_lora_weights.safetensors"


@dataclass(frozen=True)
class LoraShape:
    """What one built adapter family adapts, at what rank, on which base."""

    version: str
    rank: int
    unet_targets: tuple[str, ...]
    text_targets: tuple[str, ...]  # () : the text encoder is not adapted
    base: Callable[[Path | None], Path]
    scale: float  # the random weights' standard deviation
    fp16: bool


SHAPES: dict[str, LoraShape] = {
    TINY_LORA: LoraShape(TINY_MODEL_VERSION, 4, ("to_q", "to_k", "to_v", "to_out.0"), (),
                         lambda cache: ensure_tiny_model(cache), 0.5, False),
    SD15_SHAPED_LORA: LoraShape(
        SD15_SHAPED_VERSION, 64,
        ("to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "ff.net.0.proj", "ff.net.2"),
        ("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"),
        lambda cache: ensure_sd15_shaped(cache), 0.01, True),
}


def built_lora_family(source: str) -> tuple[str, int] | None:
    """(family, seed) of a ``tiny-lora:N`` / ``sd15-shaped-lora:N`` source; None for any other."""
    name, sep, seed = source.partition(":")
    return (name, int(seed)) if name in SHAPES and sep and seed.isdigit() else None


def ensure_built_lora(family: str, seed: int, cache_dir: Path | None = None) -> Path:
    """The directory of the built adapter ``family:seed``, built first if it is not cached."""
    shape = SHAPES[family]
    target = (cache_dir or default_cache_dir()) / f"{family}-v{shape.version}-seed{seed}"
    return build_once(target, WEIGHTS_FILE, lambda work, out: build_lora(shape, seed, shape.base(cache_dir), out))


def build_lora(shape: LoraShape, seed: int, base: Path, out: Path) -> None:
    """Save an adapter of ``shape`` on the checkpoint at ``base``, weights drawn from ``seed``, into ``out``."""
    import torch
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict
    from transformers import CLIPTextModel

    generator = torch.Generator().manual_seed(seed)

    def adapted(model: torch.nn.Module, targets: tuple[str, ...]) -> dict[str, torch.Tensor]:
        model.add_adapter(LoraConfig(r=shape.rank, lora_alpha=shape.rank, target_modules=list(targets)))
        with torch.no_grad():
            for name, weight in model.named_parameters():
                if "lora_" in name:  # PEFT starts B at zero (no effect): draw both
                    weight.copy_(torch.randn(weight.shape, generator=generator) * shape.scale)
        layers = get_peft_model_state_dict(model)
        return {k: v.to(torch.float16) for k, v in layers.items()} if shape.fp16 else layers

    unet = UNet2DConditionModel.from_pretrained(str(base), subfolder="unet", torch_dtype=torch.float32)
    text = CLIPTextModel.from_pretrained(str(base), subfolder="text_encoder", torch_dtype=torch.float32) \
        if shape.text_targets else None
    StableDiffusionPipeline.save_lora_weights(
        out, unet_lora_layers=adapted(unet, shape.unet_targets),
        text_encoder_lora_layers=adapted(text, shape.text_targets) if text is not None else None)


def resolve_lora(source: str, cache_dir: Path | None = None) -> str:
    """Where an adapter's weights are: a built adapter (``tiny-lora:N``, ``sd15-shaped-lora:N``), or
    a directory / ``.safetensors`` file."""
    family = built_lora_family(source)
    if family is not None:
        return str(ensure_built_lora(*family, cache_dir))
    path = Path(source).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"LoRA {source!r}: no such file or directory (use a diffusers LoRA directory, "
                                "a .safetensors file, tiny-lora:N or sd15-shaped-lora:N)")
    return str(path)
