"""Measure a pipeline call's peak memory, and calibrate the memory model with probe runs.

On CUDA: ``torch.cuda.max_memory_allocated`` after resetting the peak counter. On CPU: the process's
peak resident set (``VmHWM``), reset through ``/proc/self/clear_refs`` before the call (Linux).
"""

from __future__ import annotations

import dataclasses
import gc
import hashlib
import json
import logging
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from models.request import GenerationRequest
from scheduler.memory import MemoryProbe

log = logging.getLogger(__name__)

#: (width, height, images) of the load-time probes: small and quick (one denoising step each).
PROBES = ((64, 64, 1), (128, 128, 1), (128, 128, 2), (192, 192, 1))

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def _status_bytes(key: str) -> int:
    match = re.search(rf"^{key}:\s+(\d+) kB", _STATUS.read_text(), re.MULTILINE)
    if match is None:
        raise OSError(f"{key} not in {_STATUS}")
    return int(match.group(1)) * 1024


def _release_cpu_caches() -> None:
    """Return freed heap to the OS (glibc ``malloc_trim``) so the next call's peak shows in RSS."""
    import ctypes
    import ctypes.util

    libc = ctypes.util.find_library("c")
    if libc:
        ctypes.CDLL(libc).malloc_trim(0)


class PeakMemory:
    """Context for measuring the peak extra bytes of one call on ``device``."""

    def __init__(self, device: str) -> None:
        self.device = device
        self.peak_bytes = 0.0

    def __enter__(self) -> "PeakMemory":
        gc.collect()
        if self.device.startswith("cuda"):
            import torch

            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self._base = torch.cuda.memory_allocated()
        else:
            _release_cpu_caches()
            _CLEAR_REFS.write_text("5")
            self._base = _status_bytes("VmRSS")
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.device.startswith("cuda"):
            import torch

            torch.cuda.synchronize()
            self.peak_bytes = float(torch.cuda.max_memory_allocated() - self._base)
        else:
            self.peak_bytes = float(_status_bytes("VmHWM") - self._base)


def measure_probes(device: str, run: Callable[[list[GenerationRequest]], Any]) -> list[MemoryProbe]:
    """Run the probe calls through ``run`` (one pipeline call each) and measure their peaks."""
    probes = []
    for width, height, images in PROBES:
        request = GenerationRequest("memory probe", width, height, 1, 7.5, seed=0, n=images)
        run([request])  # warm: first calls allocate caches that later calls reuse
        with PeakMemory(device) as peak:
            run([request])
        probes.append(MemoryProbe(width, height, images, peak.peak_bytes))
    return probes


def probe_cache_path(key: dict[str, str], cache_dir: Path) -> Path:
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return cache_dir / "memory-probes" / f"{digest}.json"


def cached_probes(key: dict[str, str], cache_dir: Path | None,
                  measure: Callable[[], list[MemoryProbe]]) -> tuple[list[MemoryProbe], bool]:
    """The probes for ``key`` (model, device name, dtype, library versions): measured once per
    key and kept in ``cache_dir``, so later replicas on the same kind of GPU skip the probe calls
    (seconds of every cold start). Returns (probes, whether they came from the cache).
    ``cache_dir`` None: always measure."""
    path = probe_cache_path(key, cache_dir) if cache_dir is not None else None
    if path is not None and path.exists():
        try:
            saved = json.loads(path.read_text())
            if saved.get("key") == key:
                return [MemoryProbe(**p) for p in saved["probes"]], True
        except (ValueError, TypeError, KeyError):
            log.warning("ignoring unreadable memory probe cache %s", path)
    probes = measure()
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"key": key, "probes": [dataclasses.asdict(p) for p in probes]}))
        tmp.replace(path)  # atomic: replicas starting together never read half a file
    return probes, False


def device_budget_bytes(device: str, fraction: float, cpu_budget_bytes: float) -> float:
    """What one call may use: on CUDA the device's free memory after loading × ``fraction``
    of the total; on CPU the configured number."""
    if device.startswith("cuda"):
        import torch

        free, total = torch.cuda.mem_get_info()
        return max(0.0, min(float(free), total * fraction - torch.cuda.memory_allocated()))
    return float(cpu_budget_bytes)
