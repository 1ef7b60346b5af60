"""What a worker replica does with a list of jobs, on its pipeline thread (no Ray here).

For each group of jobs that can share a pipeline call (same size, steps, guidance):

1. admission, just before the GPU would start, by the replica's rules
   (:class:`scheduler.admission.ReplicaRules`, the same code the simulator runs): a job that can
   never fit the memory budget is refused (4xx); one whose deadline passed while it queued is
   answered 504 without touching the pipeline; one that cannot finish in its remaining time (by
   this replica's own call-time model) is shed with 504 — it would only burn GPU time nobody receives;
2. the plain settings split the group into calls whose estimated memory fits the budget; the
   adaptive setting runs calls earliest deadline first, each as large as its rule allows, answering
   each job as soon as its own call is over;
3. each call runs by :class:`serve.pipeline_call.PipelineCalls` (stop within a step at the deadline,
   out-of-memory bisection, previews and progress);
4. one reply per job, carrying what the replica is now (cold start, memory model, capacity).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable

from models.generator import GroupedGenerator, group_by_batch_key
from scheduler.admission import (
    Admission,
    JobView,
    ReplicaRules,
    earliest_deadline_first,
)
from scheduler.memory import largest_that_fits, split_to_fit
from scheduler.outcomes import Outcome, Phase
from serve.oom_recovery import OomGuard
from serve.pipeline_call import Cancelled, PipelineCalls
from serve.progress import Notify, ProgressReporter
from serve.protocol import ReplicaFacts, WorkerJob, WorkerReply


def view(job: WorkerJob, load_s: float = 0.0) -> JobView:
    r = job.request
    return JobView(job.deadline, r.n, r.width * r.height, r.effective_steps, load_s)


class JobRunner:
    def __init__(self, backend: GroupedGenerator, replica_id: str, rules: ReplicaRules | None = None,
                 max_oom_strikes: int = 3, measure_memory_every: int = 10,
                 clock: Callable[[], float] = time.time) -> None:
        self.rules = rules if rules is not None else ReplicaRules()
        self.progress = ProgressReporter(replica_id)
        self.oom = OomGuard(backend.device, max_oom_strikes)
        self.calls = PipelineCalls(backend, self.rules, self.progress, self.oom, measure_memory_every, clock)
        self.clock = clock
        #: What every reply says about this replica (the worker fills in its cold start).
        self.replica = ReplicaFacts(replica_id)

    @property
    def oom_count(self) -> int:
        return self.oom.count

    @property
    def unhealthy_reason(self) -> str | None:
        return self.oom.unhealthy_reason

    def run(self, jobs: list[WorkerJob], cancelled: Cancelled, notify: Notify | None = None) -> list[WorkerReply]:
        """One reply per job, in order; ``notify`` hears when each job starts and how far it got."""
        self.progress.notify = notify
        replies: dict[str, WorkerReply] = {}
        for indices in group_by_batch_key([job.request for job in jobs]):
            group = [jobs[i] for i in indices]
            if self.rules.batcher is not None:
                replies.update(self._run_adaptively(group, cancelled))
                continue
            call_pixels = sum(job.request.pixels for job in group)  # shed on the call it will get
            runnable = self._admitted(group, cancelled, replies, call_pixels)
            first = group[0].request
            for call in split_to_fit([j.request.n for j in runnable], first.width, first.height, self.rules.memory):
                batch = [runnable[i] for i in call]
                replies.update(zip((job.job_id for job in batch), self.calls.run(batch, cancelled)))
        return [self._about_replica(replies[job.job_id], jobs) for job in jobs]

    def _admitted(self, group: list[WorkerJob], cancelled: Cancelled, replies: dict[str, WorkerReply],
                  call_pixels: int | None = None) -> list[WorkerJob]:
        """The jobs of ``group`` that may run now; the others' replies go into ``replies``."""
        runnable = []
        for job in group:
            refusal = self._refusal(job, cancelled, call_pixels)
            if refusal is None:
                runnable.append(job)
            else:
                replies[job.job_id] = refusal
                self.progress.answered(job, self._about_replica(refusal, [job]))
        return runnable

    def _refusal(self, job: WorkerJob, cancelled: Cancelled, call_pixels: int | None) -> WorkerReply | None:
        """Why ``job`` may not run now (its reply), or None."""
        now = self.clock()
        if cancelled(job):
            return WorkerReply.for_job(job, Outcome.CANCELLED, now, now, phase=Phase.QUEUED, message="client went away")
        # a checkpoint and adapters this replica would have to load first count in the time the job needs
        verdict = self.rules.admit(view(job, self.calls.backend.expected_load_s(job.request)), now, call_pixels)
        r = job.request
        if verdict.admission is Admission.TOO_BIG:
            assert self.rules.memory is not None
            return WorkerReply.for_job(job, Outcome.INVALID, now, now, code="exceeds_memory_budget",
                                       message=largest_that_fits(self.rules.memory, r.width, r.height, r.n))
        if verdict.admission is Admission.EXPIRED:
            return WorkerReply.for_job(job, Outcome.DEADLINE, now, now, phase=Phase.QUEUED,
                                       message=f"deadline passed after {now - job.accepted_at:.2f}s waiting in the queue")
        if verdict.admission is Admission.HOPELESS:
            assert job.deadline is not None and verdict.predicted_s is not None
            return WorkerReply.for_job(job, Outcome.SHED, now, now, phase=Phase.QUEUED, message=(
                f"cannot finish in time: a call of {r.n} x {r.width}x{r.height} and {r.effective_steps} steps "
                f"(with loading its checkpoint and LoRA adapters where not loaded) takes ~{verdict.predicted_s:.2f}s here, {job.deadline - now:.2f}s left before the deadline"))
        return None

    def _run_adaptively(self, group: list[WorkerJob], cancelled: Cancelled) -> dict[str, WorkerReply]:
        """The adaptive setting: earliest deadline first, each job admitted alone before every call,
        each call as large as the rules say meets every member's deadline; the rest wait for the
        next call, and each job is answered as soon as its own call is over."""
        replies: dict[str, WorkerReply] = {}
        waiting = [group[i] for i in earliest_deadline_first([view(job) for job in group])]
        while waiting:
            waiting = self._admitted(waiting, cancelled, replies)
            if not waiting:
                break
            k = self.rules.batch_size([view(job) for job in waiting], self.clock())
            batch, waiting = waiting[:k], waiting[k:]
            r = batch[0].request
            predicted = self.rules.predicted_s(sum(j.request.n for j in batch), r.width * r.height,
                                               r.effective_steps)
            for job, reply in zip(batch, self.calls.run(batch, cancelled, predicted)):
                replies[job.job_id] = reply
                self.progress.answered(job, self._about_replica(reply, [job]))  # now, not after the rest
        return replies

    def _about_replica(self, reply: WorkerReply, jobs: list[WorkerJob]) -> WorkerReply:
        """The reply with what this replica is now: OOMs so far, memory model, batch capacity."""
        r = jobs[0].request
        budgets = [j.deadline - j.accepted_at for j in jobs if j.deadline is not None]
        memory = self.rules.memory
        loaded = getattr(self.calls.backend, "loaded", None)  # a catalog's resident checkpoints
        host = getattr(self.calls.backend, "host", None)  # and its host tier
        replica = dataclasses.replace(
            self.replica, oom_total=self.oom.count, memory=dataclasses.asdict(memory) if memory else None,
            capacity=self.rules.effective_capacity(r.width * r.height, r.effective_steps, budgets),
            models=tuple(loaded) if loaded is not None else None,
            host_models=tuple(host.entries) if host is not None else (),
            adapters=tuple((model, adapter) for model, names in self.calls.backend.adapters().items()
                           for adapter in names))
        return dataclasses.replace(reply, replica=replica)
