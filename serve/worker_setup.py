"""What a worker replica reads from its settings and its machine: the model to load, the simulated
profile, the memory model it fits, and where its cold start went. No Ray here."""

from __future__ import annotations

import time

#: Cold-start accounting: sdserve's code begins in this process. Here, not in serve/worker.py: Serve
#: pickles the deployment class by value, with its module's globals frozen at the moment the app was
#: built (in another process); this module is pickled by reference and imported by each replica.
IMPORT_STARTED = time.time()

import functools  # noqa: E402
import logging  # noqa: E402
import os  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any

from models.backends import load_backend
from models.built_loras import resolve_lora
from models.catalog import CatalogGenerator
from models.generator import GroupedGenerator
from models.loader import ModelSpec
from models.memory import cached_probes, device_budget_bytes, measure_probes
from models.simulated import A10_SD15_STEP_TIME_S, SimulationProfile
from models.tiny import default_cache_dir
from scheduler.adaptive_batching import AdaptiveConfig
from scheduler.memory import MemoryModel, MemoryProbe
from serve.settings import AppSettings

log = logging.getLogger("ray.serve")


def model_spec(settings: AppSettings, source: str | None = None) -> ModelSpec:
    """How to load the default checkpoint, or ``source`` (one of the catalog's) the same way."""
    model = settings.model
    return ModelSpec(model=source or model.id, device=model.device, dtype=model.dtype,
                     allow_download=model.allow_download, compile_unet=model.compile_unet, cache_dir=model.cache_dir)


def load_models(settings: AppSettings, first: str | None = None, app_name: str = "") -> GroupedGenerator:
    """The replica's backend: its one checkpoint, or the whole catalog (real pipelines; a simulated
    backend serves every name alike); ``first``: the catalog's checkpoint to load at the start;
    ``app_name``: whose node page cache a simulated catalog shares."""
    model = settings.model
    cache = Path(model.cache_dir) if model.cache_dir else None
    loras = {name: resolve_lora(source, cache) for name, source in model.loras.items()} \
        if model.backend == "diffusers" else {}  # the simulation loads any adapter the ingress let through
    simulated = model.backend == "simulated"
    if not model.catalog or (simulated and not model.resident_models):  # a simulation serves every name alike
        return load_backend(model.backend, model_spec(settings), model.name, simulation_profile(settings), loras,
                            model.resident_loras)
    # loads, from disk, the node's page cache or host memory, take its times
    profile = simulation_profile(settings, str(page_cache_root(app_name))) if simulated else None
    loaders = {name: functools.partial(load_backend, model.backend, model_spec(settings, source), name, profile,
                                       loras, model.resident_loras)
               for name, source in model.served.items()}
    return CatalogGenerator(loaders, model.name, model.resident_models, int(model.host_memory_gb * 2**30),
                            first=first)


def preloads(settings: AppSettings) -> bool:
    """Whether a starting replica asks which checkpoint to load: a catalog (real pipelines or the
    simulated backend) that does not all fit on the device."""
    model = settings.model
    return model.preload and bool(model.catalog) and 0 < model.resident_models < len(model.served)


def page_cache_root(app_name: str) -> Path:
    """Where the simulated node page cache of ``app_name`` keeps its markers (models/page_cache.py)."""
    return Path(tempfile.gettempdir()) / "sdserve-page-cache" / (app_name or "default")


def simulation_profile(settings: AppSettings, page_cache_dir: str = "") -> SimulationProfile:
    sim = settings.simulation
    k = sim.time_scale
    return SimulationProfile(
        step_time_s=tuple(sorted((n, t / k) for n, t in (sim.step_time_s or A10_SD15_STEP_TIME_S).items())),
        load_time_s=sim.load_time_s / k,
        host_load_time_s=sim.host_load_time_s / k,
        lora_load_time_s=sim.lora_load_time_s / k,
        checkpoint_bytes=int(sim.checkpoint_gb * 2**30),
        scale_with_pixels=sim.scale_with_pixels,
        page_cache_dir=page_cache_dir,
        page_cache_checkpoints=sim.page_cache_checkpoints if page_cache_dir else 0,
        page_cache_journal=sim.page_cache_journal,
    )


def adaptive_config(settings: AppSettings) -> AdaptiveConfig | None:
    b = settings.batching
    if not b.adaptive:
        return None
    return AdaptiveConfig(max_batch_size=b.max_batch_size, min_calls=b.adaptive_min_calls, margin=b.adaptive_margin)


def framework_imports(backend: str) -> None:
    """Import what the backend needs up front, so the cold-start breakdown tells imports from
    weight loading (the diffusers backend needs torch, diffusers' pipeline classes and the CLIP text
    model from transformers — diffusers imports lazily, so a bare ``import diffusers`` would leave
    most of it to the first load; the simulation needs nothing)."""
    if backend == "diffusers":
        import torch  # noqa: F401
        from diffusers import AutoencoderKL, StableDiffusionPipeline, UNet2DConditionModel  # noqa: F401
        from transformers import CLIPTextModel, CLIPTokenizer  # noqa: F401


def device_name(device: str) -> str:
    if device.startswith("cuda"):
        import torch

        return torch.cuda.get_device_name(torch.device(device))
    return device


def peak_device_memory(device: str) -> int | None:
    """Peak GPU memory allocated by this replica's process so far (None off CUDA)."""
    if not device.startswith("cuda"):
        return None
    import torch

    return int(torch.cuda.max_memory_allocated(torch.device(device)))


def process_cpu_s() -> float:
    """CPU seconds this replica's process has used (user + system), for waste accounting."""
    import psutil

    times = psutil.Process().cpu_times()
    return times.user + times.system


def process_started_at() -> float:
    """When this process started, on the wall clock: now minus its age, the age read from /proc on
    boot-relative clocks (10 ms ticks). psutil's ``create_time`` adds the ticks to the boot time in
    whole seconds, so it can be off by up to a second — as long as the whole process start."""
    try:
        with open("/proc/self/stat") as stat, open("/proc/uptime") as uptime:
            started_ticks = int(stat.read().rsplit(")", 1)[1].split()[19])  # field 22: starttime
            age = float(uptime.read().split()[0]) - started_ticks / os.sysconf("SC_CLK_TCK")
        return time.time() - age
    except (OSError, ValueError, IndexError):  # not Linux
        import psutil

        return psutil.Process().create_time()


def memory_probes(settings: AppSettings, backend: Any) -> list[MemoryProbe] | None:
    """The probe calls' peaks the memory model is fitted to (real pipelines only; measured once
    per model, GPU type, dtype and library versions when ``memory.cache_probes``)."""
    if not settings.memory.calibrate or settings.model.backend != "diffusers":
        return None
    import diffusers
    import torch

    started = time.monotonic()
    key = {"model": backend.model_name, "device": device_name(backend.device), "dtype": settings.model.dtype,
           "versions": f"torch {torch.__version__}, diffusers {diffusers.__version__}"}
    cache_dir = default_cache_dir() if settings.memory.cache_probes else None
    probes, cached = cached_probes(key, cache_dir, lambda: measure_probes(backend.device, backend.generate))
    log.info("%d memory probes %s in %.2fs", len(probes), "from the cache" if cached else "measured",
             time.monotonic() - started)
    return probes


def memory_model(settings: AppSettings, probes: list[MemoryProbe] | None, device: str) -> MemoryModel | None:
    """The replica's memory model under the current budget settings (None: no admission by memory)."""
    if probes is None:
        return None
    memory = settings.memory
    budget = device_budget_bytes(device, memory.budget_fraction, memory.cpu_budget_mb * 2**20)
    model = MemoryModel.fit(probes, budget, memory.safety_factor)
    log.info("memory model: %s", model)
    return model


def cold_start_phases(process_at: float, imports_started: float, imports_done: float, init_at: float,
                      imported_at: float, loaded_at: float, ready_at: float) -> dict[str, float]:
    """Where a replica's cold start went (docs/operations.md, "Cold start"), from its timestamps."""
    return {
        "process_start": max(0.0, imports_started - process_at),  # Ray worker boot until our code
        "imports": (imports_done - imports_started) + (imported_at - init_at),
        "replica_setup": max(0.0, init_at - imports_done),  # Serve, from our modules imported to the constructor
        "weights": loaded_at - imported_at,
        "calibration": max(0.0, ready_at - loaded_at),
    }


IMPORT_DONE = time.time()  # sdserve's own modules are imported in this process (the frameworks are not yet)
