"""What a worker replica does with a list of jobs, on its pipeline thread (no Ray here).

For each group of jobs that can share a pipeline call (same size, steps, guidance):
1. admission, just before the GPU would start: a job that can never fit the memory budget is
   refused (4xx); a job whose deadline passed while it queued is answered 504 without touching the
   pipeline; one that cannot finish in its remaining time (by this replica's measured step time) is
   shed with 504 — it would only burn GPU time nobody receives;
2. the group is split into calls whose estimated memory fits the budget;
3. each call runs with a step callback that stops within one denoising step once every job in the call
   is past its deadline or cancelled (skipping the VAE decode);
4. out of memory: what the call held is released and a batch is bisected and re-run, so the
   requests that fit succeed and only one that fails alone gets 507; a device error, or repeated
   OOMs on requests the estimate said fit, marks the replica unhealthy so Ray replaces it;
5. one reply per job, a job finishing past its deadline in a batch included (its image is dropped).

diffusers denoises a batch as one tensor, so a single expired request cannot leave a running batch
without re-implementing the denoising loop: it rides along, the others are unaffected, and it gets
its 504. The call stops early only when nobody in it is still waiting.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import statistics
import time
import uuid
from collections import deque
from collections.abc import Callable
from typing import Any

from models.generator import GroupedGenerator, LatentsHook, group_by_batch_key
from models.memory import PeakMemory
from models.oom import is_device_fatal, is_out_of_memory, release_memory
from models.preview import latent_preview_png, placeholder_preview_png, preview_steps
from models.request import GenerationStopped
from scheduler.adaptive_batching import AdaptiveBatcher, Waiting
from scheduler.deadlines import Admission, admit
from scheduler.memory import MemoryModel, largest_that_fits, split_to_fit
from scheduler.service_time import StepTimeEstimator
from serve.protocol import WorkerEvent, WorkerJob, WorkerReply

#: Called on the pipeline thread with a job's id and its progress, or its reply as soon as its call
#: is over (the adaptive setting runs several calls per batch: a job need not wait for the others).
Notify = Callable[[str, "WorkerEvent | WorkerReply"], None]

log = logging.getLogger("ray.serve")


class ServiceTimeTracker:
    """Exponentially weighted mean of pipeline-call durations, the autoscaler's service time."""

    def __init__(self, alpha: float = 0.3) -> None:
        self.alpha = alpha
        self.mean_s: float | None = None

    def add(self, seconds: float) -> None:
        if self.mean_s is None:
            self.mean_s = seconds
        else:
            self.mean_s = self.alpha * seconds + (1 - self.alpha) * self.mean_s


class JobRunner:
    def __init__(
        self,
        backend: GroupedGenerator,
        replica_id: str,
        shed_hopeless: bool = True,
        memory: MemoryModel | None = None,
        max_oom_strikes: int = 3,
        measure_memory_every: int = 10,
        batcher: AdaptiveBatcher | None = None,
    ) -> None:
        self.backend = backend
        self.replica_id = replica_id
        self.shed_hopeless = shed_hopeless
        self.memory = memory
        self.max_oom_strikes = max_oom_strikes
        self.measure_memory_every = max(1, measure_memory_every)
        self._calls_run = 0
        self.oom_count = 0
        self._oom_strikes = 0  # consecutive OOMs on calls the estimate said fit
        #: Facts about this replica sent with every reply (cold start, load time), for metrics.
        self.replica_info: dict[str, Any] = {}
        #: Set when the device should not serve again; ``check_health`` fails on it.
        self.unhealthy_reason: str | None = None
        self.step_time = StepTimeEstimator()
        self.service_time = ServiceTimeTracker()
        #: Seconds the pipeline ran past a job's deadline (GPU time nobody received), per job.
        self.deadline_overruns_s: deque[float] = deque(maxlen=10_000)
        self._notify: Notify | None = None
        #: Seconds each partial image took to render (its cost is reported by the stream benchmark).
        self.preview_seconds: deque[float] = deque(maxlen=1000)
        #: The adaptive setting's batch-size chooser (None: calls as collected, split to fit memory).
        self.batcher = batcher

    def run(self, jobs: list[WorkerJob], cancelled: Callable[[WorkerJob], bool],
            notify: Notify | None = None) -> list[WorkerReply]:
        """One reply per job, in order; ``notify`` hears when each job starts and how far it got."""
        self._notify = notify
        replies: dict[str, WorkerReply] = {}
        for indices in group_by_batch_key([job.request for job in jobs]):
            runnable = []
            group = [jobs[i] for i in indices]
            # shed on what the job costs in the call it will get: the whole group, or alone (adaptive)
            estimate = self._estimate(group if self.batcher is None else group[:1]) if self.shed_hopeless else None
            for job in group:
                verdict = self._admission(job, estimate, cancelled)
                if verdict is None:
                    runnable.append(job)
                else:
                    replies[job.job_id] = verdict
            first = group[0].request
            if self.batcher is not None:
                replies.update(self._run_adaptively(runnable, cancelled))
                continue
            for call in split_to_fit([j.request.n for j in runnable], first.width, first.height, self.memory):
                batch = [runnable[i] for i in call]
                for job, reply in zip(batch, self._run_group(batch, cancelled)):
                    replies[job.job_id] = reply
        return [self._with_replica_info(replies[job.job_id], jobs) for job in jobs]

    def _with_replica_info(self, reply: WorkerReply, jobs: list[WorkerJob]) -> WorkerReply:
        """Facts about this replica every reply carries (memory model, capacity, cold start)."""
        return dataclasses.replace(
            reply, effective_capacity=self._effective_capacity(jobs),
            memory=dataclasses.asdict(self.memory) if self.memory else None,
            replica_oom_total=self.oom_count, **self.replica_info,
        )

    def _run_adaptively(self, runnable: list[WorkerJob], cancelled: Callable[[WorkerJob], bool]
                        ) -> dict[str, WorkerReply]:
        """The adaptive setting: earliest deadline first, each call as large as the batcher says
        meets every member's deadline (and fits memory); the rest wait for the next call."""
        assert self.batcher is not None
        replies: dict[str, WorkerReply] = {}
        waiting = sorted(runnable, key=lambda j: math.inf if j.deadline is None else j.deadline)
        while waiting:
            still = []
            for job in waiting:  # later calls: a job may have expired or gone meanwhile
                verdict = self._admission(job, None, cancelled) if replies else None
                if verdict is None:
                    still.append(job)
                else:
                    replies[job.job_id] = verdict
            if not still:
                break
            r = still[0].request
            pixels, steps = r.width * r.height, r.num_inference_steps
            if self.shed_hopeless:  # what cannot make its deadline even alone is shed, not run
                now, keep = time.time(), []
                for job in still:
                    predicted = self.batcher.hopeless(Waiting(job.deadline, job.request.n), now, pixels, steps)
                    if predicted is None:
                        keep.append(job)
                        continue
                    assert job.deadline is not None
                    replies[job.job_id] = self._reply(job, "shed", now, phase="queued", message=(
                        f"cannot finish in time: a call of {job.request.n} image(s) takes ~{predicted:.2f}s "
                        f"here, {job.deadline - now:.2f}s left before the deadline"))
                still = keep
                if not still:
                    break
            max_images = self.memory.max_images(r.width, r.height) if self.memory else None
            k = self.batcher.choose([Waiting(j.deadline, j.request.n) for j in still], time.time(), pixels, steps,
                                    max_images)
            batch, waiting = still[:k], still[k:]
            images = sum(j.request.n for j in batch)
            predicted = self.batcher.model.predict(images, pixels, steps) if self.batcher.model_ready else None
            started = time.time()
            results = self._run_group(batch, cancelled)
            in_time = all(reply.outcome == "ok" for reply in results)
            if all(reply.steps_done == steps for reply in results):  # ran to the end: a clean sample
                self.batcher.observe(images, pixels, steps, time.time() - started, in_time)
            elif not in_time:
                self.batcher.observe(0, pixels, steps, 0.0, False)  # a miss: AIMD backs off, no sample
            for job, reply in zip(batch, results):
                replies[job.job_id] = dataclasses.replace(reply, call_requests=len(batch), call_predicted_s=predicted)
                if self._notify is not None:  # answered now, not when the later calls are done
                    self._notify(job.job_id, self._with_replica_info(replies[job.job_id], [job]))
        return replies

    def _effective_capacity(self, jobs: list[WorkerJob]) -> int | None:
        """Adaptive: requests per call for work like these jobs, due in the time they had left."""
        if self.batcher is None or not jobs:
            return None
        r = jobs[0].request
        left = [j.deadline - j.accepted_at for j in jobs if j.deadline is not None]
        budget = statistics.median(left) if left else math.inf
        return self.batcher.effective_capacity(r.width * r.height, r.num_inference_steps, budget)

    def _estimate(self, group: list[WorkerJob]) -> float | None:
        pixels = sum(job.request.pixels for job in group)
        return self.step_time.estimate(pixels, group[0].request.num_inference_steps)

    def _admission(
        self, job: WorkerJob, estimate: float | None, cancelled: Callable[[WorkerJob], bool]
    ) -> WorkerReply | None:
        now = time.time()
        if cancelled(job):
            return self._reply(job, "cancelled", now, phase="queued", message="client went away")
        request = job.request
        if self.memory is not None and not self.memory.fits(request.width, request.height, request.n):
            return self._reply(
                job, "invalid", now, code="exceeds_memory_budget",
                message=largest_that_fits(self.memory, request.width, request.height, request.n),
            )
        verdict = admit(now, job.deadline, estimate)
        if verdict is Admission.EXPIRED:
            waited = now - job.accepted_at
            return self._reply(
                job, "deadline_exceeded", now, phase="queued",
                message=f"deadline passed after {waited:.2f}s waiting in the queue",
            )
        if verdict is Admission.HOPELESS:
            assert job.deadline is not None and estimate is not None
            return self._reply(
                job, "shed", now, phase="queued",
                message=(
                    f"cannot finish in time: {job.request.num_inference_steps} steps need "
                    f"~{estimate:.2f}s here, {job.deadline - now:.2f}s left before the deadline"
                ),
            )
        return None

    def _run_group(
        self, group: list[WorkerJob], cancelled: Callable[[WorkerJob], bool]
    ) -> list[WorkerReply]:
        started = time.time()

        steps = group[0].request.num_inference_steps
        self._tell(group, "started", 0, steps, first_call=self._calls_run == 0)
        on_latents = self._previewer(group, steps)

        def should_stop(steps_done: int) -> str | None:
            self._tell(group, "progress", steps_done, steps)
            now = time.time()
            if all(cancelled(j) or (j.deadline is not None and now >= j.deadline) for j in group):
                return "cancelled" if all(cancelled(j) for j in group) else "deadline"
            return None

        first = group[0].request
        images = sum(job.request.n for job in group)
        self._calls_run += 1
        # Measuring a call's peak costs a garbage collection (and a heap trim on CPU): only every
        # ``measure_memory_every``-th call is measured, to check the estimate without taxing all.
        measure = self.memory is not None and (self._calls_run - 1) % self.measure_memory_every == 0
        estimate = self.memory.estimate(first.width, first.height, images) if measure else None
        peak = PeakMemory(self.backend.device)
        failure: tuple[bool, str] | None = None  # (out of memory?, message) of a failed call
        try:
            if estimate is None:
                results = self.backend.generate([job.request for job in group], should_stop, on_latents)
            else:
                with peak:
                    results = self.backend.generate([job.request for job in group], should_stop, on_latents)
        except GenerationStopped as stopped:
            self._record_overruns(group)
            pixels = sum(job.request.pixels for job in group)
            self.step_time.observe(pixels, stopped.steps_done, time.time() - started)
            outcome = "cancelled" if stopped.reason == "cancelled" else "deadline_exceeded"
            return [
                self._reply(
                    job, outcome, started, phase="running", steps_done=stopped.steps_done,
                    message=f"stopped after {stopped.steps_done} of "
                    f"{job.request.num_inference_steps} steps: {stopped.reason}",
                )
                for job in group
            ]
        except Exception as exc:  # a failed call fails its own requests, never the replica
            failure = self._failure(exc, group)
        if failure is not None:
            # Out of the ``except`` block: the exception and its traceback are gone, and with
            # them the failed call's frames and the tensors they held, so releasing memory and
            # retrying halves run with that memory really free (PyTorch FAQ: "my out of memory
            # exception handler can't allocate memory").
            oom, message = failure
            if oom:
                return self._after_oom(group, cancelled, started, message)
            return [
                self._reply(job, "error", started, phase="running", message=f"generation failed: {message}")
                for job in group
            ]
        self._oom_strikes = 0
        self._record_overruns(group)
        elapsed = time.time() - started
        self.service_time.add(elapsed)
        pixels = sum(job.request.pixels for job in group)
        self.step_time.observe(pixels, results[0].steps_done, elapsed)
        call = {"call_id": uuid.uuid4().hex, "memory_estimate_bytes": estimate,
                "memory_peak_bytes": peak.peak_bytes if estimate is not None else None}
        return [self._finished(job, result, started, call) for job, result in zip(group, results)]

    def _tell(self, group: list[WorkerJob], kind: str, step: int, steps: int, first_call: bool = False) -> None:
        if self._notify is not None:
            for job in group:
                self._notify(job.job_id, WorkerEvent(kind, job.job_id, step, steps, self.replica_id, first_call))

    def _previewer(self, group: list[WorkerJob], steps: int) -> LatentsHook | None:
        """A latents hook that streams each job's partial images at its evenly spaced steps."""
        plans = {job.job_id: preview_steps(steps, job.request.partial_images) for job in group}
        if self._notify is None or not any(plans.values()):
            return None
        offsets, offset = {}, 0
        for job in group:
            offsets[job.job_id], offset = offset, offset + job.request.n
        notify = self._notify

        def on_latents(step: int, latents: Any) -> None:
            for job in group:
                plan = plans[job.job_id]
                if step not in plan:
                    continue
                began = time.perf_counter()
                r = job.request
                png = (placeholder_preview_png(r.width, r.height, step / steps) if latents is None
                       else latent_preview_png(latents, offsets[job.job_id], r.width, r.height))
                self.preview_seconds.append(time.perf_counter() - began)
                notify(job.job_id, WorkerEvent("partial", job.job_id, step, steps, self.replica_id,
                                               png=png, index=plan.index(step)))

        return on_latents

    def _failure(self, exc: Exception, group: list[WorkerJob]) -> tuple[bool, str]:
        """Classify a failed call (and log it) while its exception is at hand; keep only text."""
        if is_out_of_memory(exc):
            return True, str(exc)
        if is_device_fatal(exc):
            self.unhealthy_reason = f"device error, replica must be replaced: {exc}"
            log.error("%s", self.unhealthy_reason)
        else:
            log.exception("pipeline call failed for %s", [job.request_id for job in group])
        return False, str(exc)

    def _after_oom(
        self, group: list[WorkerJob], cancelled: Callable[[WorkerJob], bool], started: float, error: str
    ) -> list[WorkerReply]:
        """Free what the failed call held, then bisect a batch so the requests that fit succeed;
        a request that runs out of memory alone gets 507, and only it."""
        release_memory(self.backend.device)
        self.oom_count += 1
        shapes = [(j.request.width, j.request.height, j.request.n) for j in group]
        log.warning("out of memory in a call of %d request(s) %s: %s", len(group), shapes, error)
        if len(group) > 1:
            middle = len(group) // 2
            return self._run_group(group[:middle], cancelled) + self._run_group(group[middle:], cancelled)
        request = group[0].request
        if self.memory is not None and self.memory.fits(request.width, request.height, request.n):
            self._oom_strikes += 1
            if self._oom_strikes >= self.max_oom_strikes:
                self.unhealthy_reason = (
                    f"{self._oom_strikes} consecutive out-of-memory errors on requests the "
                    "estimate said fit: device memory is not what it was; replacing the replica"
                )
                log.error("%s", self.unhealthy_reason)
        return [
            self._reply(
                group[0], "out_of_memory", started, phase="running",
                message=f"out of memory generating {request.n} x {request.width}x{request.height}; "
                "try a smaller size or fewer images",
            )
        ]

    def _record_overruns(self, group: list[WorkerJob]) -> None:
        ended = time.time()
        for job in group:
            if job.deadline is not None and ended > job.deadline:
                self.deadline_overruns_s.append(ended - job.deadline)

    def _finished(self, job: WorkerJob, result: Any, started: float, call: dict[str, Any]) -> WorkerReply:
        fields = dict(steps_done=result.steps_done, batch_images=result.batch_images, **call)
        if job.deadline is not None and time.time() > job.deadline:
            return self._reply(
                job, "deadline_exceeded", started, phase="running",
                message="the batch finished after this request's deadline; its image was dropped",
                **fields,
            )
        return self._reply(job, "ok", started, images=result.images, **fields)

    def _reply(self, job: WorkerJob, outcome: str, started: float, **fields: Any) -> WorkerReply:
        return WorkerReply(
            outcome=outcome,
            steps_requested=job.request.num_inference_steps,
            queue_wait_s=max(0.0, started - job.accepted_at),
            service_time_s=max(0.0, time.time() - started),
            replica_id=self.replica_id,
            **fields,
        )
