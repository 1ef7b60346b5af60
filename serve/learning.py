"""What the ingress learns from the workers' replies, and what it answers with it.

Every reply carries what the worker measured: its service time, its replica's cold start and memory
model. From them the ingress keeps the drain rate (completions per second), the mean service time,
the last cold start (and each recent replica's, for ``GET /v1/scheduler``) and the latest memory
model, and uses them where a client needs a number that is not a guess: ``Retry-After`` on 503 and
429, the expected wait in ``/readyz`` and the stream's ``sdserve.queued`` event, and a 422 before
queueing for what can never fit a replica's memory. The same replies feed the metrics and the
scaling loop's collector, once each, here.
"""

from __future__ import annotations

import time
from collections import OrderedDict

from models.request import GenerationRequest
from scheduler.collector import CallReport
from scheduler.drain import DrainRate, retry_after_s
from scheduler.ewma import Ewma
from scheduler.memory import MemoryModel, largest_that_fits
from scheduler.outcomes import Outcome
from serve.metrics import MetricsRecorder
from serve.openai_api import ApiError
from serve.protocol import WorkerJob, WorkerReply
from serve.scaler import ScalingClient

#: How many replicas' cold starts ``GET /v1/scheduler`` lists: those that first replied last.
RECENT_REPLICAS = 100


class ReplyLearner:
    def __init__(self, recorder: MetricsRecorder, drain_window_s: float) -> None:
        self.recorder = recorder
        self.drain = DrainRate(drain_window_s)
        self.service = Ewma()  # seconds of a successful request's call
        self.cold_start_s: float | None = None  # the last cold start a worker replica reported
        #: each replica's own cold start, in the order of their first replies (the latest RECENT_REPLICAS)
        self.cold_starts: OrderedDict[str, float] = OrderedDict()
        self.memory: MemoryModel | None = None  # the latest replica's memory model
        self.scaling: ScalingClient | None = None  # told of every successful reply, when it runs
        self.outstanding = 0  # requests forwarded and not answered yet

    def forget_speed(self) -> None:
        """The workers' speed changed (a live change of the simulated GPU): learn it again."""
        self.drain = DrainRate(self.drain.window_s)
        self.service = Ewma()
        if self.scaling is not None:
            self.scaling.forget_speed()

    def learn(self, job: WorkerJob, reply: WorkerReply) -> None:
        """One reply from a worker (of any outcome), learnt from once."""
        self.drain.completed(time.monotonic())
        replica = reply.replica
        if replica is not None:
            if replica.memory is not None:
                self.memory = MemoryModel(**replica.memory)
            if replica.cold_start_s is not None:
                self.cold_start_s = replica.cold_start_s
                self._replica_started(replica.replica_id, replica.cold_start_s)
        self.recorder.reply(reply)
        if reply.outcome != Outcome.OK:
            return
        self.service.add(reply.service_time_s)
        if self.scaling is not None:
            r = job.request
            load_s = reply.call.model_load_s if reply.call is not None else 0.0
            self.scaling.replied(CallReport(
                max(0.0, reply.service_time_s - load_s), reply.batch_images, reply.steps_done, r.width * r.height,
                replica.cold_start_s if replica else None, replica.capacity if replica else None, load_s,
                reply.call.model_load if reply.call is not None else "", len(r.loras)))

    def _replica_started(self, replica_id: str, cold_start_s: float) -> None:
        if replica_id not in self.cold_starts:
            self.cold_starts[replica_id] = cold_start_s
            while len(self.cold_starts) > RECENT_REPLICAS:
                self.cold_starts.popitem(last=False)

    def recent_cold_starts(self) -> list[dict[str, float | str]]:
        """The recent replicas' own cold starts (process start → ready), oldest first."""
        return [{"replica": rid, "cold_start_s": round(s, 4)} for rid, s in self.cold_starts.items()]

    def retry_after_s(self, queued: int) -> int:
        """Seconds until ``queued`` requests ahead have drained, by the measured rate."""
        return retry_after_s(queued, self.drain.per_second(time.monotonic()), self.service.value)

    def expected_wait_s(self, running: int) -> float | None:
        """A new request's wait before its pipeline starts: a cold start at zero, else the work
        ahead of it shared by the running replicas (None until anything was measured)."""
        if running == 0:
            return self.cold_start_s
        if self.service.value is None:
            return None
        return round(self.outstanding * self.service.value / running, 3)

    def overloaded(self, queued_by_ray: int) -> ApiError:
        queued = max(queued_by_ray, self.outstanding)
        retry_after = self.retry_after_s(queued)
        return ApiError(503, f"overloaded: {queued} requests queued; retry in about {retry_after}s",
                        code=Outcome.OVERLOADED, type="server_error", headers={"Retry-After": str(retry_after)})

    def rate_limited(self, held: int) -> ApiError:
        retry_after = self.retry_after_s(held)
        return ApiError(
            429, f"this client already has {held} requests outstanding (queue.max_outstanding_per_client); "
            f"retry in about {retry_after}s", code=Outcome.RATE_LIMITED, type="rate_limit_error",
            headers={"Retry-After": str(retry_after)})

    def check_memory(self, g: GenerationRequest) -> None:
        """Refuse before queueing what can never fit, once a worker has told us its budget."""
        if self.memory is not None and not self.memory.fits(g.width, g.height, g.n):
            raise ApiError(422, largest_that_fits(self.memory, g.width, g.height, g.n),
                           code="exceeds_memory_budget", param="size")
