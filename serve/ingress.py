"""The HTTP ingress deployment: the OpenAI-shaped routes.

Request ids: Ray's proxy already reads the client's ``X-Request-Id`` (or mints one), uses it as the
Serve request id and sets it on every response, 404s included; the ingress reuses that id.

It does the cheap work (parse, validate, authorize) so that only well-formed requests ever take a
worker slot; the request's life from there is :class:`serve.lifecycle.RequestLifecycle`, what the
replies teach is :class:`serve.learning.ReplyLearner`, and every replica reports what it sees to the
application's one scaling loop (:class:`serve.scaler.ScalingClient`).
"""

import asyncio
import base64
import concurrent.futures
import logging
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST
from ray import serve
from ray.exceptions import TaskCancelledError
from ray.serve.context import _get_serve_request_context
from ray.serve.handle import DeploymentHandle
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from models.request import GenerationRequest
from scheduler.autoscaling import AutoscalerConfig
from scheduler.outcomes import Outcome, Phase, refused
from serve.admission import (
    Authorizer,
    load_api_keys,
    proxy_bind_host,
    read_body,
    refuse_disconnect_override,
    refuse_open_network,
)
from serve.dispatcher import Dispatcher, tenant_of
from serve.edits_api import ImageEditBody, parse_edit
from serve.fleet import ServeFleet
from serve.learning import ReplyLearner
from serve.lifecycle import RequestLifecycle
from serve.metrics import MetricsRecorder
from serve.openai_api import (
    ApiError,
    ImageGenerationBody,
    parse_body,
    to_generation_request,
)
from serve.prefetch import Prefetcher, prefetches
from serve.protocol import WorkerReply
from serve.replies import client_address, reply_error, timing_headers
from serve.scaler import ScalingClient
from serve.settings import (
    INGRESS_DEPLOYMENT,
    WORKER_DEPLOYMENT,
    AppSettings,
    live_settings,
)
from serve.streaming import StreamFormat, stream_request

log = logging.getLogger("ray.serve")  # Ray writes it to the replica's log file

STATIC = Path(__file__).resolve().parent / "static"
#: How a client that went away shows up: asyncio's cancellation, Starlette's disconnect while the body
#: is read, or the proxy's cancelled receive task surfacing through Ray (a ``TaskCancelledError``,
#: possibly wrapped in a ``RayTaskError``, or ``concurrent.futures.CancelledError``): all ``cancelled``.
CLIENT_GONE = (asyncio.CancelledError, ClientDisconnect, concurrent.futures.CancelledError, TaskCancelledError)
PAGE_ASSETS = {"app.js": "text/javascript", "style.css": "text/css"}
# The schema and its pages are served by routes below that check the key like every other route.
api = FastAPI(title="sdserve", description="Stable Diffusion serving on Ray Serve",
              docs_url=None, redoc_url=None, openapi_url=None)
def _inlined(schema: dict[str, Any]) -> dict[str, Any]:
    """A pydantic JSON schema with its ``$defs`` written in place: inside an OpenAPI operation a
    ``#/$defs/...`` reference would point at the document's root, where nothing is."""
    defs = schema.get("$defs", {})

    def walk(node: Any) -> Any:
        if isinstance(node, dict):
            if "$ref" in node:
                return walk(defs[node["$ref"].rsplit("/", 1)[-1]])
            return {key: walk(value) for key, value in node.items() if key != "$defs"}
        if isinstance(node, list):
            return [walk(value) for value in node]
        return node

    return walk(schema)


GENERATION_SCHEMA = {"requestBody": {"required": True, "content": {
    "application/json": {"schema": _inlined(ImageGenerationBody.model_json_schema())}}}}


def _edit_schema() -> dict[str, Any]:
    """The edit form: the image and mask as files, ``loras`` as JSON text, the rest as fields."""
    schema = _inlined(ImageEditBody.model_json_schema())
    files = {"image": {"type": "string", "format": "binary"}, "mask": {"type": "string", "format": "binary"}}
    schema["properties"] = {**files, **schema["properties"],
                            "loras": {"type": "string", "description": 'JSON text: [{"id": ..., "scale": ...}]'}}
    schema["required"] = ["image", "prompt"]
    return {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": schema}}}}


EDIT_SCHEMA = _edit_schema()


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


def _images(reply: WorkerReply, model: str) -> JSONResponse:
    """The OpenAI images reply, with where the time went in headers."""
    return JSONResponse({"created": int(time.time()),
                         "data": [{"b64_json": base64.b64encode(png).decode()} for png in reply.images]},
                        headers={**timing_headers(reply), "X-Model": model})


@serve.deployment(name=INGRESS_DEPLOYMENT, max_ongoing_requests=1000)
@serve.ingress(api)
class Ingress:
    def __init__(self, settings: dict[str, Any], worker: DeploymentHandle) -> None:
        self.args, initial = settings, AppSettings.model_validate(settings)
        app_name = serve.get_replica_context().app_name
        self.recorder = MetricsRecorder(app_name)
        self.learner = ReplyLearner(self.recorder, initial.queue.drain_window_s)
        self.lifecycle = RequestLifecycle(worker.options(stream=True), self.learner, self.recorder)
        self.fleet = ServeFleet(app_name, WORKER_DEPLOYMENT)
        if initial.queue.dispatch:
            self.lifecycle.dispatcher = Dispatcher(self.fleet.pool)
        self.scaling: ScalingClient | None = None
        self.settings: AppSettings | None = None
        self.prefetcher = Prefetcher(initial, app_name) if prefetches(initial) else None
        if self.lifecycle.dispatcher is not None and self.prefetcher is not None:
            dispatcher = self.lifecycle.dispatcher
            dispatcher.on_unheld, dispatcher.on_queued = self.prefetcher, self.prefetcher.arrived
            dispatcher.node_memory, self.prefetcher.on_device = self.prefetcher.in_memory, dispatcher.checkpoints_on_devices
            dispatcher.reading, self.prefetcher.on_read_ended = self.prefetcher.reading, dispatcher.read_ended
        self._apply(initial, app_name)

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        """The deployment's ``user_config``: live settings apply without a restart (the scaling
        loop keeps what it learnt)."""
        self._apply(live_settings(self.args, user_config), serve.get_replica_context().app_name)
        log.info("ingress reconfigured: %s", user_config)

    def _apply(self, settings: AppSettings, app_name: str) -> None:
        keys = load_api_keys(settings.auth)
        refuse_open_network(keys, proxy_bind_host(), settings.auth)
        if not keys:
            log.warning("no API keys set: the API is open to anyone who can reach this address")
        if self.settings is not None and settings.memory != self.settings.memory:
            self.learner.memory = None  # another budget: wait for a replica's new model
        if self.settings is not None and settings.simulation != self.settings.simulation:
            self.learner.forget_speed()
        self.settings, self.auth = settings, Authorizer(keys)
        self.lifecycle.configure(settings)
        loop = settings.autoscaling
        if loop.enabled and self.scaling is None:
            self.scaling = ScalingClient(app_name, loop)
        elif loop.enabled:
            self.scaling.configure(loop)
        self.learner.scaling = self.lifecycle.scaling = self.scaling
        dispatcher = self.lifecycle.dispatcher
        if self.scaling is not None and dispatcher is not None:  # each request's load counts (many models)
            counts_loads = loop.per_request_loads and settings.queue.model_aware and bool(settings.model.catalog)
            dispatcher.on_sent = self.scaling.sent if counts_loads else None
            self.scaling.tiers = dispatcher.queued_tiers if counts_loads else None
        self._start_background()

    def _start_background(self) -> None:
        """Start the scaling loop, the dispatcher's replica reads and the pre-warm on this replica's
        event loop (at construction when one runs)."""
        for part in (self.scaling, self.lifecycle.dispatcher, self.prefetcher):
            if part is not None:
                try:
                    part.start()
                except RuntimeError:  # no running loop yet: the first request or health check starts it
                    pass

    async def check_health(self) -> None:
        self._start_background()

    async def preload_for(self, replica_id: str) -> str | None:
        """Asked by a worker replica while it starts: the checkpoint to load instead of the default
        (None: no queue here to read)."""
        dispatcher = self.lifecycle.dispatcher
        if dispatcher is None or not self.settings.queue.model_aware:
            return None
        choice = dispatcher.preload_for(replica_id, self.settings.model.name)
        log.info("worker %s starting: preloads %s (%d queued)", replica_id, choice, dispatcher.queued)
        return choice

    def exposure(self) -> dict[str, Any]:
        """What this replica enforces (the launcher reports it; its own environment may differ)."""
        return {"keys_required": self.auth.required, "bind_host": proxy_bind_host()}

    @api.get("/openapi.json", include_in_schema=False)
    async def openapi_schema(self, request: Request) -> JSONResponse:
        self.auth.key_of(request)
        return JSONResponse(api.openapi())

    @api.get("/docs", include_in_schema=False)
    async def swagger_docs(self, request: Request) -> Response:
        self.auth.key_of(request)
        return get_swagger_ui_html(openapi_url="/openapi.json", title="sdserve API")

    @api.get("/redoc", include_in_schema=False)
    async def redoc_docs(self, request: Request) -> Response:
        self.auth.key_of(request)
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
        status = await self.fleet.status()
        counts, minimum = status.counts, status.minimum
        if self.scaling is not None and minimum is not None:
            minimum = AutoscalerConfig(**self.settings.autoscaling.policy).min_replicas
        ready = minimum is not None and counts.running >= min(1, minimum)  # not deployed yet: not ready
        wait = self.learner.expected_wait_s(counts.running)
        body = {"ready": ready, "workers": {"running": counts.running, "starting": counts.starting, "minimum": minimum},
                "at_zero": counts.running == 0, "cold_start_expected": counts.running == 0,
                "outstanding": self.learner.outstanding, "expected_wait_s": wait}
        return JSONResponse(body, status_code=200 if ready else 503,
                            headers=None if ready else {"Retry-After": str(max(1, round(wait or 1)))})

    @api.get("/v1/models")
    async def models(self, request: Request) -> dict[str, Any]:
        self.auth.key_of(request)
        entries = [(name, "checkpoint") for name in self.settings.model.served]
        entries += [(name, "lora") for name in self.settings.model.loras]
        return {"object": "list", "data": [{"id": name, "object": "model", "owned_by": "sdserve", "kind": kind}
                                           for name, kind in entries]}

    @api.get("/v1/scheduler")
    async def scheduler(self, request: Request) -> dict[str, Any]:
        """The autoscaler's latest decisions and their reasons, which replica holds which
        checkpoints (on its device, in host memory) as the dispatcher knows them, and the recent
        replicas' own cold starts in the order they first replied."""
        self.auth.key_of(request)
        body = await self.scaling.decisions() if self.scaling else {"latest": {}, "recent": []}
        dispatcher = self.lifecycle.dispatcher
        return {**body, "replicas": dispatcher.residency() if dispatcher is not None else {},
                "cold_starts": self.learner.recent_cold_starts()}

    @api.get("/metrics")
    async def prometheus_metrics(self, request: Request) -> Response:
        """Prometheus text format: every request's outcome and timings, the workers' measurements,
        and the autoscaler's last decision (see serve/metrics.py). Needs the key when keys are set."""
        self.auth.key_of(request)
        decisions = await self.scaling.decisions(limit=0) if self.scaling else {"latest": {}}
        return Response(self.recorder.render(self.learner.outstanding, decisions), media_type=CONTENT_TYPE_LATEST)

    @api.post("/v1/images/generations", openapi_extra=GENERATION_SCHEMA)
    async def generations(self, request: Request) -> Response:
        """An image from a prompt (JSON body)."""
        return await self._serve(request, self._parse_generation, "text")

    @api.post("/v1/images/edits", openapi_extra=EDIT_SCHEMA)
    async def edits(self, request: Request) -> Response:
        """An edit of an image (multipart form): image-to-image, or inpainting with a mask."""
        return await self._serve(request, self._parse_edit, "edit")

    async def _parse_generation(self, request: Request) -> tuple[ImageGenerationBody, GenerationRequest]:
        body = parse_body(await read_body(request, self.settings.limits))
        return body, to_generation_request(body, self.settings.limits, list(self.settings.model.served),
                                           self.settings.model.loras)

    async def _parse_edit(self, request: Request) -> tuple[ImageGenerationBody, GenerationRequest]:
        return await parse_edit(request, self.settings.limits, list(self.settings.model.served),
                                self.settings.model.loras)

    async def _serve(self, request: Request, parse: Callable[[Request], Awaitable[tuple[
            ImageGenerationBody, GenerationRequest]]], route_kind: str) -> Response:
        """Every request ends here in exactly one counted and logged outcome, whatever path it
        takes: refused at admission, answered by a worker, given up at its deadline, abandoned by
        its client (even while its body is still arriving), or failed by something unexpected."""
        started, request_id = time.monotonic(), _get_serve_request_context().request_id
        lifecycle, job, reply = self.lifecycle, None, None
        try:
            client = tenant_of(self.auth.key_of(request), client_address(request))
            refuse_disconnect_override(request)
            body, generation = await parse(request)
            self.learner.check_memory(generation)
            job = lifecycle.job(generation, body.timeout_s, request.headers.get("x-request-timeout-seconds"),
                                request_id, client)
            if body.stream:  # from here the stream answers and counts it (status 200, then events)
                running = self.scaling.running if self.scaling is not None else 1
                queued = StreamFormat.queued(lifecycle.queue_position(job, client),
                                             self.learner.expected_wait_s(running))
                fmt = StreamFormat(generation, body.quality, body.background)
                return StreamingResponse(stream_request(lifecycle, job, client, started, fmt, queued, CLIENT_GONE),
                                         media_type="text/event-stream",
                                         headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
            reply = await lifecycle.call(job, client)
            if reply.outcome != Outcome.OK:
                raise reply_error(reply)
        except ApiError as error:
            outcome = reply.outcome if reply is not None else refused(error.status)
            lifecycle.finish(outcome, started, request_id, status=error.status, code=error.code, kind=route_kind,
                             phase=reply.phase if reply else Phase.NONE, job=job, reply=reply)
            raise
        except CLIENT_GONE:  # the client went away first
            lifecycle.finish(Outcome.CANCELLED, started, request_id, status=499, job=job, kind=route_kind)
            raise
        except Exception as exc:  # noqa: BLE001 - unexpected: answered, counted and logged once
            log.exception("request %s failed unexpectedly", request_id)
            lifecycle.finish(Outcome.ERROR, started, request_id, status=500, code="internal_error", job=job,
                             kind=route_kind)
            raise ApiError(500, f"internal error: {type(exc).__name__}: {exc}", code="internal_error",
                           type="server_error") from None
        lifecycle.finish(Outcome.OK, started, request_id, status=200, phase=reply.phase, job=job, reply=reply)
        return _images(reply, generation.model or self.settings.model.name)
