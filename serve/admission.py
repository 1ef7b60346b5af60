"""What the ingress checks before a request may queue: who sent it, that its body arrives whole and
in time, and that it does not switch off our protections. No Ray here except reading the proxy's
bind address; each check raises :class:`ApiError` with the OpenAI error shape.
"""

from __future__ import annotations

import asyncio
import hmac
import os
from pathlib import Path

from fastapi import Request

from serve.openai_api import ApiError
from serve.settings import AuthSettings, LimitSettings

LOOPBACK = ("127.0.0.1", "localhost", "::1")
#: Ray's proxy stops watching for client disconnects when a request carries this header set to
#: ``?1`` (``ray/serve/_private/http_util.py``): the work of a client that left would run on.
DISCONNECT_DISABLED_HEADER = "x-request-disconnect-disabled"


def load_api_keys(auth: AuthSettings) -> frozenset[str]:
    """Keys from the environment variable (comma-separated) and the key file (one per line)."""
    keys = {k.strip() for k in os.environ.get(auth.api_keys_env, "").split(",")}
    if auth.api_keys_file:
        keys |= {line.strip() for line in Path(auth.api_keys_file).read_text().splitlines()}
    return frozenset(k for k in keys if k and not k.startswith("#"))


def proxy_bind_host() -> str | None:
    """The address Ray's HTTP proxy binds, from the controller (None when it cannot be read)."""
    try:
        from ray.serve.context import _get_global_client

        return _get_global_client().http_config.host
    except Exception:  # noqa: BLE001 - outside a Serve cluster (unit tests): unknown
        return None


def refuse_open_network(keys: frozenset[str], host: str | None, auth: AuthSettings) -> None:
    """Fail the replica's start, rather than serve an open API on a network address."""
    if keys or host is None or host in LOOPBACK or auth.allow_open_on_network:
        return
    raise RuntimeError(
        f"refusing to serve without API keys on {host} (http_options.host): set keys in the "
        f"{auth.api_keys_env} environment variable (auth.api_keys_env) or a file (auth.api_keys_file), "
        "bind to 127.0.0.1, or set auth.allow_open_on_network: true if something in front authenticates"
    )


class Authorizer:
    """Bearer-key check, constant time per key; open when no key is configured."""

    def __init__(self, keys: frozenset[str]) -> None:
        self.keys = keys

    @property
    def required(self) -> bool:
        return bool(self.keys)

    def key_of(self, request: Request) -> str | None:
        """The request's valid key (None when keys are off); 401 when keys are on and it has none."""
        if not self.keys:
            return None
        scheme, _, key = request.headers.get("authorization", "").partition(" ")
        key = key.strip()
        if scheme.lower() == "bearer":
            for known in self.keys:
                if hmac.compare_digest(key.encode(), known.encode()):
                    return known
        raise ApiError(
            401, "missing or invalid API key: send 'Authorization: Bearer <key>'",
            code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"},
        )


def refuse_disconnect_override(request: Request) -> None:
    """A client may not switch off cancel-on-disconnect for its own request (400, named)."""
    if request.headers.get(DISCONNECT_DISABLED_HEADER) is not None:
        raise ApiError(
            400, f"the {DISCONNECT_DISABLED_HEADER} header is not accepted: a request's work stops "
            "when its client disconnects", code="header_not_allowed", param=DISCONNECT_DISABLED_HEADER,
        )


async def read_body(request: Request, limits: LimitSettings, limit: int | None = None) -> bytes:
    """The whole body, at most ``limit`` bytes (default ``max_body_bytes``; 413, chunked bodies
    included) and within ``body_read_timeout_s`` (408): a slow upload must not hold an ingress slot
    for minutes."""
    limit = limit or limits.max_body_bytes
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise ApiError(413, f"request body over {limit} bytes", code="request_too_large")

    async def receive() -> bytes:
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > limit:
                raise ApiError(413, f"request body over {limit} bytes", code="request_too_large")
        return bytes(body)

    try:
        return await asyncio.wait_for(receive(), limits.body_read_timeout_s)
    except asyncio.TimeoutError:
        raise ApiError(
            408, f"request body not received within {limits.body_read_timeout_s:g}s "
            "(limits.body_read_timeout_s)", code="request_timeout",
        ) from None
