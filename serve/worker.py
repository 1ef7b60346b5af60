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
import dataclasses
import logging
import os
import threading
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from ray import serve

from models.loader import check_available
from models.oom import InjectedOOM
from models.simulated import SimulatedGenerator
from scheduler.admission import ReplicaRules
from serve import worker_setup as setup
from serve.event_queue import until_done, wait_out
from serve.execution import JobRunner
from serve.protocol import EventKind, WorkerEvent, WorkerJob, WorkerReply
from serve.settings import INGRESS_DEPLOYMENT, WORKER_DEPLOYMENT, AppSettings, live_settings

log = logging.getLogger("ray.serve")
PROGRESS_EVERY_S = 0.2  # at most this often a progress event per job (the last step always)
PRELOAD_ASK_S = 10.0  # the longest a starting replica waits to hear which checkpoint to preload


def _discard(task: "asyncio.Future[Any]") -> None:
    """The rest of a batch whose reply for this job was already streamed: only log a failure."""
    if not task.cancelled() and task.exception() is not None:
        log.warning("batch call after an early reply failed: %s", task.exception())


@serve.deployment(name=WORKER_DEPLOYMENT, max_ongoing_requests=1)
class DiffusionWorker:
    def __init__(self, settings: dict[str, Any]) -> None:
        init_at, process_at = time.time(), setup.process_started_at()
        self.args = settings
        self.settings = AppSettings.model_validate(settings)
        self.replica_id = serve.get_replica_context().replica_id.unique_id
        # asked first, answered while the frameworks import: what the queue needs when this start began
        preload = self._ask_preload() if setup.preloads(self.settings) else None
        if self.settings.model.backend == "diffusers":
            for source in self.settings.model.served.values():  # a mistyped id fails before the imports
                check_available(setup.model_spec(self.settings, source))
        setup.framework_imports(self.settings.model.backend)
        if self.settings.model.torch_threads:
            import torch

            torch.set_num_threads(self.settings.model.torch_threads)
        imported_at = time.time()
        self.model = setup.load_models(self.settings, self._preload_answer(preload),
                                       serve.get_replica_context().app_name)
        loaded_at = time.time()
        self._probes = setup.memory_probes(self.settings, self.model)
        rules = ReplicaRules(self.settings.deadlines.shed_hopeless,
                             setup.memory_model(self.settings, self._probes, self.model.device),
                             setup.adaptive_config(self.settings))
        self.jobs_received = 0  # streamed jobs that reached this replica (cancelled ones included)
        self.runner = JobRunner(self.model, self.replica_id, rules, self.settings.memory.max_oom_strikes,
                                self.settings.memory.measure_every_n_calls)
        ready_at = time.time()
        #: Where the cold start went (docs/operations.md, "Cold start"); the ingress exports it.
        self.cold_start_phases = setup.cold_start_phases(process_at, setup.IMPORT_STARTED, setup.IMPORT_DONE, init_at,
                                                         imported_at, loaded_at, ready_at)
        self.cold_start_s = ready_at - process_at  # process start → ready, calibration included
        self.load_time_s = loaded_at - imported_at
        self.runner.replica = dataclasses.replace(
            self.runner.replica, cold_start_s=self.cold_start_s, load_time_s=self.load_time_s,
            cold_start_phases=self.cold_start_phases)
        self._cancelled: dict[str, threading.Event] = {}
        self._listeners: dict[str, Callable[[WorkerEvent | WorkerReply], None]] = {}  # job → its stream
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pipeline")
        self._apply(self.settings)
        log.info("worker %s loaded %s on %s in %.2fs, ready %.2fs after process start (max_batch_size=%d)",
                 self.replica_id, self.model.model_name, self.model.device, self.load_time_s, self.cold_start_s,
                 self.settings.batching.max_batch_size)

    def _ask_preload(self) -> "Future[str | None]":
        """Ask the ingress which checkpoint the queue needs (``Ingress.preload_for``), on a thread
        (a blocking call: this constructor's thread runs the event loop)."""
        app_name = serve.get_replica_context().app_name

        def ask() -> str | None:
            ingress = serve.get_deployment_handle(INGRESS_DEPLOYMENT, app_name)
            return ingress.preload_for.remote(self.replica_id).result(timeout_s=PRELOAD_ASK_S)

        pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="preload-ask")
        try:
            return pool.submit(ask)
        finally:
            pool.shutdown(wait=False)

    def _preload_answer(self, asked: "Future[str | None] | None") -> str | None:
        """The ingress's answer; None (the default) when there is none within ``PRELOAD_ASK_S``."""
        if asked is None:
            return None
        try:
            choice = asked.result(timeout=PRELOAD_ASK_S)
        except Exception as error:  # noqa: BLE001 - a replica that cannot ask starts with the default
            log.warning("worker %s: no preload answer (%s); loading the default", self.replica_id, error)
            return None
        log.info("worker %s preloads %s (the ingress's answer)", self.replica_id, choice)
        return choice

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        """Ray calls this with the deployment's ``user_config`` at start and whenever it changes:
        the live settings (``serve/settings.py: LIVE_KEYS``) apply without a restart."""
        settings = live_settings(self.args, user_config)
        if settings.memory != self.settings.memory:
            self.runner.rules.memory = setup.memory_model(settings, self._probes, self.model.device)
        self._apply(settings)
        log.info("worker %s reconfigured: %s", self.replica_id, user_config)

    def _apply(self, settings: AppSettings) -> None:
        self.settings = settings
        runner = self.runner
        runner.rules.shed_hopeless = settings.deadlines.shed_hopeless
        runner.oom.max_strikes = settings.memory.max_oom_strikes
        runner.calls.measure_memory_every = settings.memory.measure_every_n_calls
        if isinstance(self.model, SimulatedGenerator):
            profile = dataclasses.replace(setup.simulation_profile(settings), load_time_s=self.model.profile.load_time_s)
            if profile != self.model.profile:  # another simulated GPU: what was learnt of its speed is void
                self.model.profile = profile
                runner.rules.forget()
        marker = settings.testing.inject_oom_marker
        runner.calls.backend = InjectedOOM(self.model, marker) if marker else self.model
        if marker:
            log.warning("TEST fault injection on: prompts with %r raise OOM", marker)
        self._generate_batch.set_max_batch_size(settings.batching.max_batch_size)
        self._generate_batch.set_batch_wait_timeout_s(settings.batching.batch_wait_timeout_s)

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
        self.jobs_received += 1
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[WorkerEvent | WorkerReply] = asyncio.Queue()
        last_progress = 0.0

        def hear(event: WorkerEvent | WorkerReply) -> None:  # on the pipeline thread
            nonlocal last_progress
            now = time.monotonic()
            if (isinstance(event, WorkerEvent) and event.kind == EventKind.PROGRESS and event.step < event.steps
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

    def check_health(self) -> None:
        """Ray calls this periodically; failing it makes Ray replace the replica."""
        if self.runner.unhealthy_reason:
            raise RuntimeError(self.runner.unhealthy_reason)

    async def stats(self) -> dict[str, Any]:
        """Instrumentation for tests and benchmarks: this replica's pipeline-call counters."""
        memory = self.runner.rules.memory
        return {
            "replica_id": self.replica_id,
            "pid": os.getpid(),
            "model": self.model.model_name,
            "device": self.model.device,
            "device_name": setup.device_name(self.model.device),
            "peak_memory_bytes": setup.peak_device_memory(self.model.device),
            "load_time_s": self.load_time_s,
            "cold_start_s": self.cold_start_s,
            "cold_start_phases": self.cold_start_phases,
            "deadline_overruns_s": list(self.runner.calls.deadline_overruns_s),
            "preview_seconds": list(self.runner.progress.preview_seconds),
            "process_cpu_s": setup.process_cpu_s(),
            "oom_count": self.runner.oom_count,
            "jobs_received": self.jobs_received,
            "memory_model": dataclasses.asdict(memory) if memory else None,
            **self.model.counter.snapshot(),
        }
