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
    image (and mask), decoded once, repeated for each image it asks for."""
    first = group[0]
    decoded = [(_png(r.image, "RGB"), _png(r.mask, "L") if first.kind == INPAINT else None)  # type: ignore[arg-type]
               for r in group]
    arguments: dict[str, Any] = {"image": [image for (image, _), r in zip(decoded, group) for _ in range(r.n)],
                                 "strength": first.strength}
    if first.kind == INPAINT:
        arguments["mask_image"] = [mask for (_, mask), r in zip(decoded, group) for _ in range(r.n)]
        arguments.update(width=first.width, height=first.height)
    return arguments


def composite(generated: Any, arguments: dict[str, Any], index: int) -> Any:
    """Output image ``index`` of a call made with ``arguments``: an inpainted one gets its input's
    pixels back outside the mask, unchanged."""
    from PIL import Image

    if "mask_image" not in arguments:
        return generated
    return Image.composite(generated.convert("RGB"), arguments["image"][index], arguments["mask_image"][index])
