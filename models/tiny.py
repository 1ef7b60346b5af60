"""The built-in ``tiny`` model: a structurally real Stable Diffusion pipeline with seeded random weights.

Nothing can be downloaded here, and no package ships SD weights, so tests and the CPU demo use a
pipeline built from configs: a CLIP text encoder and tokenizer, a cross-attention UNet with a DDIM
scheduler, and a KL autoencoder — the same classes as SD 1.5, only narrow. The shapes follow
diffusers' own unit tests. The build is seeded and deterministic, written with ``save_pretrained``
and then loaded with ``from_pretrained`` exactly like a real checkpoint, so the serving code path is
the one real checkpoints take on GPU machines.

The images it draws are noise-like (the weights are random); what it proves is the plumbing:
sizes, seeds, batching, cancellation and memory behaviour.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

#: Bump when the architecture or seeds change, so old cached builds are not reused.
TINY_MODEL_VERSION = "1"
TINY_MODEL_NAME = "sdserve-tiny"
#: The default seed; ``tiny:N`` is the same architecture with weights drawn from seed N (a catalog
#: of visibly different checkpoints that costs nothing to build).
_SEED = 0


def default_cache_dir() -> Path:
    """Where built models live: ``$SDSERVE_CACHE`` or ``~/.cache/sdserve``."""
    return Path(os.environ.get("SDSERVE_CACHE", Path.home() / ".cache" / "sdserve"))


def _bytes_to_unicode() -> dict[int, str]:
    """CLIP/GPT-2's reversible byte → printable-unicode map (the byte-level BPE base alphabet)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    codes = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            codes.append(256 + extra)
            extra += 1
    return dict(zip(printable, (chr(c) for c in codes)))


def write_tokenizer_files(directory: Path) -> tuple[Path, Path]:
    """A byte-level BPE vocabulary: every byte, every byte ending a word, and the two specials.

    No merges: each character is one token. That is a valid CLIP tokenizer (any text encodes, with
    padding and truncation to 77 tokens), just not an efficient one.
    """
    alphabet = list(_bytes_to_unicode().values())
    tokens = alphabet + [c + "</w>" for c in alphabet] + ["<|startoftext|>", "<|endoftext|>"]
    vocab_file = directory / "vocab.json"
    merges_file = directory / "merges.txt"
    vocab_file.write_text(json.dumps({tok: i for i, tok in enumerate(tokens)}, ensure_ascii=False))
    merges_file.write_text("#version: 0.2\n", encoding="utf-8")
    return vocab_file, merges_file


def build_tiny_pipeline(work_dir: Path, seed: int = _SEED):
    """Construct the tiny pipeline in memory (seeded), using ``work_dir`` for tokenizer files."""
    import torch
    from diffusers import (
        AutoencoderKL,
        DDIMScheduler,
        StableDiffusionPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    vocab_file, merges_file = write_tokenizer_files(work_dir)
    tokenizer = CLIPTokenizer(str(vocab_file), str(merges_file), model_max_length=77)

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        block_out_channels=(4, 8),
        layers_per_block=1,
        sample_size=32,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32,
        norm_num_groups=2,
    )
    torch.manual_seed(seed)
    vae = AutoencoderKL(
        block_out_channels=[4, 8],
        in_channels=3,
        out_channels=3,
        down_block_types=["DownEncoderBlock2D", "DownEncoderBlock2D"],
        up_block_types=["UpDecoderBlock2D", "UpDecoderBlock2D"],
        latent_channels=4,
        norm_num_groups=2,
    )
    torch.manual_seed(seed)
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            bos_token_id=len(tokenizer) - 2,
            eos_token_id=len(tokenizer) - 1,
            pad_token_id=len(tokenizer) - 1,
            hidden_size=32,
            intermediate_size=37,
            layer_norm_eps=1e-05,
            num_attention_heads=4,
            num_hidden_layers=5,
            vocab_size=len(tokenizer),
            max_position_embeddings=77,
        )
    )
    scheduler = DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
    )
    return StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def build_once(target: Path, marker: str, build: Callable[[Path, Path], None]) -> Path:
    """``target``, built by ``build(work_dir, out_dir)`` unless ``target/marker`` is there already.

    The build goes to a temporary sibling directory and is renamed into place, so replicas that
    start at the same moment never see a half-written one; a loser of the race discards its copy.
    """
    if (target / marker).is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        build(staging, staging / "out")
        try:
            os.rename(staging / "out", target)
        except OSError:
            if not (target / marker).is_file():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def tiny_model_dir(cache_dir: Path | None = None, seed: int = _SEED) -> Path:
    """Where the tiny model with weights from ``seed`` is saved (whether or not it is built yet)."""
    suffix = "" if seed == _SEED else f"-seed{seed}"
    return (cache_dir or default_cache_dir()) / f"{TINY_MODEL_NAME}-v{TINY_MODEL_VERSION}{suffix}"


def ensure_tiny_model(cache_dir: Path | None = None, seed: int = _SEED) -> Path:
    """Return the directory of the saved tiny model (weights from ``seed``), building it first if
    it is not cached."""
    return build_once(tiny_model_dir(cache_dir, seed), "model_index.json",
                      lambda work, out: build_tiny_pipeline(work, seed).save_pretrained(out))
