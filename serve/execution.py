"""What a worker replica does with a list of jobs, on its pipeline thread (no Ray here).

For each group of jobs that can share a pipeline call (same size, steps, guidance):
1. admission, just before the GPU would start: a job whose deadline passed while it queued is
   answered 504 without touching the pipeline; one that cannot finish in its remaining time (by this
   replica's measured step time) is shed with 504 — it would only burn GPU time nobody receives;
2. the call, with a step callback that stops within one denoising step once every job in the call
   is past its deadline or cancelled (skipping the VAE decode);
3. one reply per job, a job finishing past its deadline in a batch included (its image is dropped).

diffusers denoises a batch as one tensor, so a single expired request cannot leave a running batch
without re-implementing the denoising loop: it rides along, the others are unaffected, and it gets
its 504. The call stops early only when nobody in it is still waiting.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from models.generator import GroupedGenerator, group_by_batch_key
from models.request import GenerationStopped
from scheduler.deadlines import Admission, admit
from scheduler.service_time import StepTimeEstimator
from serve.protocol import WorkerJob, WorkerReply

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
    def __init__(self, backend: GroupedGenerator, replica_id: str, shed_hopeless: bool = True) -> None:
        self.backend = backend
        self.replica_id = replica_id
        self.shed_hopeless = shed_hopeless
        self.step_time = StepTimeEstimator()
        self.service_time = ServiceTimeTracker()
        #: Seconds the pipeline ran past a job's deadline (GPU time nobody received), per job.
        self.deadline_overruns_s: deque[float] = deque(maxlen=10_000)

    def run(self, jobs: list[WorkerJob], cancelled: Callable[[WorkerJob], bool]) -> list[WorkerReply]:
        """One reply per job, in order."""
        replies: dict[str, WorkerReply] = {}
        for indices in group_by_batch_key([job.request for job in jobs]):
            runnable = []
            group = [jobs[i] for i in indices]
            estimate = self._estimate(group) if self.shed_hopeless else None
            for job in group:
                verdict = self._admission(job, estimate, cancelled)
                if verdict is None:
                    runnable.append(job)
                else:
                    replies[job.job_id] = verdict
            if runnable:
                for job, reply in zip(runnable, self._run_group(runnable, cancelled)):
                    replies[job.job_id] = reply
        return [replies[job.job_id] for job in jobs]

    def _estimate(self, group: list[WorkerJob]) -> float | None:
        pixels = sum(job.request.pixels for job in group)
        return self.step_time.estimate(pixels, group[0].request.num_inference_steps)

    def _admission(
        self, job: WorkerJob, estimate: float | None, cancelled: Callable[[WorkerJob], bool]
    ) -> WorkerReply | None:
        now = time.time()
        if cancelled(job):
            return self._reply(job, "cancelled", now, phase="queued", message="client went away")
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

        def should_stop(steps_done: int) -> str | None:
            now = time.time()
            if all(cancelled(j) or (j.deadline is not None and now >= j.deadline) for j in group):
                return "cancelled" if all(cancelled(j) for j in group) else "deadline"
            return None

        try:
            results = self.backend.generate([job.request for job in group], should_stop)
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
            log.exception("pipeline call failed for %s", [job.request_id for job in group])
            return [
                self._reply(job, "error", started, phase="running", message=f"generation failed: {exc}")
                for job in group
            ]
        self._record_overruns(group)
        elapsed = time.time() - started
        self.service_time.add(elapsed)
        pixels = sum(job.request.pixels for job in group)
        self.step_time.observe(pixels, results[0].steps_done, elapsed)
        return [self._finished(job, result, started) for job, result in zip(group, results)]

    def _record_overruns(self, group: list[WorkerJob]) -> None:
        ended = time.time()
        for job in group:
            if job.deadline is not None and ended > job.deadline:
                self.deadline_overruns_s.append(ended - job.deadline)

    def _finished(self, job: WorkerJob, result: Any, started: float) -> WorkerReply:
        fields = dict(steps_done=result.steps_done, batch_images=result.batch_images)
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
