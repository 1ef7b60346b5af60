"""``POST /v1/images/edits`` in OpenAI's shape: a multipart form → the pipeline's request.

The form carries ``image`` (PNG, JPEG or WebP; ``image[]`` is accepted for one image), an optional
``mask`` and the text fields of a generation (``prompt``, ``model``, ``n``, ``size``, ``seed``, …, and
``loras`` as JSON text) plus ``strength``. No mask: image-to-image; a mask: inpainting. The mask
follows OpenAI's convention — a PNG with an alpha channel, of the image's size, whose **fully
transparent pixels mark the area to edit** — and is turned into diffusers' (white = repaint).

Every check happens here, before anything is queued, and each failure names its field: a body that
is not multipart (415), an image that is not one (400), larger than the pixel cap (422, with the cap),
a mask of another size or without alpha (422), ``strength`` out of (0, 1] (422). The size of the
output is ``size`` when given (the image and mask are resized to it), else the image's own, rounded
down to multiples of 8.
"""

from __future__ import annotations

import dataclasses
import io
import json
from collections.abc import Collection, Sequence
from typing import Any

from fastapi import Request
from PIL import Image, UnidentifiedImageError
from starlette.datastructures import UploadFile

from models.request import DEFAULT_STRENGTH, IMG2IMG, INPAINT, GenerationRequest
from serve.admission import read_body
from serve.openai_api import ApiError, ImageGenerationBody, invalid, to_generation_request, validate_body
from serve.settings import LimitSettings

IMAGE_FORMATS = ("PNG", "JPEG", "WEBP")
MAX_FORM_FIELDS = 40


class ImageEditBody(ImageGenerationBody):
    """The text fields of an edit: a generation's, and how far from the input it may go."""

    strength: float | None = None


async def _form(request: Request, raw: bytes) -> Any:
    """The multipart form of ``raw`` (already read within the byte and time limits)."""
    from starlette.exceptions import HTTPException
    from starlette.formparsers import MultiPartException

    content_type = request.headers.get("content-type", "")
    if not content_type.startswith("multipart/form-data"):
        raise ApiError(415, "POST /v1/images/edits takes multipart/form-data (image, mask, prompt, ...), "
                       f"got {content_type or 'no content type'!r}", code="unsupported_media_type")

    async def replay() -> dict[str, Any]:
        return {"type": "http.request", "body": raw, "more_body": False}

    try:
        return await Request(request.scope, replay).form(max_files=3, max_fields=MAX_FORM_FIELDS)
    except (MultiPartException, HTTPException) as exc:
        detail = getattr(exc, "message", None) or getattr(exc, "detail", str(exc))
        raise ApiError(400, f"the multipart body could not be parsed: {detail}", code="invalid_multipart") from None


def _one_file(form: Any, *names: str, required: bool) -> bytes | None:
    files = [value for name in names for value in form.getlist(name)]
    if not files:
        if required:
            raise invalid(names[0], f"'{names[0]}' is required: the image to edit, as a file")
        return None
    if len(files) > 1:
        raise invalid(names[0], f"one {names[0]} per request, got {len(files)}")
    if not isinstance(files[0], UploadFile):
        raise invalid(names[0], f"'{names[0]}' must be a file (multipart file part), not text")
    return files[0].file.read()


def _decode(data: bytes, param: str, limits: LimitSettings, formats: Sequence[str] = IMAGE_FORMATS) -> Image.Image:
    """The image in ``data``: a known format, within the pixel cap (checked before decoding), intact."""
    try:
        image = Image.open(io.BytesIO(data))
    except (UnidentifiedImageError, OSError, ValueError):
        raise ApiError(400, f"{param} is not an image: send {', '.join(formats)}", code="invalid_image",
                       param=param) from None
    if image.format not in formats:
        raise ApiError(400, f"{param} is {image.format}: send {', '.join(formats)}", code="invalid_image",
                       param=param)
    cap = limits.max_width * limits.max_height
    if image.width * image.height > cap:
        raise invalid(param, f"{param} is {image.width}x{image.height} ({image.width * image.height:,} pixels): at most "
                             f"{cap:,} pixels ({limits.max_width}x{limits.max_height}, limits.max_width x max_height)")
    try:
        image.load()
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise ApiError(400, f"{param} could not be decoded (corrupt or truncated): {exc}", code="invalid_image",
                       param=param) from None
    return image


def _text_fields(form: Any) -> dict[str, Any]:
    fields: dict[str, Any] = {}
    for name, value in form.multi_items():
        if name in ("image", "image[]", "mask"):
            continue
        if isinstance(value, UploadFile):
            raise invalid(name, f"'{name}' must be text, not a file")
        fields[name] = value
    if "loras" in fields:  # a list in a form: JSON text
        try:
            fields["loras"] = json.loads(fields["loras"])
        except json.JSONDecodeError:
            raise invalid("loras", "loras must be JSON text: [{\"id\": ..., \"scale\": ...}]") from None
    return fields


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


async def parse_edit(request: Request, limits: LimitSettings, served_models: Sequence[str],
                     served_loras: Collection[str]) -> tuple[ImageEditBody, GenerationRequest]:
    """The checked body and the pipeline's request of one ``/v1/images/edits`` call."""
    form = await _form(request, await read_body(request, limits, limits.max_edit_body_bytes))
    image_bytes = _one_file(form, "image", "image[]", required=True)
    mask_bytes = _one_file(form, "mask", required=False)
    body = validate_body(ImageEditBody, _text_fields(form))
    image = _decode(image_bytes, "image", limits)  # type: ignore[arg-type]
    mask = None
    if mask_bytes is not None:
        mask = _decode(mask_bytes, "mask", limits, formats=("PNG",))
        if mask.mode != "RGBA":
            raise invalid("mask", f"mask must be a PNG with an alpha channel (RGBA; transparent = edit), got {mask.mode}")
        if mask.size != image.size:
            raise invalid("mask", f"mask is {mask.width}x{mask.height}, the image {image.width}x{image.height}: "
                                  "they must be the same size")
    if body.size is None:
        width, height = image.width // 8 * 8, image.height // 8 * 8
        if not width or not height:
            raise invalid("image", f"image is {image.width}x{image.height}: at least 8x8")
        body = body.model_copy(update={"size": f"{width}x{height}"})
    generation = to_generation_request(body, limits, served_models, served_loras)
    kind = IMG2IMG if mask is None else INPAINT
    strength = DEFAULT_STRENGTH[kind] if body.strength is None else body.strength
    if not 0 < strength <= 1:
        raise invalid("strength", f"strength must be in (0, 1], got {strength}")
    if int(generation.num_inference_steps * strength) < 1:
        raise invalid("strength", f"strength {strength} x {generation.num_inference_steps} steps gives no step: "
                                  "raise either")
    size = (generation.width, generation.height)
    rgb = image.convert("RGB").resize(size, Image.LANCZOS) if image.size != size else image.convert("RGB")
    repaint = None
    if mask is not None:  # OpenAI's transparent = edit → diffusers' white = repaint
        alpha = mask.getchannel("A").resize(size, Image.NEAREST)
        repaint = _png(alpha.point(lambda a: 255 if a == 0 else 0))
    return body, dataclasses.replace(generation, kind=kind, image=_png(rgb), mask=repaint, strength=float(strength))
