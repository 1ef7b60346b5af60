"""Edits of an input image on the pipeline a replica already holds: image-to-image and inpainting.

diffusers builds both pipelines from the loaded one's components (``AutoPipelineFor*.from_pipe``):
no weights are loaded or copied, so a checkpoint's edits cost no memory beyond their activations and
follow the checkpoint through LoRA changes and host-tier swaps (the modules are the same objects).

Inpainting returns the input's pixels unchanged outside the mask — the decoded image is composited
back onto the input — since users of inpainting expect exactly that, and a VAE round trip alone
would change every pixel a little.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any

from models.request import IMG2IMG, INPAINT, GenerationRequest


def edit_pipeline(pipeline: Any, kind: str) -> Any:
    """The image-to-image or inpainting pipeline sharing ``pipeline``'s components."""
    from diffusers import AutoPipelineForImage2Image, AutoPipelineForInpainting

    built = {IMG2IMG: AutoPipelineForImage2Image, INPAINT: AutoPipelineForInpainting}[kind].from_pipe(pipeline)
    built.set_progress_bar_config(disable=True)
    return built


def _png(data: bytes, mode: str) -> Any:
    from PIL import Image

    return Image.open(io.BytesIO(data)).convert(mode)


def edit_arguments(group: Sequence[GenerationRequest]) -> dict[str, Any]:
    """The pipeline call's inputs for a group of edits (one kind, size and strength): each request's
    image (and mask) once per image it asks for."""
    first = group[0]
    images = [_png(r.image, "RGB") for r in group for _ in range(r.n)]  # type: ignore[arg-type]
    arguments: dict[str, Any] = {"image": images, "strength": first.strength}
    if first.kind == INPAINT:
        arguments["mask_image"] = [_png(r.mask, "L") for r in group for _ in range(r.n)]  # type: ignore[arg-type]
        arguments.update(width=first.width, height=first.height)
    return arguments


def composite(generated: Any, request: GenerationRequest) -> Any:
    """An inpainted image with the input's pixels outside the mask, unchanged."""
    from PIL import Image

    if request.kind != INPAINT or request.mask is None or request.image is None:
        return generated
    original = _png(request.image, "RGB")
    return Image.composite(generated.convert("RGB"), original, _png(request.mask, "L"))
