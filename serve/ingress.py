"""The HTTP ingress deployment: OpenAI-shaped API, validation, auth, request ids.

Request ids: Ray's proxy already reads the client's ``X-Request-Id`` (or mints one), uses it as the
Serve request id and sets it on every response, 404s included; the ingress reuses that id.

It does the cheap work (parse, validate, authorize) so that only well-formed requests ever take a
worker slot, then forwards one :class:`WorkerJob` to the worker deployment and maps the worker's
outcome to one documented status code.
"""

import asyncio
import base64
import concurrent.futures
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST
from ray import serve
from ray.exceptions import RayActorError, TaskCancelledError
from ray.serve.context import _get_serve_request_context
from ray.serve.exceptions import BackPressureError
from ray.serve.handle import DeploymentHandle
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from models.request import GenerationRequest
from scheduler.deadlines import DeadlinePolicy, TimeoutError422, absolute_deadline, resolve_timeout
from scheduler.drain import DrainRate, retry_after_s
from scheduler.memory import MemoryModel, largest_that_fits
from scheduler.collector import PendingJob
from scheduler.fair_share import FairShare
from scheduler.outcomes import CANCELLED, ERROR
from serve.admission import (Authorizer, load_api_keys, proxy_bind_host, read_body, refuse_disconnect_override,
                             refuse_open_network)
from serve.control import ScalingLoop, ServeFleet
from serve.decision_log import read_decisions
from serve.metrics import MetricsRecorder
from serve.openai_api import ApiError, ImageGenerationBody, parse_body, to_generation_request
from serve.protocol import WorkerEvent, WorkerJob, WorkerReply
from serve.replies import (JobProgress, admission_outcome, client_address, ewma, follow, reply_error,
                           request_log_line, timing_headers)
from serve.settings import AppSettings
from serve.streaming import StreamFormat, relay

log = logging.getLogger("ray.serve")  # Ray writes it to the replica's log file

WORKER_DEPLOYMENT = "DiffusionWorker"
STATIC = Path(__file__).resolve().parent / "static"
#: How a client that went away shows up: asyncio's cancellation, Starlette's disconnect while the body
#: is read, or the proxy's cancelled receive task surfacing through Ray (a ``TaskCancelledError``,
#: possibly wrapped in a ``RayTaskError``, or ``concurrent.futures.CancelledError``): all ``cancelled``.
CLIENT_GONE = (asyncio.CancelledError, ClientDisconnect, concurrent.futures.CancelledError, TaskCancelledError)
PAGE_ASSETS = {"app.js": "text/javascript", "style.css": "text/css"}
# The schema and its pages are served by routes below that check the key like every other route.
api = FastAPI(title="sdserve", description="Stable Diffusion serving on Ray Serve",
              docs_url=None, redoc_url=None, openapi_url=None)


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


@api.exception_handler(Exception)
async def _unexpected_error(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unexpected error on %s %s", request.method, request.url.path)
    return error_response(ApiError(500, f"internal error: {type(exc).__name__}", code="error", type="server_error"))


@api.get("/", include_in_schema=False)
async def page() -> FileResponse:
    """The web page (no key needed to load it; every API call it makes sends the key)."""
    return FileResponse(STATIC / "index.html", media_type="text/html")


@api.get("/ui/{name}", include_in_schema=False)
async def page_asset(name: str) -> FileResponse:
    if name not in PAGE_ASSETS:
        raise ApiError(404, f"no route GET /ui/{name}", code="not_found")
    return FileResponse(STATIC / name, media_type=PAGE_ASSETS[name])


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
        self._service_s: float | None = None  # mean service time the workers reported (Retry-After)
        self.fair = FairShare(self.settings.queue.max_outstanding_per_client)
        self._cold_start_s: float | None = None  # last cold start a worker replica reported
        self.fleet = ServeFleet(self.app_name, WORKER_DEPLOYMENT)
        self._memory: MemoryModel | None = None  # learnt from worker replies
        self.scaling: ScalingLoop | None = None
        if self.settings.autoscaling.enabled:
            self.scaling = ScalingLoop(self.settings.autoscaling, self.fleet, initial_target=-1,
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

    @api.get("/readyz")
    async def readyz(self) -> JSONResponse:
        """Readiness, unlike ``/healthz`` (liveness): 200 once a request would be served — a worker
        replica is running, or the fleet is meant to be at zero (then a request cold-starts one,
        which ``cold_start_expected`` and ``expected_wait_s`` say); 503 while the floor of workers
        is still starting. Open like ``/healthz``: probes carry no key, and it names no secret."""
        fleet = await self.fleet.status()
        if self.scaling is not None:
            fleet["minimum"] = self.scaling.config.min_replicas
        ready = fleet["running"] >= min(1, fleet["minimum"])
        body = {"ready": ready, "workers": fleet, "at_zero": fleet["running"] == 0,
                "cold_start_expected": fleet["running"] == 0, "outstanding": self._outstanding,
                "expected_wait_s": self._expected_wait_s(fleet["running"])}
        return JSONResponse(body, status_code=200 if ready else 503,
                            headers=None if ready else {"Retry-After": str(max(1, round(body["expected_wait_s"] or 1)))})

    def _expected_wait_s(self, running: int) -> float | None:
        """A new request's wait before its pipeline starts: a cold start at zero, else the work
        ahead of it shared by the running replicas (None until anything was measured)."""
        if running == 0:
            return self._cold_start_s
        if self._service_s is None:
            return None
        return round(self._outstanding * self._service_s / running, 3)

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

    @api.post("/v1/images/generations", openapi_extra={"requestBody": {"required": True, "content": {
        "application/json": {"schema": ImageGenerationBody.model_json_schema()}}}})
    async def generations(self, request: Request) -> JSONResponse:
        """Every request ends here in exactly one counted and logged outcome, whatever path it
        takes: refused at admission, answered by a worker, given up at its deadline, abandoned by
        its client (even while its body is still arriving), or failed by something unexpected."""
        started = time.monotonic()
        job: WorkerJob | None = None
        reply: WorkerReply | None = None
        try:
            client = self._authorize(request) or client_address(request)
            refuse_disconnect_override(request)
            body = parse_body(await read_body(request, self.settings.limits))
            generation = to_generation_request(body, self.settings.limits, self.settings.model.name)
            self._check_memory(generation)
            job = self._job(generation, body.timeout_s, request)
            if body.stream:  # from here the stream answers and counts it (status 200, then events)
                return StreamingResponse(
                    self._stream(job, client, started, StreamFormat(generation, body.quality, body.background)),
                    media_type="text/event-stream", headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
            reply = await self._call_worker_fairly(job, client)
            if reply.outcome != "ok":
                raise reply_error(reply)
        except ApiError as error:
            outcome = reply.outcome if reply is not None else admission_outcome(error.status)
            self._finish(outcome, reply.phase if reply else "", started, status=error.status,
                         code=error.code, job=job, reply=reply)
            raise
        except CLIENT_GONE:  # the client went away first
            self._finish(CANCELLED, "", started, status=499, job=job)
            raise
        except Exception as exc:  # noqa: BLE001 - unexpected: answered, counted and logged once
            log.exception("request %s failed unexpectedly", _get_serve_request_context().request_id)
            self._finish(ERROR, "", started, status=500, code="internal_error", job=job)
            raise ApiError(500, f"internal error: {type(exc).__name__}: {exc}", code="internal_error",
                           type="server_error") from None
        self._finish("ok", reply.phase, started, job=job, reply=reply, status=200)
        return JSONResponse(
            {
                "created": int(time.time()),
                "data": [{"b64_json": base64.b64encode(png).decode()} for png in reply.images],
            },
            headers={**timing_headers(reply), "X-Model": self.settings.model.name},
        )

    async def _stream(self, job: WorkerJob, client: str, started: float, fmt: StreamFormat) -> AsyncIterator[bytes]:
        """The request as server-sent events: queued, started, progress and previews as the worker
        reports them, then the images — or an ``error`` event. Counted and logged once, here."""
        events: asyncio.Queue[Any] = asyncio.Queue()
        work = asyncio.ensure_future(self._call_worker_fairly(job, client, events.put_nowait))
        reply: WorkerReply | None = None
        try:
            yield fmt.queued(max(0, self._outstanding - 1), self._expected_wait_s(self._running_hint()))
            async for chunk in relay(events, work, fmt):
                yield chunk
            reply = work.result()
            if reply.outcome != "ok":
                raise reply_error(reply)
            for chunk in fmt.completed(reply):
                yield chunk
            self._finish("ok", reply.phase, started, job=job, reply=reply, status=200)
        except ApiError as error:
            outcome = reply.outcome if reply is not None else admission_outcome(error.status)
            self._finish(outcome, reply.phase if reply else "", started, status=error.status, code=error.code,
                         job=job, reply=reply)
            yield fmt.error(error)
        except CLIENT_GONE:  # the client closed the stream: stop the work within a step
            work.cancel()
            self._finish(CANCELLED, "", started, status=499, job=job)
            raise
        except Exception as exc:  # noqa: BLE001 - unexpected: reported in the stream, counted once
            log.exception("stream %s failed unexpectedly", job.request_id)
            self._finish(ERROR, "", started, status=500, code="internal_error", job=job)
            yield fmt.error(ApiError(500, f"internal error: {type(exc).__name__}: {exc}", code="internal_error",
                                     type="server_error"))

    def _running_hint(self) -> int:
        """Running worker replicas as the scaling loop last read them (1 when unknown)."""
        return self.scaling.running if self.scaling is not None else 1

    async def _call_worker_fairly(self, job: WorkerJob, client: str,
                                  on_event: Callable[[WorkerEvent], None] | None = None) -> WorkerReply:
        """Forward ``job`` unless ``client`` already holds its share of the queue (429)."""
        if not self.fair.try_take(client):
            held = self.fair.held(client)
            retry_after = retry_after_s(held, self._drain.per_second(time.monotonic()), self._service_s)
            raise ApiError(
                429, f"this client already has {held} requests outstanding (queue.max_outstanding_per_client); "
                f"retry in about {retry_after}s", code="rate_limited", type="rate_limit_error",
                headers={"Retry-After": str(retry_after)},
            )
        try:
            return await self._call_worker(job, on_event)
        finally:
            self.fair.give_back(client)

    def _finish(
        self, outcome: str, phase: str, started: float, *, status: int, code: str = "",
        job: WorkerJob | None = None, reply: WorkerReply | None = None,
    ) -> None:
        """Count the request's one outcome and write its one structured log line."""
        latency = time.monotonic() - started
        self.recorder.request(outcome, phase, latency)
        line = request_log_line(_get_serve_request_context().request_id, outcome, phase, status, code, latency,
                                job.request if job else None, reply)
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

    async def _call_worker(self, job: WorkerJob, on_event: Callable[[WorkerEvent], None] | None = None
                           ) -> WorkerReply:
        """The job's reply, streamed or not, learnt from once: metrics, memory model, timings."""
        reply = await self._forward(job, on_event)
        if reply.memory is not None:
            self._memory = MemoryModel(**reply.memory)
        self.recorder.reply(reply)
        return reply

    async def _forward(self, job: WorkerJob, on_event: Callable[[WorkerEvent], None] | None) -> WorkerReply:
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
                    reply = await asyncio.wait_for(follow(response, progress, on_event), wait_s)
                    self._drain.completed(time.monotonic())
                    if reply.outcome == "ok":
                        self._service_s = ewma(self._service_s, reply.service_time_s)
                    if reply.replica_cold_start_s is not None:
                        self._cold_start_s = reply.replica_cold_start_s
                    if self.scaling is not None and reply.outcome == "ok":
                        self.scaling.replied(reply.service_time_s, reply.batch_images, reply.steps_done,
                                             job.request.width * job.request.height,
                                             reply.replica_cold_start_s, reply.effective_capacity)
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
            raise self._overloaded(error) from None
        except asyncio.CancelledError:  # the client went away: stop the work wherever it is
            response.cancel()
            raise
        finally:
            self._outstanding -= 1
            if self.scaling is not None:
                self.scaling.answered(job.job_id)

    def _overloaded(self, error: BackPressureError) -> ApiError:
        queued = max(error.args[0] if error.args else 0, self._outstanding)
        retry_after = retry_after_s(queued, self._drain.per_second(time.monotonic()), self._service_s)
        return ApiError(
            503, f"overloaded: {queued} requests queued; retry in about {retry_after}s",
            code="overloaded", type="server_error", headers={"Retry-After": str(retry_after)},
        )

