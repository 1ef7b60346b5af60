"""``sd15-shaped``: a checkpoint with Stable Diffusion 1.5's exact architecture and random weights.

SD 1.5's weights cannot be downloaded here, but its shape is public (the ``config.json`` files of
``stable-diffusion-v1-5/stable-diffusion-v1-5``): a UNet2DConditionModel of 859,520,964 parameters, a
CLIP ViT-L/14 text encoder of 123,060,480 and an AutoencoderKL of 83,653,863. Built offline from those
configs with seeded random weights and saved in diffusers' layout as fp16 safetensors (~2.1 GB), it
costs what SD 1.5 costs to load, hold, copy and run — the same bytes and the same FLOPs — so cold
starts, checkpoint switches and GPU step times measured on it are SD 1.5's.

**Its images are noise**: the weights are random. It exists to measure, never to serve users; the
loader logs that whenever it loads one. The tokenizer is the tiny model's byte-level one (every id
fits SD 1.5's 49,408-entry embedding), since CLIP's vocabulary cannot be downloaded either.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from models.tiny import build_once, default_cache_dir, write_tokenizer_files

SD15_SHAPED = "sd15-shaped"
#: Bump when the build changes, so old cached builds are not reused.
SD15_SHAPED_VERSION = "1"

#: From SD 1.5's unet/config.json, vae/config.json and text_encoder/config.json.
UNET_CONFIG: dict[str, Any] = {
    "act_fn": "silu", "attention_head_dim": 8, "block_out_channels": (320, 640, 1280, 1280),
    "center_input_sample": False, "cross_attention_dim": 768,
    "down_block_types": ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    "downsample_padding": 1, "flip_sin_to_cos": True, "freq_shift": 0, "in_channels": 4, "layers_per_block": 2,
    "mid_block_scale_factor": 1, "norm_eps": 1e-05, "norm_num_groups": 32, "out_channels": 4, "sample_size": 64,
    "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
}
VAE_CONFIG: dict[str, Any] = {
    "act_fn": "silu", "block_out_channels": (128, 256, 512, 512), "down_block_types": ("DownEncoderBlock2D",) * 4,
    "in_channels": 3, "latent_channels": 4, "layers_per_block": 2, "norm_num_groups": 32, "out_channels": 3,
    "sample_size": 512, "up_block_types": ("UpDecoderBlock2D",) * 4,
}
TEXT_CONFIG: dict[str, Any] = {
    "hidden_act": "quick_gelu", "hidden_size": 768, "intermediate_size": 3072, "max_position_embeddings": 77,
    "num_attention_heads": 12, "num_hidden_layers": 12, "projection_dim": 768, "vocab_size": 49408,
}
SCHEDULER_CONFIG: dict[str, Any] = {  # SD 1.5's PNDM schedule, as DDIM (the serving path's scheduler)
    "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear", "clip_sample": False,
    "set_alpha_to_one": False, "steps_offset": 1,
}


def sd15_shaped_seed(model: str) -> int | None:
    """The seed of an ``sd15-shaped`` / ``sd15-shaped:N`` spec; None for any other model."""
    name, sep, seed = model.partition(":")
    if name != SD15_SHAPED:
        return None
    return 0 if not sep else int(seed) if seed.isdigit() else None


def build_modules(seed: int, device: str = "cpu", tokens: dict[str, int] | None = None) -> dict[str, Any]:
    """The three weighted modules, seeded (``device="meta"``: shapes only, no memory, instantly);
    ``tokens``: the tokenizer's bos/eos/pad ids for the text encoder's config."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    with torch.device(device):
        return {"unet": UNet2DConditionModel(**UNET_CONFIG), "vae": AutoencoderKL(**VAE_CONFIG),
                "text_encoder": CLIPTextModel(CLIPTextConfig(**TEXT_CONFIG, **(tokens or {})))}


def _build(seed: int, progress: Callable[[str], None]) -> Callable[[Path, Path], None]:
    def build(work_dir: Path, out_dir: Path) -> None:
        import torch
        from diffusers import DDIMScheduler, StableDiffusionPipeline
        from transformers import CLIPTokenizer

        progress(f"building {SD15_SHAPED}:{seed} (SD 1.5's architecture, random weights; ~2.1 GB fp16)")
        vocab, merges = write_tokenizer_files(work_dir)
        tokenizer = CLIPTokenizer(str(vocab), str(merges), model_max_length=77)
        ids = {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
               "pad_token_id": tokenizer.pad_token_id}
        modules = {name: module.to(torch.float16) for name, module in build_modules(seed, tokens=ids).items()}
        pipeline = StableDiffusionPipeline(
            **modules, tokenizer=tokenizer,
            scheduler=DDIMScheduler(**SCHEDULER_CONFIG), safety_checker=None, feature_extractor=None,
            requires_safety_checker=False)
        progress(f"saving {SD15_SHAPED}:{seed} as fp16 safetensors")
        pipeline.save_pretrained(out_dir, safe_serialization=True)

    return build


def sd15_shaped_dir(cache_dir: Path | None = None, seed: int = 0) -> Path:
    """Where the SD 1.5-shaped checkpoint with weights from ``seed`` is saved (built or not)."""
    return (cache_dir or default_cache_dir()) / f"{SD15_SHAPED}-v{SD15_SHAPED_VERSION}-seed{seed}"


def ensure_sd15_shaped(cache_dir: Path | None = None, seed: int = 0,
                       progress: Callable[[str], None] = print) -> Path:
    """The directory of the saved SD 1.5-shaped checkpoint (weights from ``seed``), built first if it
    is not cached (about a minute and 2.1 GB of disk on a laptop CPU)."""
    return build_once(sd15_shaped_dir(cache_dir, seed), "model_index.json", _build(seed, progress))
