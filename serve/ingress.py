"""The HTTP ingress deployment: OpenAI-shaped API, validation, auth, request ids.

Request ids: Ray's proxy already reads the client's ``X-Request-Id`` (or mints one), uses it as the
Serve request id and sets it on every response, 404s included; the ingress reuses that id.

It does the cheap work (parse, validate, authorize) so that only well-formed requests ever take a
worker slot, then forwards one :class:`WorkerJob` to the worker deployment and maps the worker's
outcome to one documented status code.
"""

import base64
import hmac
import logging
import os
import time
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from ray import serve
from ray.serve.context import _get_serve_request_context
from ray.serve.handle import DeploymentHandle
from starlette.exceptions import HTTPException as StarletteHTTPException

from serve.decision_log import read_decisions
from serve.openai_api import ApiError, parse_body, to_generation_request
from serve.protocol import WorkerJob, WorkerReply
from serve.settings import AppSettings, AuthSettings

log = logging.getLogger("ray.serve")

api = FastAPI(title="sdserve", description="Stable Diffusion serving on Ray Serve")

#: Worker outcome → (HTTP status, error type) for everything that is not "ok".
_OUTCOME_STATUS = {
    "deadline_exceeded": (504, "timeout_error"),
    "shed": (504, "timeout_error"),
    "out_of_memory": (507, "server_error"),
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


def load_api_keys(auth: AuthSettings) -> frozenset[str]:
    """Keys from the environment variable (comma-separated) and the key file (one per line)."""
    keys = {k.strip() for k in os.environ.get(auth.api_keys_env, "").split(",")}
    if auth.api_keys_file:
        keys |= {line.strip() for line in Path(auth.api_keys_file).read_text().splitlines()}
    return frozenset(k for k in keys if k and not k.startswith("#"))


@serve.deployment(name="Ingress", max_ongoing_requests=1000)
@serve.ingress(api)
class Ingress:
    def __init__(self, settings: dict[str, Any], worker: DeploymentHandle) -> None:
        self.settings = AppSettings.model_validate(settings)
        self.worker = worker
        self.api_keys = load_api_keys(self.settings.auth)
        if not self.api_keys:
            log.warning("no API keys set: the API is open to anyone who can reach this address")

    def _authorize(self, request: Request) -> None:
        if not self.api_keys:
            return
        scheme, _, key = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not any(
            hmac.compare_digest(key.strip().encode(), k.encode()) for k in self.api_keys
        ):
            raise ApiError(
                401, "missing or invalid API key: send 'Authorization: Bearer <key>'",
                code="invalid_api_key",
                headers={"WWW-Authenticate": "Bearer"},
            )

    async def _read_body(self, request: Request) -> bytes:
        limit = self.settings.limits.max_body_bytes
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise ApiError(413, f"request body over {limit} bytes", code="request_too_large")
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > limit:
                raise ApiError(413, f"request body over {limit} bytes", code="request_too_large")
        return bytes(body)

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

    @api.post("/v1/images/generations")
    async def generations(self, request: Request) -> JSONResponse:
        self._authorize(request)
        body = parse_body(await self._read_body(request))
        generation = to_generation_request(body, self.settings.limits, self.settings.model.name)
        job = WorkerJob(
            request=generation, request_id=_get_serve_request_context().request_id,
            accepted_at=time.time(),
        )
        reply: WorkerReply = await self.worker.generate.remote(job)
        if reply.outcome != "ok":
            status, error_type = _OUTCOME_STATUS.get(reply.outcome, (500, "server_error"))
            raise ApiError(status, reply.message or reply.outcome, code=reply.outcome, type=error_type)
        return JSONResponse(
            {
                "created": int(time.time()),
                "data": [{"b64_json": base64.b64encode(png).decode()} for png in reply.images],
            },
            headers={**_timing_headers(reply), "X-Model": self.settings.model.name},
        )

