"""The HTTP contract in OpenAI's images shape: request parsing, validation and the error body.

Validation is explicit code over the parsed JSON rather than static pydantic constraints because
the bounds come from the deployed config (max size, steps, n). Every failure names the offending
field in ``param`` so a client can tell what to fix.
"""

from __future__ import annotations

import difflib
import json
import re
import secrets
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

from models.request import GenerationRequest
from serve.settings import LimitSettings

_SIZE_RE = re.compile(r"^(\d{1,5})x(\d{1,5})$")
SUPPORTED_RESPONSE_FORMATS = ("b64_json",)
MAX_SEED = 2**63 - 1
MAX_PARTIAL_IMAGES = 3  # as OpenAI's images API
QUALITIES = ("low", "medium", "high", "auto")  # accepted and echoed; the model has one quality


@dataclass
class ApiError(Exception):
    """An error answered to the client in OpenAI's shape."""

    status: int
    message: str
    code: str
    param: str | None = None
    type: str = "invalid_request_error"
    headers: dict[str, str] | None = None

    def body(self) -> dict[str, Any]:
        return {
            "error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}
        }


def invalid(param: str, message: str) -> ApiError:
    return ApiError(422, message, code="invalid_value", param=param)


class LoraRef(BaseModel):
    """One LoRA adapter a request applies: its served id and its scale."""

    model_config = ConfigDict(extra="forbid", strict=False)

    id: str
    scale: float = 1.0


class ImageGenerationBody(BaseModel):
    """``POST /v1/images/generations`` as sent by the ``openai`` SDK, plus sdserve's extensions."""

    model_config = ConfigDict(extra="forbid", strict=False)

    prompt: str
    n: int = 1
    size: str | None = None
    response_format: str | None = None
    model: str | None = None
    loras: list[LoraRef] | None = None  # sdserve's extension: adapters applied to the checkpoint
    user: str | None = None  # accepted for SDK compatibility, not used
    negative_prompt: str | None = None
    num_inference_steps: int | None = None
    guidance_scale: float | None = None
    seed: int | None = None
    timeout_s: float | None = None
    # streaming (OpenAI's image streams): server-sent events instead of one JSON reply
    stream: bool | None = None
    partial_images: int | None = None  # 0-3 previews while it denoises (stream only)
    # accepted and echoed in stream events, as OpenAI's image API names them (one value served each)
    quality: str | None = None
    background: str | None = None
    output_format: str | None = None


def parse_body(raw: bytes) -> ImageGenerationBody:
    """JSON bytes → typed body; malformed JSON is 400, wrong types or unknown fields 422."""
    try:
        data = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ApiError(400, f"request body is not valid JSON: {exc}", code="invalid_json") from None
    if not isinstance(data, dict):
        raise ApiError(400, "request body must be a JSON object", code="invalid_json")
    return validate_body(ImageGenerationBody, data)


BodyT = TypeVar("BodyT", bound=BaseModel)


def validate_body(model: type[BodyT], data: dict[str, Any]) -> BodyT:
    """Fields → typed body; wrong types, unknown or missing fields are 422 naming the field."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(part) for part in first["loc"]) or None
        if first["type"] == "extra_forbidden":
            message = f"unsupported parameter '{field}'" + _did_you_mean(str(field), list(model.model_fields))
        elif first["type"] == "missing":
            message = f"'{field}' is required"
        else:
            message = f"invalid '{field}': {first['msg']}"
        raise ApiError(422, message, code="invalid_value", param=field) from None


def _did_you_mean(name: str, fields: Sequence[str]) -> str:
    """`` (did you mean 'num_inference_steps'?)`` for a near miss of a known field, else "" (a name
    shorter than 4 letters is only matched by spelling: one letter is in too many field names)."""
    name = name.lower()
    close = [f for f in fields if len(name) >= 4 and name in f] or difflib.get_close_matches(name, fields, n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


def parse_size(size: str, limits: LimitSettings) -> tuple[int, int]:
    match = _SIZE_RE.match(size)
    if not match:
        raise invalid("size", f"size must look like '512x512' (WIDTHxHEIGHT), got {size!r}")
    width, height = int(match.group(1)), int(match.group(2))
    if width % 8 or height % 8 or width == 0 or height == 0:
        raise invalid("size", f"width and height must be positive multiples of 8, got {size}")
    if width > limits.max_width or height > limits.max_height:
        raise invalid(
            "size", f"size {size} exceeds the maximum {limits.max_width}x{limits.max_height}"
        )
    return width, height


def _loras(body: ImageGenerationBody, limits: LimitSettings, served: Collection[str]) -> tuple[tuple[str, float], ...]:
    """The request's adapters, checked: known, at most ``limits.max_loras_per_request``, each once,
    scales in [0, 2]."""
    refs = body.loras or []
    if len(refs) > limits.max_loras_per_request:
        raise invalid("loras", f"at most {limits.max_loras_per_request} LoRA adapters per request, got {len(refs)}")
    ids = [ref.id for ref in refs]
    if len(set(ids)) != len(ids):
        raise invalid("loras", "each LoRA adapter at most once")
    for ref in refs:
        if ref.id not in served:
            known = ", ".join(map(repr, served)) or "none"
            raise ApiError(404, f"The LoRA {ref.id!r} does not exist: this server serves {known} (GET /v1/models)",
                           code="model_not_found", param="loras")
        if not 0 <= ref.scale <= 2:
            raise invalid("loras", f"LoRA {ref.id!r}: scale must be between 0 and 2, got {ref.scale}")
    return tuple((ref.id, float(ref.scale)) for ref in refs)


def to_generation_request(
    body: ImageGenerationBody, limits: LimitSettings, served_models: str | Sequence[str],
    served_loras: Collection[str] = (),
) -> GenerationRequest:
    """Check a body against the deployed limits and turn it into the pipeline's request;
    ``served_models``: the checkpoints served, the default first."""
    served = [served_models] if isinstance(served_models, str) else list(served_models)
    if not body.prompt.strip():
        raise invalid("prompt", "prompt must not be empty")
    if len(body.prompt) > limits.max_prompt_chars:
        raise invalid("prompt", f"prompt is longer than {limits.max_prompt_chars} characters")
    if body.negative_prompt is not None and len(body.negative_prompt) > limits.max_prompt_chars:
        raise invalid("negative_prompt", f"longer than {limits.max_prompt_chars} characters")
    if not 1 <= body.n <= limits.max_n:
        raise invalid("n", f"n must be between 1 and {limits.max_n}, got {body.n}")
    if body.model is not None and body.model not in served:
        raise ApiError(
            404, f"The model {body.model!r} does not exist: this server serves {', '.join(map(repr, served))} "
            "(GET /v1/models)", code="model_not_found", param="model", type="invalid_request_error",
        )
    if body.response_format is not None and body.response_format not in SUPPORTED_RESPONSE_FORMATS:
        raise invalid(
            "response_format",
            f"unsupported response_format {body.response_format!r}: only 'b64_json' is served",
        )
    if body.size is None:
        width, height = limits.default_width_height
    else:
        width, height = parse_size(body.size, limits)
    steps = limits.default_steps if body.num_inference_steps is None else body.num_inference_steps
    if not 1 <= steps <= limits.max_steps:
        raise invalid("num_inference_steps", f"must be between 1 and {limits.max_steps}, got {steps}")
    guidance = (
        limits.default_guidance_scale if body.guidance_scale is None else body.guidance_scale
    )
    if not 0 <= guidance <= limits.max_guidance_scale:
        raise invalid(
            "guidance_scale", f"must be between 0 and {limits.max_guidance_scale}, got {guidance}"
        )
    if body.seed is not None and not 0 <= body.seed <= MAX_SEED - limits.max_n:
        raise invalid("seed", "seed must be a non-negative 63-bit integer")
    seed = body.seed if body.seed is not None else secrets.randbelow(2**31)
    partial = body.partial_images or 0
    if not 0 <= partial <= MAX_PARTIAL_IMAGES:
        raise invalid("partial_images", f"partial_images must be between 0 and {MAX_PARTIAL_IMAGES}, got {partial}")
    if partial and not body.stream:
        raise invalid("partial_images", "partial_images needs stream: true")
    if body.output_format not in (None, "png"):
        raise invalid("output_format", f"unsupported output_format {body.output_format!r}: only 'png' is served")
    if body.background not in (None, "auto", "opaque"):
        raise invalid("background", f"unsupported background {body.background!r}: 'auto' or 'opaque'")
    if body.quality not in (None, *QUALITIES):
        raise invalid("quality", f"quality must be one of {', '.join(QUALITIES)}")
    return GenerationRequest(
        prompt=body.prompt,
        negative_prompt=body.negative_prompt,
        width=width,
        height=height,
        num_inference_steps=steps,
        guidance_scale=float(guidance),
        seed=seed,
        n=body.n,
        partial_images=partial,
        model="" if body.model in (None, served[0]) else body.model,
        loras=_loras(body, limits, served_loras),
    )
