"""What one image request asks of the pipeline, and what comes back.

Plain dataclasses so they cross process boundaries (Ray pickles them) without dragging torch along.
"""

from __future__ import annotations

from dataclasses import dataclass, field

#: What a request asks of the pipeline: an image from text, or an edit of an input image.
TEXT, IMG2IMG, INPAINT = "text", "img2img", "inpaint"
#: diffusers' defaults: image-to-image keeps a fifth of the input, inpainting repaints all of the mask.
DEFAULT_STRENGTH = {IMG2IMG: 0.8, INPAINT: 1.0}


def effective_steps(steps: int, kind: str, strength: float) -> int:
    """Denoising steps the pipeline really runs: an edit runs the last ``strength`` of the schedule
    (diffusers' ``get_timesteps``: ``int(steps × strength)``; the API refuses a product under 1)."""
    return steps if kind == TEXT else min(int(steps * strength), steps)


@dataclass(frozen=True)
class GenerationRequest:
    """One user request: ``n`` images of one prompt at one size.

    ``seed`` makes the request reproducible: image ``i`` of the request uses a generator seeded
    with ``seed + i``, so the same request gives the same images alone or inside a batch.
    """

    prompt: str
    width: int
    height: int
    num_inference_steps: int
    guidance_scale: float
    seed: int
    n: int = 1
    negative_prompt: str | None = None
    partial_images: int = 0  # previews to stream while it denoises (0-3; not part of the batch key)
    model: str = ""  # the checkpoint of the server's catalog ("": its default)
    loras: tuple[tuple[str, float], ...] = ()  # LoRA adapters (name, scale) applied to it
    # an edit (``/v1/images/edits``): the input image, and for inpainting the area to repaint
    kind: str = TEXT  # TEXT, IMG2IMG or INPAINT
    image: bytes | None = field(default=None, repr=False)  # PNG, RGB, width × height
    mask: bytes | None = field(default=None, repr=False)  # PNG, L: 255 where to repaint (diffusers' convention)
    strength: float = 1.0  # edits: how far from the input the result may go (0 < s <= 1)

    @property
    def batch_key(self) -> tuple:
        """Requests share one pipeline call only if kind, checkpoint, LoRAs, size, steps, guidance and
        strength match (diffusers applies one set of adapters and one strength to a whole call)."""
        return (self.width, self.height, self.num_inference_steps, self.guidance_scale, self.model, self.loras,
                self.kind, self.strength)

    @property
    def effective_steps(self) -> int:
        """Denoising steps the pipeline really runs (see :func:`effective_steps`)."""
        return effective_steps(self.num_inference_steps, self.kind, self.strength)

    @property
    def pixels(self) -> int:
        """Pixels this request asks for in total (all ``n`` images)."""
        return self.width * self.height * self.n


@dataclass
class GenerationResult:
    """PNG images of one request, plus how much of the work actually ran."""

    images: list[bytes]
    steps_done: int
    steps_requested: int
    batch_images: int = field(default=1)
    model_load: str = "none"  # where its checkpoint came from for this call: none (resident), host or disk
    model_load_s: float = 0.0  # how long that load took (part of the call's time, not the pipeline's)


class GenerationStopped(Exception):
    """The step callback asked the pipeline to stop; raised out of the pipeline call.

    Raising from ``callback_on_step_end`` stops the denoising loop within one step and skips the
    VAE decode, which is the point: no GPU time is spent on an image nobody will receive.
    """

    def __init__(self, steps_done: int, reason: str = "stopped") -> None:
        super().__init__(f"generation stopped after {steps_done} steps: {reason}")
        self.steps_done = steps_done
        self.reason = reason
