"""``sd15-shaped``: SD 1.5's architecture, checked against SD 1.5's published configs and parameter
counts without building its 1.07 billion weights (modules on the meta device)."""

from __future__ import annotations

import pytest

from models.loader import builtin_seed
from models.sd15_shaped import build_modules

#: stable-diffusion-v1-5/stable-diffusion-v1-5: parameters per component, as the released weights have.
PUBLISHED_PARAMETERS = {"unet": 859_520_964, "vae": 83_653_863, "text_encoder": 123_060_480}


def test_the_modules_have_sd15s_published_shapes() -> None:
    modules = build_modules(seed=0, device="meta")
    counts = {name: sum(p.numel() for p in module.parameters()) for name, module in modules.items()}
    assert counts == PUBLISHED_PARAMETERS
    unet, vae, text = modules["unet"].config, modules["vae"].config, modules["text_encoder"].config
    assert (tuple(unet.block_out_channels), unet.layers_per_block, unet.cross_attention_dim, unet.attention_head_dim,
            unet.sample_size, unet.in_channels) == ((320, 640, 1280, 1280), 2, 768, 8, 64, 4)
    assert (tuple(vae.block_out_channels), vae.latent_channels) == ((128, 256, 512, 512), 4)
    assert (text.hidden_size, text.num_hidden_layers, text.num_attention_heads, text.vocab_size,
            text.max_position_embeddings) == (768, 12, 12, 49408, 77)
    # fp16 on disk: about 2.1 GB, what SD 1.5's fp16 weights weigh
    assert 2.0e9 < 2 * sum(PUBLISHED_PARAMETERS.values()) < 2.2e9


@pytest.mark.parametrize(("spec", "seed"), [("sd15-shaped", 0), ("sd15-shaped:7", 7), ("tiny:2", 2),
                                            ("sd15-shaped:x", None), ("runwayml/sd15", None)])
def test_built_in_specs_name_their_seed(spec: str, seed: int | None) -> None:
    assert builtin_seed(spec) == seed
