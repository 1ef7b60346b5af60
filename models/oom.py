"""Out-of-memory: recognise it, clean up after it, and inject it in tests.

``torch.OutOfMemoryError`` (the same class as ``torch.cuda.OutOfMemoryError``) is what CUDA raises;
the CPU allocator raises a plain ``RuntimeError`` ("DefaultCPUAllocator: can't allocate memory").
Both mean "this call asked for too much", not "this replica is broken". Other CUDA errors do mean
the device may be unusable.
"""

from __future__ import annotations

import gc
from collections.abc import Sequence

from models.generator import GroupedGenerator, LatentsHook, StopCheck
from models.request import GenerationRequest, GenerationResult

_OOM_MESSAGES = ("can't allocate memory", "out of memory", "cannot allocate memory")
_FATAL_MESSAGES = ("cuda error", "device-side assert", "cudnn_status", "cublas_status", "illegal memory access")


def is_out_of_memory(exc: BaseException) -> bool:
    import torch

    if isinstance(exc, torch.OutOfMemoryError):
        return True
    return isinstance(exc, (RuntimeError, MemoryError)) and (
        isinstance(exc, MemoryError) or any(m in str(exc).lower() for m in _OOM_MESSAGES)
    )


def is_device_fatal(exc: BaseException) -> bool:
    """A device error after which this process should not serve again (Ray replaces it)."""
    return not is_out_of_memory(exc) and any(m in str(exc).lower() for m in _FATAL_MESSAGES)


def release_memory(device: str) -> None:
    """Give back what a failed call held: collect garbage and empty the CUDA cache."""
    gc.collect()
    if device.startswith("cuda"):
        import torch

        torch.cuda.empty_cache()


class InjectedOOM(GroupedGenerator):
    """TEST-ONLY fault injection: any pipeline call holding a request whose prompt contains
    ``marker`` raises the real ``torch.OutOfMemoryError``, as a too-large CUDA call would.
    Enabled only when a config sets ``testing.inject_oom_marker``."""

    def __init__(self, inner: GroupedGenerator, marker: str) -> None:
        self.inner = inner
        self.marker = marker
        self.model_name = inner.model_name
        self.device = inner.device
        self.counter = inner.counter

    def generate(
        self, requests: Sequence[GenerationRequest], should_stop: StopCheck | None = None,
        on_latents: LatentsHook | None = None,
    ) -> list[GenerationResult]:
        import torch

        poisoned = [r.prompt for r in requests if self.marker in r.prompt]
        if poisoned:
            raise torch.OutOfMemoryError(f"injected OOM (test hook) for {len(poisoned)} request(s)")
        return self.inner.generate(requests, should_stop, on_latents)

    def prepare(self, request: GenerationRequest) -> tuple[str, float]:
        return self.inner.prepare(request)

    def expected_load_s(self, request: GenerationRequest) -> float:
        return self.inner.expected_load_s(request)

    def adapters(self) -> dict[str, tuple[str, ...]]:
        return self.inner.adapters()
