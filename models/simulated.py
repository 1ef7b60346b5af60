"""SIMULATED GPU backend: realistic service times without a GPU, for scheduler work on CPU machines.

Not a model. It sleeps for as long as a GPU would take and returns a small flat-colour PNG of the
requested size, so the autoscaler, deadlines and the benchmark can be exercised at real diffusion
timescales on a laptop. Its model name always starts with ``simulated:`` and it logs that it is a
simulation; no shipped config except ``configs/sim-*.yaml`` selects it.

Default profile: Stable Diffusion 1.5 at 512x512 on an NVIDIA A10, fp16 with SDPA, per denoising
step, by images in the pipeline call. Published figures: diffusers' "Accelerated PyTorch 2.0"
benchmarks (https://huggingface.co/docs/diffusers/optimization/torch2.0, A10 rows) and the model
card of Deci's DeciDiffusion (https://huggingface.co/Deci/DeciDiffusion-v1-0, its SD 1.4 A10
baseline by batch size):
- batch 1: 2.95 s per image at 50 steps → 0.059 s/step;
- batch 4: ≈ 10.0 s per batch at 50 steps → 0.200 s/step;
- batch 8: ≈ 19.5 s → 0.390 s/step;  batch 16: ≈ 38.3 s → 0.766 s/step.
Between the points the time is interpolated linearly; beyond them, extrapolated from the last two.
Time scales with pixels relative to 512x512 (the UNet's cost is roughly linear in latent area).
"""

from __future__ import annotations

import io
import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from models.adapters import LoadedAdapters
from models.generator import CallCounter, GroupedGenerator, LatentsHook, StopCheck
from models.host_tier import RESIDENT, HostWeights
from models.page_cache import SimulatedPageCache
from models.request import GenerationRequest, GenerationResult, GenerationStopped
from scheduler.collector import (
    REFERENCE_PIXELS,  # the profile's figures are per 512×512 image
)

log = logging.getLogger(__name__)

A10_SD15_STEP_TIME_S: dict[int, float] = {1: 0.059, 4: 0.200, 8: 0.390, 16: 0.766}


@dataclass(frozen=True)
class SimulationProfile:
    """Seconds per denoising step by images per call, at the reference resolution."""

    step_time_s: tuple[tuple[int, float], ...] = tuple(sorted(A10_SD15_STEP_TIME_S.items()))
    load_time_s: float = 2.0  # simulated model load at replica start (a checkpoint from disk)
    host_load_time_s: float = 2.8  # a checkpoint copied in from host memory (models/host_tier.py)
    lora_load_time_s: float = 0.0  # a LoRA adapter loaded into the pipeline (0: adapters cost nothing)
    checkpoint_bytes: int = int(2.1 * 2**30)  # what one checkpoint takes in host memory
    #: the node's page cache (models/page_cache.py), shared by the node's replicas and the ingress's
    #: prefetch: a checkpoint whose files are there loads in ``host_load_time_s`` (0 checkpoints: none)
    page_cache_dir: str = ""
    page_cache_checkpoints: int = 0
    page_cache_journal: str = ""  # a file its events are appended to (models/page_cache.py); empty: none
    scale_with_pixels: bool = True
    gpu_name: str = "A10 (simulated)"

    def page_cache(self) -> SimulatedPageCache | None:
        """The node's simulated page cache (None: none); a prefetch's read takes the difference
        between a load from disk and one from memory."""
        if not (self.page_cache_dir and self.page_cache_checkpoints):
            return None
        return SimulatedPageCache(Path(self.page_cache_dir), self.page_cache_checkpoints,
                                  max(0.0, self.load_time_s - self.host_load_time_s),
                                  journal=Path(self.page_cache_journal) if self.page_cache_journal else None)

    def seconds_per_step(self, images: int, pixels_per_image: int = REFERENCE_PIXELS) -> float:
        sizes, times = zip(*self.step_time_s)
        if len(sizes) == 1:
            base = times[0] * images / sizes[0]
        elif images <= sizes[-1]:
            base = float(np.interp(images, sizes, times))
        else:
            slope = (times[-1] - times[-2]) / (sizes[-1] - sizes[-2])
            base = times[-1] + slope * (images - sizes[-1])
        scale = pixels_per_image / REFERENCE_PIXELS if self.scale_with_pixels else 1.0
        return max(0.0, base) * scale


def _flat_png(width: int, height: int, seed: int) -> bytes:
    from PIL import Image

    colour = ((seed * 97) % 256, (seed * 57) % 256, (seed * 17) % 256)
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), colour).save(buffer, format="PNG")
    return buffer.getvalue()


class SimulatedGenerator(GroupedGenerator):
    """Same interface as :class:`models.generator.DiffusionGenerator`; sleeps instead of computing."""

    def __init__(self, profile: SimulationProfile, name: str = "sd15-a10", resident_loras: int = 0) -> None:
        self.profile = profile
        self.model_name = name if name.startswith("simulated:") else f"simulated:{name}"
        self.device = f"simulated {profile.gpu_name}"
        self.counter = CallCounter()
        #: adapters loaded, at most ``resident_loras`` kept (0: all), as the diffusers pipeline keeps them
        self.loaded_adapters = LoadedAdapters(resident_loras)
        log.warning("SIMULATED backend %s: no model runs, timings follow a profile", self.model_name)
        time.sleep(self._load_s())

    def _load_s(self) -> float:
        """A load from disk; from the node's page cache when the files are there (or being read)."""
        profile = self.profile
        cache = profile.page_cache()
        if cache is None:
            return profile.load_time_s
        ready = cache.ready_at(self.model_name)
        if ready is None:
            cache.read(self.model_name, profile.load_time_s)  # a read from disk leaves the files cached
            return profile.load_time_s
        return max(0.0, ready - time.time()) + profile.host_load_time_s

    def export_weights(self) -> HostWeights:
        """No weights: the host tier only counts the bytes a real checkpoint would take."""
        return HostWeights({}, self.profile.checkpoint_bytes)

    def swap_in(self, weights: HostWeights, model_name: str) -> None:
        """Become ``model_name`` as a copy from host memory would: after ``host_load_time_s``
        (adapters taken out first, as the pipeline's are)."""
        time.sleep(self.profile.host_load_time_s)
        self.model_name = model_name
        self.loaded_adapters.clear()

    def prepare(self, request: GenerationRequest) -> tuple[str, float]:
        return RESIDENT, self._load_loras(request.loras)

    def _load_loras(self, loras: tuple[tuple[str, float], ...]) -> float:
        """Load the adapters not yet here, ``lora_load_time_s`` each, keeping at most
        ``resident_loras`` as the pipeline does; seconds spent."""
        return self.loaded_adapters.load(loras, lambda _: time.sleep(self.profile.lora_load_time_s))

    def _generate_group(
        self, group: list[GenerationRequest], should_stop: StopCheck | None, on_latents: LatentsHook | None = None
    ) -> list[GenerationResult]:
        first = group[0]
        loaded_s = self._load_loras(first.loras)  # a call holds one adapter set
        images = sum(r.n for r in group)
        step_s = self.profile.seconds_per_step(images, first.width * first.height)
        wake = threading.Event()
        steps_done = 0
        self.counter.enter(len(group), images)
        try:
            for step in range(first.effective_steps):
                wake.wait(step_s)
                steps_done = step + 1
                if on_latents is not None:
                    on_latents(steps_done, None)  # no latents in a simulation
                if should_stop is not None and (reason := should_stop(steps_done)) is not None:
                    raise GenerationStopped(steps_done, reason)
        finally:
            self.counter.leave(steps_done)
        return [
            GenerationResult(
                images=[_flat_png(r.width, r.height, r.seed + i) for i in range(r.n)],
                steps_done=steps_done,
                steps_requested=r.effective_steps,
                batch_images=images,
                model_load_s=loaded_s,
            )
            for r in group
        ]
