"""The HTTP ingress deployment: OpenAI-shaped API, validation, auth, request ids.

Request ids: Ray's proxy already reads the client's ``X-Request-Id`` (or mints one), uses it as the
Serve request id and sets it on every response, 404s included; the ingress reuses that id.

It does the cheap work (parse, validate, authorize) so that only well-formed requests ever take a
worker slot, then forwards one :class:`WorkerJob` to the worker deployment and maps the worker's
outcome to one documented status code.
"""

import asyncio
import base64
import json
import logging
import time
from typing import Any

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST
from ray import serve
from ray.exceptions import RayActorError
from ray.serve.context import _get_serve_request_context
from ray.serve.exceptions import BackPressureError
from ray.serve.handle import DeploymentHandle
from starlette.exceptions import HTTPException as StarletteHTTPException

from models.request import GenerationRequest
from scheduler.deadlines import DeadlinePolicy, TimeoutError422, absolute_deadline, resolve_timeout
from scheduler.drain import DrainRate, retry_after_s
from scheduler.memory import MemoryModel, largest_that_fits
from scheduler.collector import PendingJob
from serve.admission import (
    Authorizer,
    load_api_keys,
    proxy_bind_host,
    read_body,
    refuse_disconnect_override,
    refuse_open_network,
)
from serve.control import ScalingLoop, ServeFleet
from serve.decision_log import read_decisions
from serve.metrics import MetricsRecorder
from serve.openai_api import ApiError, parse_body, to_generation_request
from serve.protocol import WorkerEvent, WorkerJob, WorkerReply
from serve.settings import AppSettings

log = logging.getLogger("ray.serve")  # Ray writes it to the replica's log file

WORKER_DEPLOYMENT = "DiffusionWorker"

# The schema and its pages are served by routes below that check the key like every other route.
api = FastAPI(title="sdserve", description="Stable Diffusion serving on Ray Serve",
              docs_url=None, redoc_url=None, openapi_url=None)

#: Worker outcome → (HTTP status, error type) for everything that is not "ok".
_OUTCOME_STATUS = {
    "deadline_exceeded": (504, "timeout_error"),
    "shed": (504, "timeout_error"),
    "cancelled": (499, "client_closed_request"),
    "out_of_memory": (507, "server_error"),
    "invalid": (422, "invalid_request_error"),
    "error": (500, "server_error"),
}


def error_response(error: ApiError) -> JSONResponse:
    return JSONResponse(error.body(), status_code=error.status, headers=error.headers)


@api.exception_handler(ApiError)
async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
    return error_response(exc)


@api.exception_handler(StarletteHTTPException)
async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    code = "not_found" if exc.status_code == 404 else "http_error"
    message = f"no route {request.method} {request.url.path}" if exc.status_code == 404 else str(exc.detail)
    return error_response(ApiError(exc.status_code, message, code=code))


def _reply_error(reply: WorkerReply) -> ApiError:
    status, error_type = _OUTCOME_STATUS.get(reply.outcome, (500, "server_error"))
    headers = {"X-Steps-Done": str(reply.steps_done)}
    if reply.outcome in ("deadline_exceeded", "shed") and reply.phase:
        headers["X-Deadline-Phase"] = reply.phase
    return ApiError(
        status, reply.message or reply.outcome, code=reply.code or reply.outcome, type=error_type,
        headers=headers, param="size" if reply.code == "exceeds_memory_budget" else None,
    )


class JobProgress:
    """What the ingress has heard of a job from its worker: whether its pipeline call started, and
    how many steps it had done — so a deadline answered here names the phase the job was really in."""

    def __init__(self) -> None:
        self.started = False
        self.step = 0
        self.steps = 0

    def heard(self, event: WorkerEvent) -> None:
        self.started = True
        self.step, self.steps = max(self.step, event.step), event.steps

    def late_reply(self, waited_s: float) -> WorkerReply:
        if self.started:
            return WorkerReply(
                "deadline_exceeded", phase="running", steps_done=self.step, steps_requested=self.steps,
                message=f"deadline passed after {waited_s:.2f}s, while running (step {self.step} of {self.steps})",
            )
        return WorkerReply("deadline_exceeded", phase="queued",
                           message=f"deadline passed after {waited_s:.2f}s waiting for a worker")


async def _follow(response: Any, progress: JobProgress) -> WorkerReply:
    """Read a job's event stream to its reply."""
    async for item in response:
        if isinstance(item, WorkerReply):
            return item
        progress.heard(item)
    raise RuntimeError("the worker's stream ended without a reply")


def _timing_headers(reply: WorkerReply) -> dict[str, str]:
    """Where the time went, for benchmarks: queue wait vs service, and who served it."""
    return {
        "X-Queue-Wait-Seconds": f"{reply.queue_wait_s:.4f}",
        "X-Service-Time-Seconds": f"{reply.service_time_s:.4f}",
        "X-Batch-Images": str(reply.batch_images),
        "X-Steps-Done": str(reply.steps_done),
        "X-Replica-Id": reply.replica_id,
    }


@api.exception_handler(Exception)
async def _unexpected_error(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unexpected error on %s %s", request.method, request.url.path)
    return error_response(ApiError(500, f"internal error: {type(exc).__name__}", code="error", type="server_error"))


@serve.deployment(name="Ingress", max_ongoing_requests=1000)
@serve.ingress(api)
class Ingress:
    def __init__(self, settings: dict[str, Any], worker: DeploymentHandle) -> None:
        self.settings = AppSettings.model_validate(settings)
        self.worker = worker
        self.worker_events = worker.options(stream=True)  # progress events, then the reply
        keys = load_api_keys(self.settings.auth)
        refuse_open_network(keys, proxy_bind_host(), self.settings.auth)
        self.auth = Authorizer(keys)
        self.app_name = serve.get_replica_context().app_name
        self.recorder = MetricsRecorder(self.app_name)
        d = self.settings.deadlines
        self.deadlines = DeadlinePolicy(d.default_timeout_s, d.max_timeout_s, d.proxy_guard_s)
        self._drain = DrainRate(self.settings.queue.drain_window_s)
        self._outstanding = 0
        self._memory: MemoryModel | None = None  # learnt from worker replies
        self.scaling: ScalingLoop | None = None
        if self.settings.autoscaling.enabled:
            fleet = ServeFleet(self.app_name, WORKER_DEPLOYMENT)
            self.scaling = ScalingLoop(self.settings.autoscaling, fleet, initial_target=-1,
                                       deployment_name=f"{self.app_name}/{WORKER_DEPLOYMENT}")
            self._start_scaling()
        if not keys:
            log.warning("no API keys set: the API is open to anyone who can reach this address")

    def _start_scaling(self) -> None:
        """Start the scaling loop on this replica's event loop (at construction when one runs)."""
        if self.scaling is not None:
            try:
                self.scaling.start()
            except RuntimeError:  # no running loop yet: the first request or health check starts it
                pass

    async def check_health(self) -> None:
        self._start_scaling()

    def _authorize(self, request: Request) -> str | None:
        return self.auth.key_of(request)

    def exposure(self) -> dict[str, Any]:
        """What this replica enforces (the launcher reports it; its own environment may differ)."""
        return {"keys_required": self.auth.required, "bind_host": proxy_bind_host()}

    @api.get("/openapi.json", include_in_schema=False)
    async def openapi_schema(self, request: Request) -> JSONResponse:
        self._authorize(request)
        return JSONResponse(api.openapi())

    @api.get("/docs", include_in_schema=False)
    async def swagger_docs(self, request: Request) -> Response:
        self._authorize(request)
        return get_swagger_ui_html(openapi_url="/openapi.json", title="sdserve API")

    @api.get("/redoc", include_in_schema=False)
    async def redoc_docs(self, request: Request) -> Response:
        self._authorize(request)
        return get_redoc_html(openapi_url="/openapi.json", title="sdserve API")

    @api.get("/healthz")
    async def healthz(self) -> dict[str, str]:
        return {"status": "ok"}

    @api.get("/v1/models")
    async def models(self, request: Request) -> dict[str, Any]:
        self._authorize(request)
        return {
            "object": "list",
            "data": [{"id": self.settings.model.name, "object": "model", "owned_by": "sdserve"}],
        }

    @api.get("/v1/scheduler")
    async def scheduler(self, request: Request) -> dict[str, Any]:
        """The autoscaler's latest decisions and their reasons."""
        self._authorize(request)
        return await read_decisions()

    @api.get("/metrics")
    async def prometheus_metrics(self, request: Request) -> Response:
        """Prometheus text format: every request's outcome and timings, the workers' measurements,
        and the autoscaler's last decision (see serve/metrics.py). Needs the key when keys are set."""
        self._authorize(request)
        body = self.recorder.render(self._outstanding, await read_decisions(limit=0))
        return Response(body, media_type=CONTENT_TYPE_LATEST)

    @api.post("/v1/images/generations")
    async def generations(self, request: Request) -> JSONResponse:
        started = time.monotonic()
        try:
            self._authorize(request)
            refuse_disconnect_override(request)
            body = parse_body(await read_body(request, self.settings.limits))
            generation = to_generation_request(body, self.settings.limits, self.settings.model.name)
            self._check_memory(generation)
            job = self._job(generation, body.timeout_s, request)
        except ApiError as error:
            self._finish("invalid", "", started, code=error.code, status=error.status)
            raise error
        reply = await self._call_worker(job, started)
        if reply.memory is not None:
            self._memory = MemoryModel(**reply.memory)
        self.recorder.reply(reply)
        error = _reply_error(reply) if reply.outcome != "ok" else None
        self._finish(reply.outcome, reply.phase, started, job=job, reply=reply,
                     status=error.status if error else 200, code=error.code if error else "")
        if error is not None:
            raise error
        return JSONResponse(
            {
                "created": int(time.time()),
                "data": [{"b64_json": base64.b64encode(png).decode()} for png in reply.images],
            },
            headers={**_timing_headers(reply), "X-Model": self.settings.model.name},
        )

    def _finish(
        self, outcome: str, phase: str, started: float, *, status: int, code: str = "",
        job: WorkerJob | None = None, reply: WorkerReply | None = None,
    ) -> None:
        """Count the request's one outcome and write its one structured log line."""
        latency = time.monotonic() - started
        self.recorder.request(outcome, phase, latency)
        request = job.request if job else None
        line = {
            "event": "sdserve_request",
            "request_id": _get_serve_request_context().request_id,
            "outcome": outcome, "phase": phase, "status": status, "code": code,
            "latency_s": round(latency, 4),
            "queue_wait_s": round(reply.queue_wait_s, 4) if reply else None,
            "service_time_s": round(reply.service_time_s, 4) if reply else None,
            "steps_done": reply.steps_done if reply else None,
            "steps_requested": request.num_inference_steps if request else None,
            "size": f"{request.width}x{request.height}" if request else None,
            "n": request.n if request else None,
            "replica_id": reply.replica_id if reply else None,
        }
        log.info(json.dumps(line))

    def _check_memory(self, generation: GenerationRequest) -> None:
        """Refuse before queueing what can never fit, once a worker has told us its budget."""
        model, g = self._memory, generation
        if model is not None and not model.fits(g.width, g.height, g.n):
            raise ApiError(
                422, largest_that_fits(model, g.width, g.height, g.n),
                code="exceeds_memory_budget", param="size",
            )

    def _job(self, generation: GenerationRequest, body_timeout: float | None, request: Request) -> WorkerJob:
        try:
            timeout_s, source = resolve_timeout(
                body_timeout, request.headers.get("x-request-timeout-seconds"), self.deadlines
            )
        except TimeoutError422 as error:
            raise ApiError(422, str(error), code="invalid_value", param=error.param) from None
        accepted_at = time.time()
        return WorkerJob(
            request=generation,
            request_id=_get_serve_request_context().request_id,
            accepted_at=accepted_at,
            deadline=absolute_deadline(accepted_at, timeout_s, source, self.deadlines),
        )

    async def _call_worker(self, job: WorkerJob, started: float) -> WorkerReply:
        """Forward a job; answer for it ourselves if it never reaches a worker in time.

        The worker enforces the deadline at every step and normally replies first; the ingress
        timer (deadline + slack) catches a job still waiting for a worker slot, and cancelling the
        call removes it from Ray's queue, so it never reaches the pipeline. If the replica running
        it dies (its node is lost), the job is retried once on another replica while time is left
        (generation is seeded, so a retry gives the same image); otherwise it fails clearly.
        """
        assert job.deadline is not None
        self._outstanding += 1
        if self.scaling is not None:
            self._start_scaling()
            r = job.request
            self.scaling.accepted(job.job_id, PendingJob(job.accepted_at, job.deadline, r.n,
                                                         r.num_inference_steps, r.width * r.height))
        progress = JobProgress()
        try:
            for attempt in (1, 2):
                response = self.worker_events.generate_events.remote(job)
                try:
                    wait_s = max(0.0, job.deadline - time.time()) + self.settings.deadlines.ingress_slack_s
                    reply = await asyncio.wait_for(_follow(response, progress), wait_s)
                    self._drain.completed(time.monotonic())
                    if self.scaling is not None and reply.outcome == "ok":
                        self.scaling.replied(reply.service_time_s, reply.batch_images, reply.steps_done,
                                             job.request.width * job.request.height,
                                             reply.replica_cold_start_s)
                    return reply
                except RayActorError as lost:
                    if attempt == 2 or time.time() >= job.deadline:
                        return WorkerReply(
                            "error", code="replica_lost", phase="running" if progress.started else "queued",
                            steps_done=progress.step,
                            message=f"the worker replica serving this request was lost: {type(lost).__name__}",
                        )
                    log.warning("worker replica lost for %s (%s); retrying once", job.request_id, lost)
                    progress = JobProgress()
            raise AssertionError("unreachable")
        except asyncio.TimeoutError:
            response.cancel()
            return progress.late_reply(time.time() - job.accepted_at)
        except BackPressureError as error:
            overloaded = self._overloaded(error)
            self._finish("overloaded", "queued", started, status=503, code="overloaded", job=job)
            raise overloaded from None
        except asyncio.CancelledError:  # the client went away: stop the work wherever it is
            response.cancel()
            self._finish("cancelled", "", started, status=499, job=job)
            raise
        finally:
            self._outstanding -= 1
            if self.scaling is not None:
                self.scaling.answered(job.job_id)

    def _overloaded(self, error: BackPressureError) -> ApiError:
        queued = max(error.args[0] if error.args else 0, self._outstanding)
        retry_after = retry_after_s(queued, self._drain.per_second(time.monotonic()), None)
        return ApiError(
            503, f"overloaded: {queued} requests queued; retry in about {retry_after}s",
            code="overloaded", type="server_error", headers={"Retry-After": str(retry_after)},
        )

