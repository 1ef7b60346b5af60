"""One pipeline call of a group of jobs, and its replies.

The call runs with a step callback that stops it within one denoising step once every job in it is
past its deadline or cancelled (skipping the VAE decode). A job whose deadline passes while the
others go on rides along: diffusers denoises a batch as one tensor, so it cannot leave; it gets its
504 and its image is dropped. After an out-of-memory error the group is bisected (see
:mod:`serve.oom_recovery`). Every call, stopped or finished, teaches the replica's call-time model.
"""

from __future__ import annotations

import time
import uuid
from collections import deque
from collections.abc import Callable
from typing import Any

from models.generator import GroupedGenerator
from models.host_tier import RESIDENT
from models.memory import PeakMemory
from models.request import GenerationStopped
from scheduler.admission import ReplicaRules
from scheduler.outcomes import Outcome, Phase
from serve.oom_recovery import OomGuard
from serve.progress import ProgressReporter
from serve.protocol import CallFacts, EventKind, WorkerJob, WorkerReply

Cancelled = Callable[[WorkerJob], bool]


class PipelineCalls:
    def __init__(self, backend: GroupedGenerator, rules: ReplicaRules, progress: ProgressReporter, oom: OomGuard,
                 measure_memory_every: int = 10, clock: Callable[[], float] = time.time) -> None:
        self.backend, self.rules, self.progress, self.oom = backend, rules, progress, oom
        self.measure_memory_every = max(1, measure_memory_every)
        self.clock = clock
        self.count = 0
        #: Seconds the pipeline ran past a job's deadline (GPU time nobody received), per job.
        self.deadline_overruns_s: deque[float] = deque(maxlen=10_000)

    def run(self, group: list[WorkerJob], cancelled: Cancelled, predicted_s: float | None = None) -> list[WorkerReply]:
        """Run ``group`` (one size, steps and guidance) as one call; one reply per job, in order."""
        started = self.clock()
        steps = group[0].request.effective_steps  # an edit runs ``strength`` of the schedule
        failure: tuple[bool, str] | None = None  # (out of memory?, message) of a failed call
        try:  # its checkpoint and adapters first, so ``started`` can say where they came from
            prepared = self.backend.prepare(group[0].request)
        except Exception as exc:  # a checkpoint that cannot load fails the requests that need it
            failure = self.oom.classify(exc, group)
        if failure is not None:
            return self._failed(group, cancelled, started, *failure)
        self.progress.tell(group, EventKind.STARTED, 0, steps, first_call=self.count == 0, load=prepared)
        on_latents = self.progress.previewer(group, steps)

        def should_stop(steps_done: int) -> str | None:
            self.progress.tell(group, EventKind.PROGRESS, steps_done, steps)
            now = self.clock()
            if all(cancelled(j) or (j.deadline is not None and now >= j.deadline) for j in group):
                return Outcome.CANCELLED if all(cancelled(j) for j in group) else Outcome.DEADLINE
            return None

        self.count += 1
        pixels = sum(job.request.pixels for job in group)
        images = sum(job.request.n for job in group)
        # Measuring a call's peak costs a garbage collection (and a heap trim on CPU): only every
        # ``measure_memory_every``-th call is measured, to check the estimate without taxing all.
        memory = self.rules.memory
        measure = memory is not None and (self.count - 1) % self.measure_memory_every == 0
        first = group[0].request
        estimate = memory.estimate(first.width, first.height, images) if measure else None
        peak = PeakMemory(self.backend.device)
        requests = [job.request for job in group]
        try:
            if estimate is None:
                results = self.backend.generate(requests, should_stop, on_latents)
            else:
                with peak:
                    results = self.backend.generate(requests, should_stop, on_latents)
        except GenerationStopped as stopped:
            return self._stopped(group, started, stopped, prepared[1])
        except Exception as exc:  # a failed call fails its own requests, never the replica
            failure = self.oom.classify(exc, group)
        if failure is not None:  # out of the ``except`` block: the failed call's frames are gone
            return self._failed(group, cancelled, started, *failure)
        self.oom.succeeded()
        ended = self._ended(group)
        load_s = prepared[1] + results[0].model_load_s
        tier = prepared[0] if prepared[0] != RESIDENT else results[0].model_load
        call = CallFacts(uuid.uuid4().hex, results[0].batch_images, len(group), predicted_s, estimate,
                         peak.peak_bytes if estimate is not None else None, tier, load_s)
        replies = [self._finished(job, result, started, ended, call) for job, result in zip(group, results)]
        # the speed model learns the pipeline's time: a checkpoint load is not the replica's speed
        self.rules.after_call(pixels, results[0].steps_done, ended - started - load_s,
                              all(reply.outcome == Outcome.OK for reply in replies))
        return replies

    def _ended(self, group: list[WorkerJob]) -> float:
        """Now, recording how long the call ran past each job's deadline."""
        ended = self.clock()
        for job in group:
            if job.deadline is not None and ended > job.deadline:
                self.deadline_overruns_s.append(ended - job.deadline)
        return ended

    def _stopped(self, group: list[WorkerJob], started: float, stopped: GenerationStopped,
                 load_s: float) -> list[WorkerReply]:
        ended = self._ended(group)
        self.rules.after_call(sum(job.request.pixels for job in group), stopped.steps_done, ended - started - load_s,
                              False)
        outcome = Outcome(stopped.reason)  # why the step callback stopped it
        return [WorkerReply.for_job(
            job, outcome, started, ended, phase=Phase.RUNNING, steps_done=stopped.steps_done,
            message=f"stopped after {stopped.steps_done} of {job.request.effective_steps} steps: {stopped.reason}")
            for job in group]

    def _failed(self, group: list[WorkerJob], cancelled: Cancelled, started: float, oom: bool,
                message: str) -> list[WorkerReply]:
        if not oom:
            return [WorkerReply.for_job(job, Outcome.ERROR, started, self.clock(), phase=Phase.RUNNING,
                                        message=f"generation failed: {message}") for job in group]
        request = group[0].request
        memory = self.rules.memory
        self.oom.ran_out(group, message, memory is not None and memory.fits(request.width, request.height, request.n))
        if len(group) > 1:  # bisect: the requests that fit succeed
            middle = len(group) // 2
            return self.run(group[:middle], cancelled) + self.run(group[middle:], cancelled)
        return [WorkerReply.for_job(
            group[0], Outcome.OUT_OF_MEMORY, started, self.clock(), phase=Phase.RUNNING,
            message=f"out of memory generating {request.n} x {request.width}x{request.height}; "
            "try a smaller size or fewer images")]

    def _finished(self, job: WorkerJob, result: Any, started: float, ended: float, call: CallFacts) -> WorkerReply:
        if job.deadline is not None and ended > job.deadline:
            return WorkerReply.for_job(
                job, Outcome.DEADLINE, started, ended, phase=Phase.RUNNING, steps_done=result.steps_done, call=call,
                message="the batch finished after this request's deadline; its image was dropped")
        return WorkerReply.for_job(job, Outcome.OK, started, ended, images=result.images, steps_done=result.steps_done,
                                   call=call)
