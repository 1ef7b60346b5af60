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

import asyncio
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from ray import serve

from models.backends import load_backend
from models.loader import ModelSpec
from models.simulated import A10_SD15_STEP_TIME_S, SimulationProfile
from models.request import GenerationStopped
from serve.protocol import WorkerJob, WorkerReply
from serve.settings import AppSettings

log = logging.getLogger("ray.serve")


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
    return SimulationProfile(
        step_time_s=tuple(sorted((sim.step_time_s or A10_SD15_STEP_TIME_S).items())),
        load_time_s=sim.load_time_s,
        scale_with_pixels=sim.scale_with_pixels,
    )


def _process_age_s() -> float:
    """Seconds since this replica's process started: its cold start, once the model is loaded."""
    import psutil

    return time.time() - psutil.Process().create_time()


class ServiceTimeTracker:
    """Exponentially weighted mean of pipeline-call durations, the autoscaler's service time."""

    def __init__(self, alpha: float = 0.3) -> None:
        self.alpha = alpha
        self.mean_s: float | None = None

    def add(self, seconds: float) -> None:
        self.mean_s = seconds if self.mean_s is None else self.alpha * seconds + (1 - self.alpha) * self.mean_s


@serve.deployment(name="DiffusionWorker", max_ongoing_requests=1)
class DiffusionWorker:
    def __init__(self, settings: dict[str, Any]) -> None:
        self.settings = AppSettings.model_validate(settings)
        if self.settings.model.torch_threads:
            import torch

            torch.set_num_threads(self.settings.model.torch_threads)
        started = time.monotonic()
        self.backend = load_backend(
            self.settings.model.backend,
            _model_spec(self.settings),
            self.settings.model.name,
            _simulation_profile(self.settings),
        )
        self.load_time_s = time.monotonic() - started
        self.cold_start_s = _process_age_s()
        self.service_time = ServiceTimeTracker()
        self.replica_id = serve.get_replica_context().replica_id.unique_id
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
        """Serve one job: alone in single-concurrency mode, else through the batch queue."""
        if self.settings.batching.max_batch_size > 1:
            return await self._generate_batch(job)
        return (await self._run([job]))[0]

    @serve.batch(max_batch_size=1, batch_wait_timeout_s=0.0)
    async def _generate_batch(self, jobs: list[WorkerJob]) -> list[WorkerReply]:
        return await self._run(jobs)

    async def _run(self, jobs: list[WorkerJob]) -> list[WorkerReply]:
        cancel = threading.Event()
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(self._executor, self._run_blocking, jobs, cancel)
        try:
            return await asyncio.shield(future)
        except asyncio.CancelledError:
            cancel.set()
            while not future.done():  # hold the slot until the pipeline thread has returned
                try:
                    await asyncio.shield(future)
                except asyncio.CancelledError:
                    continue
                except Exception:
                    break
            raise

    def _run_blocking(self, jobs: list[WorkerJob], cancel: threading.Event) -> list[WorkerReply]:
        started = time.time()

        def should_stop(steps_done: int) -> str | None:
            return "cancelled" if cancel.is_set() else None

        try:
            results = self.backend.generate([job.request for job in jobs], should_stop)
            self.service_time.add(time.time() - started)
        except GenerationStopped as stopped:
            return [
                self._reply(job, "error", started, message=str(stopped), steps_done=stopped.steps_done)
                for job in jobs
            ]
        except Exception as exc:  # one failed call fails its own requests, never the replica
            log.exception("pipeline call failed for %s", [job.request_id for job in jobs])
            return [self._reply(job, "error", started, message=f"generation failed: {exc}") for job in jobs]
        return [
            self._reply(
                job, "ok", started, images=result.images, steps_done=result.steps_done,
                batch_images=result.batch_images,
            )
            for job, result in zip(jobs, results)
        ]

    def _reply(self, job: WorkerJob, outcome: str, started: float, **fields: Any) -> WorkerReply:
        return WorkerReply(
            outcome=outcome,
            steps_requested=job.request.num_inference_steps,
            queue_wait_s=max(0.0, started - job.accepted_at),
            service_time_s=time.time() - started,
            replica_id=self.replica_id,
            **fields,
        )

    def record_autoscaling_stats(self) -> dict[str, float]:
        """Measurements the autoscaling policy reads (serve/autoscaling_policy.py)."""
        stats = {"cold_start_s": self.cold_start_s}
        if self.service_time.mean_s is not None:
            stats["service_time_s"] = self.service_time.mean_s
        return stats

    async def stats(self) -> dict[str, Any]:
        """Instrumentation for tests and benchmarks: this replica's pipeline-call counters."""
        return {
            "replica_id": self.replica_id,
            "model": self.backend.model_name,
            "load_time_s": self.load_time_s,
            "cold_start_s": self.cold_start_s,
            "service_time_s": self.service_time.mean_s,
            **self.backend.counter.snapshot(),
        }
