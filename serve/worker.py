"""The diffusion worker deployment: one replica owns one pipeline (one GPU in the GPU configs).

Single-concurrency (``batching.max_batch_size: 1`` and ``max_ongoing_requests: 1``) runs each request
alone; batched mode collects requests with ``@serve.batch`` and runs each size group as one pipeline
call. Either way the pipeline runs in this replica's single pipeline thread, so the event loop stays
responsive (health checks, stats) and at most one pipeline call runs at a time.

When Ray cancels a request (client gone, timeout), the handler signals the pipeline thread through
the step callback and *waits for it to return* before giving up the slot: a replica that says it is
free really is.
"""

from __future__ import annotations

import time

_IMPORTS_STARTED = time.time()  # cold-start accounting: this module's imports begin

import asyncio
import dataclasses
import logging
import threading
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from ray import serve

from models.backends import load_backend
from models.loader import ModelSpec
from models.memory import cached_probes, device_budget_bytes, measure_probes
from models.oom import InjectedOOM
from models.simulated import A10_SD15_STEP_TIME_S, SimulationProfile
from models.tiny import default_cache_dir
from scheduler.adaptive_batching import AdaptiveBatcher, AdaptiveConfig
from scheduler.memory import MemoryModel
from serve.event_queue import until_done, wait_out
from serve.execution import JobRunner
from serve.protocol import WorkerEvent, WorkerJob, WorkerReply
from serve.settings import AppSettings

log = logging.getLogger("ray.serve")
PROGRESS_EVERY_S = 0.2  # at most this often a progress event per job (the last step always)
_IMPORTS_DONE = time.time()


def _model_spec(settings: AppSettings) -> ModelSpec:
    model = settings.model
    return ModelSpec(
        model=model.id,
        device=model.device,
        dtype=model.dtype,
        allow_download=model.allow_download,
        compile_unet=model.compile_unet,
        cache_dir=model.cache_dir,
    )


def _simulation_profile(settings: AppSettings) -> SimulationProfile:
    sim = settings.simulation
    k = sim.time_scale
    return SimulationProfile(
        step_time_s=tuple(sorted((n, t / k) for n, t in (sim.step_time_s or A10_SD15_STEP_TIME_S).items())),
        load_time_s=sim.load_time_s / k,
        scale_with_pixels=sim.scale_with_pixels,
    )


def _discard(task: "asyncio.Future[Any]") -> None:
    """The rest of a batch whose reply for this job was already streamed: only log a failure."""
    if not task.cancelled() and task.exception() is not None:
        log.warning("batch call after an early reply failed: %s", task.exception())


def _adaptive_batcher(settings: AppSettings) -> AdaptiveBatcher | None:
    b = settings.batching
    if not b.adaptive:
        return None
    return AdaptiveBatcher(AdaptiveConfig(max_batch_size=b.max_batch_size, min_calls=b.adaptive_min_calls,
                                          margin=b.adaptive_margin))


def _library_versions() -> str:
    import diffusers
    import torch

    return f"torch {torch.__version__}, diffusers {diffusers.__version__}"


def _device_name(device: str) -> str:
    if device.startswith("cuda"):
        import torch

        return torch.cuda.get_device_name(torch.device(device))
    return device


def _peak_device_memory(device: str) -> int | None:
    """Peak GPU memory allocated by this replica's process so far (None off CUDA)."""
    if not device.startswith("cuda"):
        return None
    import torch

    return int(torch.cuda.max_memory_allocated(torch.device(device)))


def _process_cpu_s() -> float:
    """CPU seconds this replica's process has used (user + system), for waste accounting."""
    import psutil

    times = psutil.Process().cpu_times()
    return times.user + times.system


def _process_started_at() -> float:
    import psutil

    return psutil.Process().create_time()


def _framework_imports(backend: str) -> None:
    """Import what the backend needs up front, so the cold-start breakdown tells imports from
    weight loading (the diffusers backend needs torch and diffusers; the simulation nothing)."""
    if backend == "diffusers":
        import diffusers  # noqa: F401
        import torch  # noqa: F401


@serve.deployment(name="DiffusionWorker", max_ongoing_requests=1)
class DiffusionWorker:
    def __init__(self, settings: dict[str, Any]) -> None:
        init_at = time.time()
        process_at = _process_started_at()
        self.settings = AppSettings.model_validate(settings)
        _framework_imports(self.settings.model.backend)
        if self.settings.model.torch_threads:
            import torch

            torch.set_num_threads(self.settings.model.torch_threads)
        imported_at = time.time()
        self.backend = load_backend(
            self.settings.model.backend,
            _model_spec(self.settings),
            self.settings.model.name,
            _simulation_profile(self.settings),
        )
        loaded_at = time.time()
        self.load_time_s = loaded_at - imported_at
        self.replica_id = serve.get_replica_context().replica_id.unique_id
        memory = self._calibrate_memory()
        if self.settings.testing.inject_oom_marker:
            log.warning("TEST fault injection on: prompts with %r raise OOM", self.settings.testing.inject_oom_marker)
            self.backend = InjectedOOM(self.backend, self.settings.testing.inject_oom_marker)
        self.runner = JobRunner(
            self.backend, self.replica_id, self.settings.deadlines.shed_hopeless,
            memory=memory, max_oom_strikes=self.settings.memory.max_oom_strikes,
            measure_memory_every=self.settings.memory.measure_every_n_calls,
            batcher=_adaptive_batcher(self.settings),
        )
        ready_at = time.time()
        self.cold_start_s = ready_at - process_at  # process start → ready, calibration included
        #: Where the cold start went (README, "Cold start"); the ingress exports it as metrics.
        self.cold_start_phases = {
            "process_start": max(0.0, _IMPORTS_STARTED - process_at),  # Ray worker boot until our code
            "imports": (_IMPORTS_DONE - _IMPORTS_STARTED) + (imported_at - init_at),
            "replica_setup": max(0.0, init_at - _IMPORTS_DONE),  # Serve's own replica setup
            "weights": self.load_time_s,
            "calibration": max(0.0, ready_at - loaded_at),
        }
        self.runner.replica_info = {
            "replica_cold_start_s": self.cold_start_s, "replica_load_time_s": self.load_time_s,
            "replica_cold_start_phases": self.cold_start_phases,
        }
        self._cancelled: dict[str, threading.Event] = {}
        self._listeners: dict[str, Callable[[WorkerEvent | WorkerReply], None]] = {}  # job → its stream
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pipeline")
        batching = self.settings.batching
        self._generate_batch.set_max_batch_size(batching.max_batch_size)
        self._generate_batch.set_batch_wait_timeout_s(batching.batch_wait_timeout_s)
        log.info(
            "worker %s loaded %s on %s in %.2fs, ready %.2fs after process start (max_batch_size=%d)",
            self.replica_id, self.backend.model_name, self.backend.device, self.load_time_s,
            self.cold_start_s, batching.max_batch_size,
        )

    async def generate(self, job: WorkerJob) -> WorkerReply:
        """Serve one job: alone in single-concurrency mode, else through the batch queue.

        If Ray cancels this call (client gone, ingress deadline), the job is flagged so the
        pipeline thread drops it at admission or stops at the next step.
        """
        marker = self.settings.testing.inject_error_marker
        if marker and marker in job.request.prompt:
            raise RuntimeError("injected worker failure (testing.inject_error_marker)")
        flag = self._cancelled.setdefault(job.job_id, threading.Event())
        try:
            if self.settings.batching.max_batch_size > 1:
                return await self._generate_batch(job)
            return (await self._run([job]))[0]
        except asyncio.CancelledError:
            flag.set()
            raise
        finally:
            self._cancelled.pop(job.job_id, None)

    @serve.batch(max_batch_size=1, batch_wait_timeout_s=0.0)
    async def _generate_batch(self, jobs: list[WorkerJob]) -> list[WorkerReply]:
        return await self._run(jobs)

    async def generate_events(self, job: WorkerJob) -> AsyncIterator[WorkerEvent | WorkerReply]:
        """Serve one job as a stream (``handle.options(stream=True)``): its progress events as the
        pipeline thread reports them, then its reply. Cancelling the stream cancels the job the same
        way as :meth:`generate`, and holds the slot until the pipeline thread has let go of it."""
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[WorkerEvent | WorkerReply] = asyncio.Queue()
        last_progress = 0.0

        def hear(event: WorkerEvent | WorkerReply) -> None:  # on the pipeline thread
            nonlocal last_progress
            now = time.monotonic()
            if (isinstance(event, WorkerEvent) and event.kind == "progress" and event.step < event.steps
                    and now - last_progress < PROGRESS_EVERY_S):
                return
            last_progress = now
            loop.call_soon_threadsafe(events.put_nowait, event)

        self._listeners[job.job_id] = hear
        task = asyncio.ensure_future(self.generate(job))
        try:
            async for item in until_done(events, task):
                yield item
                if isinstance(item, WorkerReply):  # answered before the rest of its batch ends
                    task.add_done_callback(_discard)
                    return
            yield task.result()
        except asyncio.CancelledError:
            task.cancel()
            await wait_out(task)  # generate() returns once the pipeline thread has let go
            raise
        finally:
            self._listeners.pop(job.job_id, None)

    def _notify(self, job_id: str, item: WorkerEvent | WorkerReply) -> None:
        listener = self._listeners.get(job_id)
        if listener is not None:
            listener(item)

    def _is_cancelled(self, job: WorkerJob) -> bool:
        flag = self._cancelled.get(job.job_id)
        return flag is None or flag.is_set()

    async def _run(self, jobs: list[WorkerJob]) -> list[WorkerReply]:
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(self._executor, self.runner.run, jobs, self._is_cancelled, self._notify)
        try:
            return await asyncio.shield(future)
        except asyncio.CancelledError:
            for job in jobs:
                self._cancelled.get(job.job_id, threading.Event()).set()
            await wait_out(future)  # hold the slot until the pipeline thread has returned
            raise

    def _calibrate_memory(self) -> MemoryModel | None:
        """Fit this replica's memory model from probe calls (real pipelines only)."""
        settings = self.settings.memory
        if not settings.calibrate or self.settings.model.backend != "diffusers":
            return None
        started = time.monotonic()
        key = {"model": self.backend.model_name, "device": _device_name(self.backend.device),
               "dtype": self.settings.model.dtype, "versions": _library_versions()}
        cache_dir = default_cache_dir() if settings.cache_probes else None
        probes, cached = cached_probes(key, cache_dir, lambda: measure_probes(self.backend.device, self.backend.generate))
        budget = device_budget_bytes(
            self.backend.device, settings.budget_fraction, settings.cpu_budget_mb * 2**20
        )
        model = MemoryModel.fit(probes, budget, settings.safety_factor)
        log.info("memory model from %d %s probes in %.2fs: %s", len(probes),
                 "cached" if cached else "measured", time.monotonic() - started, model)
        return model

    def check_health(self) -> None:
        """Ray calls this periodically; failing it makes Ray replace the replica."""
        if self.runner.unhealthy_reason:
            raise RuntimeError(self.runner.unhealthy_reason)

    def record_autoscaling_stats(self) -> dict[str, float]:
        """Measurements the autoscaling policy reads (serve/autoscaling_policy.py)."""
        stats = {"cold_start_s": self.cold_start_s}
        if self.runner.service_time.mean_s is not None:
            stats["service_time_s"] = self.runner.service_time.mean_s
        return stats

    async def stats(self) -> dict[str, Any]:
        """Instrumentation for tests and benchmarks: this replica's pipeline-call counters."""
        return {
            "replica_id": self.replica_id,
            "model": self.backend.model_name,
            "device": self.backend.device,
            "device_name": _device_name(self.backend.device),
            "peak_memory_bytes": _peak_device_memory(self.backend.device),
            "load_time_s": self.load_time_s,
            "cold_start_s": self.cold_start_s,
            "cold_start_phases": self.cold_start_phases,
            "service_time_s": self.runner.service_time.mean_s,
            "deadline_overruns_s": list(self.runner.deadline_overruns_s),
            "preview_seconds": list(self.runner.preview_seconds),
            "process_cpu_s": _process_cpu_s(),
            "oom_count": self.runner.oom_count,
            "memory_model": dataclasses.asdict(self.runner.memory) if self.runner.memory else None,
            **self.backend.counter.snapshot(),
        }
