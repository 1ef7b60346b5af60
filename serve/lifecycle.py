"""One generation request's life in the ingress, from acceptance to its one counted outcome.

- **accepted**: a :class:`WorkerJob` with the request's deadline (body, header, or default);
- **fair share**: one client may hold at most ``queue.max_outstanding_per_client`` (429 beyond);
- **dispatched** (``serve/dispatcher.py``, when ``queue.dispatch`` is on): it waits in the
  application's fair queue until a worker replica has a free slot, and is sent there; a full queue
  is 503, a deadline passing in the queue 504 (phase ``queued``), a client leaving takes it out;
- **forwarded** to the worker deployment as an event stream, with the ingress's own timer
  (deadline + slack) over the wait and the call — cancelling the call removes it from wherever it
  waits, so it never reaches the pipeline. If the replica running it dies (its node is lost), the
  job is retried once on another replica while time is left (generation is seeded, so a retry
  gives the same image); otherwise it fails clearly. Without the dispatcher, Ray's full queue is 503;
- **finished**: counted once in the metrics and logged once, whatever path it took.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import time
from collections.abc import Callable
from typing import Any

from ray.exceptions import RayActorError
from ray.serve.exceptions import BackPressureError
from ray.serve.handle import DeploymentHandle

from models.request import GenerationRequest
from scheduler.collector import PendingJob
from scheduler.deadlines import DeadlinePolicy, TimeoutError422, absolute_deadline, resolve_timeout
from scheduler.fair_share import FairShare
from scheduler.outcomes import Outcome, Phase
from serve.dispatcher import Dispatcher, Expired, QueueFull
from serve.learning import ReplyLearner
from serve.metrics import MetricsRecorder
from serve.openai_api import ApiError
from serve.protocol import WorkerEvent, WorkerJob, WorkerReply
from serve.replies import JobProgress, follow, request_log_line
from serve.scaler import ScalingClient
from serve.settings import AppSettings

log = logging.getLogger("ray.serve")  # Ray writes it to the replica's log file
OnEvent = Callable[[WorkerEvent], None]


async def _stream_end(response: Any) -> None:
    """The end of a job's event stream, after its reply: the replica's call has returned and its
    slot is free (the reply itself comes a moment earlier)."""
    async for _ in response:
        pass


class RequestLifecycle:
    def __init__(self, worker_events: DeploymentHandle, learner: ReplyLearner, recorder: MetricsRecorder) -> None:
        self.worker_events = worker_events  # the worker's ``generate_events``, streamed
        self.learner, self.recorder = learner, recorder
        self.fair = FairShare(None)
        self.scaling: ScalingClient | None = None
        self.dispatcher: Dispatcher | None = None  # set by the ingress when queue.dispatch is on

    def configure(self, settings: AppSettings) -> None:
        self.settings = settings
        d = settings.deadlines
        self.deadlines = DeadlinePolicy(d.default_timeout_s, d.max_timeout_s, d.proxy_guard_s)
        self.fair.limit = settings.queue.max_outstanding_per_client
        self.learner.drain.window_s = settings.queue.drain_window_s
        self.recorder.weighted_tenants = tuple(settings.queue.tenant_weights)
        if self.dispatcher is not None:
            queue = settings.queue
            self.dispatcher.configure(queue.tenant_weights, queue.model_aware, settings.model.name, queue.wait_for_reads,
                                      queue.urgent_within_s)

    def _due(self, job: WorkerJob) -> float | None:
        """When ``job`` should be answered: its arrival plus the latency objective, if one is set
        (the queue's urgency counts down to it; its deadline, later, still ends it)."""
        objective = self.settings.autoscaling.policy.get("latency_objective_s")
        return None if objective is None else job.accepted_at + float(objective)

    def job(self, request: GenerationRequest, body_timeout: float | None, header_timeout: str | None,
            request_id: str, tenant: str = "") -> WorkerJob:
        try:
            timeout_s, source = resolve_timeout(body_timeout, header_timeout, self.deadlines)
        except TimeoutError422 as error:
            raise ApiError(422, str(error), code="invalid_value", param=error.param) from None
        accepted_at = time.time()
        return WorkerJob(request, request_id, accepted_at,
                         absolute_deadline(accepted_at, timeout_s, source, self.deadlines), tenant=tenant)

    async def call(self, job: WorkerJob, client: str, on_event: OnEvent | None = None) -> WorkerReply:
        """Forward ``job`` unless ``client`` already holds its share of the queue (429)."""
        if not self.fair.try_take(client):
            raise self.learner.rate_limited(self.fair.held(client))
        try:
            return await self._forward(job, client, on_event)
        finally:
            self.fair.give_back(client)

    def _pending(self, job: WorkerJob) -> PendingJob:
        """What the control loop is told of an accepted request (its adapters only where it counts them)."""
        assert job.deadline is not None
        r = job.request
        adapters = len(r.loras) if self.settings.autoscaling.per_request_adapters else None
        return PendingJob(job.accepted_at, job.deadline, r.n, r.effective_steps, r.width * r.height, adapters)

    async def _forward(self, job: WorkerJob, client: str, on_event: OnEvent | None) -> WorkerReply:
        assert job.deadline is not None
        self.learner.outstanding += 1
        if self.scaling is not None:
            self.scaling.start()
            self.scaling.accepted(job.job_id, self._pending(job))
        progress = JobProgress()
        wait_s = max(0.0, job.deadline - time.time()) + self.settings.deadlines.ingress_slack_s
        try:
            return await asyncio.wait_for(self._attempts(job, client, progress, on_event), wait_s)
        except asyncio.TimeoutError:
            return progress.late_reply(time.time() - job.accepted_at)
        except (BackPressureError, QueueFull) as error:
            queued = error.queued if isinstance(error, QueueFull) else (error.args[0] if error.args else 0)
            raise self.learner.overloaded(queued) from None
        finally:
            self.learner.outstanding -= 1
            if self.scaling is not None:
                self.scaling.answered(job.job_id)

    async def _attempts(self, job: WorkerJob, client: str, progress: JobProgress,
                        on_event: OnEvent | None) -> WorkerReply:
        """Dispatch and call, once more on another replica if the first is lost. Cancelled (the
        client left, the deadline timer): the job leaves the queue or its call is cancelled."""
        for attempt in (1, 2):
            if self.dispatcher is not None:
                try:
                    replica = await self.dispatcher.acquire(job.job_id, client, job.deadline, job.request.batch_key,
                                                            job.request.model, tuple(n for n, _ in job.request.loras),
                                                            self._due(job))
                except Expired:
                    return progress.late_reply(time.time() - job.accepted_at)
                job = dataclasses.replace(job, replica_id=replica)
            response = self.worker_events.generate_events.remote(job)
            answered = False
            try:
                reply = await follow(response, progress, on_event)
                answered = True
                if self.dispatcher is not None and reply.replica is not None:
                    self.dispatcher.holds(reply.replica.replica_id, reply.replica.models, reply.replica.host_models,
                                          reply.replica.adapters)
                self.learner.learn(job, reply)
                return reply
            except RayActorError as lost:
                if self.dispatcher is not None and job.replica_id is not None:
                    self.dispatcher.lost(job.replica_id)
                if attempt == 2 or time.time() >= job.deadline:
                    return WorkerReply(Outcome.ERROR, code="replica_lost", phase=progress.phase,
                                       steps_done=progress.step, message="the worker replica serving this "
                                       f"request was lost: {type(lost).__name__}")
                log.warning("worker replica lost for %s (%s); retrying once", job.request_id, lost)
                progress.reset()
            except asyncio.CancelledError:  # the client went away, or the deadline timer fired
                response.cancel()
                raise
            finally:
                if self.dispatcher is not None:  # answered: the slot is free when the replica's call ends
                    self.dispatcher.release(job.job_id, after=_stream_end(response) if answered else None)
        raise AssertionError("unreachable")

    def queue_position(self, job: WorkerJob, client: str) -> int:
        """Requests ahead of ``job`` if it were queued now: in the dispatcher's order, else all
        outstanding ones."""
        if self.dispatcher is None or job.deadline is None:
            return self.learner.outstanding
        return self.dispatcher.queue.position_if_added(client, job.deadline)

    def finish(self, outcome: Outcome, started: float, request_id: str, *, status: int, code: str = "",
               phase: Phase = Phase.NONE, job: WorkerJob | None = None, reply: WorkerReply | None = None,
               kind: str = "text") -> None:
        """Count the request's one outcome and write its one structured log line (``kind``: the
        route's, for a request refused before it was parsed)."""
        latency = time.monotonic() - started
        kind = job.request.kind if job is not None else kind
        self.recorder.request(outcome, phase, latency, kind)
        if reply is not None and reply.outcome == Outcome.OK and job is not None:
            self.recorder.tenant_wait(job.tenant, reply.queue_wait_s)
        log.info(json.dumps(request_log_line(request_id, outcome, phase, status, code, latency,
                                             job.request if job else None, reply, job.tenant if job else None,
                                             kind)))
