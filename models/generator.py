"""Run a Stable Diffusion pipeline over a batch of requests, each with its own seed and settings.

One pipeline call serves requests that share size, steps and guidance (their ``batch_key``); a mixed
list is split into such groups and run one group after another, so requests of different sizes are
never put in one call. A step callback counts denoising steps and lets the caller stop the work
between steps (deadline or cancellation), which skips the rest of the loop and the VAE decode.
"""

from __future__ import annotations

import io
import threading
import warnings
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from models.adapters import LoadedAdapters, quiet_foreign_missing_keys
from models.edits import composite, edit_arguments, edit_pipeline
from models.host_tier import RESIDENT, HostWeights, restore, snapshot
from models.loader import ModelSpec, load_pipeline
from models.request import TEXT, GenerationRequest, GenerationResult, GenerationStopped

#: Called after every denoising step with the steps done so far; returns a reason to stop, or None.
StopCheck = Callable[[int], "str | None"]
#: Called after every denoising step with the steps done and the call's latents (batch, 4, h, w);
#: None from backends that have none (the simulation). For partial images.
LatentsHook = Callable[[int, Any], None]


def encode_png(image: Any) -> bytes:
    """PNG bytes of a PIL image, with no metadata, so equal pixels give equal bytes."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def group_by_batch_key(requests: Sequence[GenerationRequest]) -> list[list[int]]:
    """Indices of ``requests`` grouped by batch key, groups in order of first appearance."""
    groups: dict[tuple, list[int]] = defaultdict(list)
    for index, request in enumerate(requests):
        groups[request.batch_key].append(index)
    return list(groups.values())


@dataclass
class CallCounter:
    """Instrumentation: how many pipeline calls run at once, now and at most, and their sizes.

    Tests read it to prove one-request-per-replica holds (measured, not assumed).
    """

    active: int = 0
    max_active: int = 0
    calls: int = 0
    steps: int = 0
    batch_sizes: list[int] = field(default_factory=list)  # images per call
    requests_per_call: list[int] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def enter(self, requests: int, images: int) -> None:
        with self._lock:
            self.active += 1
            self.calls += 1
            self.max_active = max(self.max_active, self.active)
            self.batch_sizes.append(images)
            self.requests_per_call.append(requests)

    def leave(self, steps: int) -> None:
        with self._lock:
            self.active -= 1
            self.steps += steps

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {
                "active_calls": self.active,
                "max_active_calls": self.max_active,
                "calls": self.calls,
                "steps": self.steps,
                "batch_sizes": list(self.batch_sizes),
                "requests_per_call": list(self.requests_per_call),
            }


class GroupedGenerator:
    """Base of the backends: splits a request list into batch-key groups, one call per group.

    Subclasses implement ``_generate_group`` for requests that share size, steps and guidance.
    """

    model_name: str
    device: str
    counter: CallCounter
    #: the LoRA adapters loaded into this pipeline (None: a backend that loads none)
    loaded_adapters: LoadedAdapters | None = None

    def generate(
        self, requests: Sequence[GenerationRequest], should_stop: StopCheck | None = None,
        on_latents: LatentsHook | None = None,
    ) -> list[GenerationResult]:
        """Generate every request; results come back in input order.

        Raises :class:`GenerationStopped` if ``should_stop`` asks to stop, and lets out-of-memory
        errors propagate to the caller, which decides what that means for each request.
        """
        results: list[GenerationResult | None] = [None] * len(requests)
        for indices in group_by_batch_key(requests):
            group = [requests[i] for i in indices]
            for i, result in zip(indices, self._generate_group(group, should_stop, on_latents)):
                results[i] = result
        return results  # type: ignore[return-value]

    def _generate_group(
        self, group: list[GenerationRequest], should_stop: StopCheck | None, on_latents: LatentsHook | None = None
    ) -> list[GenerationResult]:
        raise NotImplementedError

    def adapters(self) -> dict[str, tuple[str, ...]]:
        """The LoRA adapters loaded now, by checkpoint."""
        return {self.model_name: tuple(self.loaded_adapters)} if self.loaded_adapters else {}

    def prepare(self, request: GenerationRequest) -> tuple[str, float]:
        """Load what a call of ``request`` needs before it starts (its checkpoint, its adapters), so
        the caller can say where it came from before the first step; (tier, seconds). Nothing by
        default: a single checkpoint is loaded when the replica starts."""
        return RESIDENT, 0.0

    def expected_load_s(self, request: GenerationRequest) -> float:
        """Seconds a call of ``request`` would spend loading before its first step (for the deadline
        rules): its adapters not loaded yet, by this replica's measured mean; 0 when everything it
        needs is loaded or nothing was measured yet."""
        return self.loaded_adapters.expected_load_s(request.loras) if self.loaded_adapters is not None else 0.0


class DiffusionGenerator(GroupedGenerator):
    """A loaded diffusers pipeline plus the per-request plumbing (seeds, grouping, stopping)."""

    def __init__(self, pipeline: Any, model_name: str, loras: Mapping[str, str] | None = None,
                 resident_loras: int = 0) -> None:
        self.pipeline = pipeline
        self.model_name = model_name
        self.lora_paths = dict(loras or {})  # adapter name → its weights, loaded into this pipeline on first use
        #: adapters kept loaded, at most ``resident_loras`` (0: every one used stays)
        self.loaded_adapters = LoadedAdapters(resident_loras)
        self._loras_on = False
        self._edit_pipelines: dict[str, Any] = {}  # kind → pipeline sharing this one's components
        self.device = str(pipeline.device)
        self.counter = CallCounter()
        # A pipeline holds several named adapters by design (up to ``resident_loras``); peft warns on
        # every adapter after the first that "multiple adapters" may be a mistake. Only that message
        # is ignored (set here, not at import, so that it holds where the generator is built).
        warnings.filterwarnings("ignore", message="Already found a `peft_config` attribute", category=UserWarning)

    def _generate_group(
        self, group: list[GenerationRequest], should_stop: StopCheck | None, on_latents: LatentsHook | None = None
    ) -> list[GenerationResult]:
        import torch

        first = group[0]
        prompts: list[str] = []
        negatives: list[str] = []
        generators: list[torch.Generator] = []
        for request in group:
            for i in range(request.n):
                prompts.append(request.prompt)
                negatives.append(request.negative_prompt or "")
                generators.append(torch.Generator(device="cpu").manual_seed(request.seed + i))

        steps_done = 0

        def on_step_end(pipe: Any, step: int, timestep: Any, callback_kwargs: dict) -> dict:
            nonlocal steps_done
            steps_done = step + 1
            if on_latents is not None:
                on_latents(steps_done, callback_kwargs.get("latents"))
            if should_stop is not None:
                reason = should_stop(steps_done)
                if reason is not None:
                    raise GenerationStopped(steps_done, reason)
            return callback_kwargs

        lora_s = self._apply_loras(first.loras)
        inputs: dict[str, Any]
        if first.kind == TEXT:
            pipeline, inputs = self.pipeline, {"width": first.width, "height": first.height}
        else:
            if first.kind not in self._edit_pipelines:
                self._edit_pipelines[first.kind] = edit_pipeline(self.pipeline, first.kind)
            pipeline, inputs = self._edit_pipelines[first.kind], edit_arguments(group)
        self.counter.enter(len(group), len(prompts))
        try:
            output = pipeline(
                prompt=prompts,
                negative_prompt=negatives if first.guidance_scale > 1.0 else None,
                num_inference_steps=first.num_inference_steps,
                guidance_scale=first.guidance_scale,
                generator=generators,
                output_type="pil",
                callback_on_step_end=on_step_end,
                **inputs,
            )
        finally:
            self.counter.leave(steps_done)
        pngs = [encode_png(composite(image, inputs, k)) for k, image in enumerate(output.images)]
        results = []
        offset = 0
        for request in group:
            results.append(
                GenerationResult(
                    images=pngs[offset : offset + request.n],
                    steps_done=steps_done,
                    steps_requested=request.effective_steps,
                    batch_images=len(prompts),
                    model_load_s=lora_s,
                )
            )
            offset += request.n
        return results

    def export_weights(self) -> HostWeights:
        """This checkpoint's weights copied to host memory (adapters taken out first: the host tier
        holds the checkpoint itself; adapters load again on use)."""
        self._unload_loras()
        return snapshot(self.pipeline)

    def swap_in(self, weights: HostWeights, model_name: str) -> None:
        """Become checkpoint ``model_name`` by copying ``weights`` into this pipeline's modules — no
        rebuild, no file read. ValueError (nothing changed) if its architecture differs."""
        self._unload_loras()
        restore(self.pipeline, weights)
        self.model_name = model_name

    def _unload_loras(self) -> None:
        if self.loaded_adapters:
            self.pipeline.unload_lora_weights()
            self.loaded_adapters.clear()
            self._loras_on = False

    def prepare(self, request: GenerationRequest) -> tuple[str, float]:
        """Load the request's adapters not yet in this pipeline; (``none``, seconds spent)."""
        return RESIDENT, self._load_loras(request.loras)

    def _load_loras(self, loras: tuple[tuple[str, float], ...]) -> float:
        """Load the adapters not yet in this pipeline, then delete the least recently used ones
        beyond ``resident_loras`` (never one this call needs); seconds spent loading."""
        return self.loaded_adapters.load(loras, self._load_adapter, self.pipeline.delete_adapters)

    def _load_adapter(self, name: str) -> None:
        with quiet_foreign_missing_keys(name):
            self.pipeline.load_lora_weights(self.lora_paths[name], adapter_name=name)

    def _apply_loras(self, loras: tuple[tuple[str, float], ...]) -> float:
        """Set the call's adapters (loading any not yet in this pipeline); seconds spent loading."""
        if not loras:
            if self._loras_on:
                self.pipeline.disable_lora()
                self._loras_on = False
            return 0.0
        loaded_s = self._load_loras(loras)
        if not self._loras_on:
            self.pipeline.enable_lora()
            self._loras_on = True
        self.pipeline.set_adapters([name for name, _ in loras], adapter_weights=[scale for _, scale in loras])
        return loaded_s


def load_generator(spec: ModelSpec, name: str | None = None, loras: Mapping[str, str] | None = None,
                   resident_loras: int = 0) -> DiffusionGenerator:
    """Load the pipeline named by ``spec`` and wrap it for serving (``loras``: adapter name → weights,
    at most ``resident_loras`` kept loaded; 0: no bound)."""
    return DiffusionGenerator(load_pipeline(spec), model_name=name or spec.model, loras=loras,
                              resident_loras=resident_loras)
