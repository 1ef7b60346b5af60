"""The load generator: asyncio + httpx, open loop (arrivals never wait for answers) or closed loop.

Every request sent produces exactly one :class:`Record`, whatever happens to it, so the outcome
counts always add up to the number sent.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import httpx

from benchmarks.traces import Arrival
from scheduler.outcomes import Outcome, classify

PATH = "/v1/images/generations"


@dataclass
class Record:
    index: int
    scheduled_s: float  # when the workload wanted it sent (relative to the run start)
    sent_s: float = 0.0
    done_s: float = 0.0
    status: int = 0
    outcome: str = Outcome.ERROR
    code: str = ""
    n: int = 1
    queue_wait_s: float | None = None
    service_time_s: float | None = None
    batch_images: int | None = None
    replica_id: str = ""
    error: str = ""
    model_load: str | None = None  # where its checkpoint came from (X-Model-Load): none, host, disk

    @property
    def latency_s(self) -> float:
        return self.done_s - self.sent_s

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"latency_s": self.latency_s}


class Tracker:
    """Hears about every send and every answer: outstanding count and progress."""

    def __init__(self, on_done: Callable[[Record], None] | None = None) -> None:
        self.outstanding = 0
        self._on_done = on_done

    def sent(self) -> None:
        self.outstanding += 1

    def done(self, record: Record) -> None:
        self.outstanding -= 1
        if self._on_done:
            self._on_done(record)


@dataclass
class RequestTemplate:
    size: str = "512x512"
    steps: int | None = None
    timeout_s: float | None = None
    prompt: str = "a lighthouse on a cliff at dawn, oil painting"
    extra: dict[str, Any] = field(default_factory=dict)
    #: Send each arrival's checkpoint as ``model``, prefixed (a simulated backend serves
    #: ``simulated:NAME``); None: no ``model``, the server's default.
    model_prefix: str | None = None
    #: Send each arrival's LoRA adapters (``id:scale`` each) as ``loras``.
    loras: bool = False

    def body(self, arrival: Arrival, index: int) -> dict[str, Any]:
        body: dict[str, Any] = {"prompt": self.prompt, "size": self.size, "n": arrival.n, "seed": index, **self.extra}
        steps = arrival.steps or self.steps
        if steps:
            body["num_inference_steps"] = steps
        if self.timeout_s:
            body["timeout_s"] = self.timeout_s
        if self.model_prefix is not None and getattr(arrival, "model", ""):
            body["model"] = self.model_prefix + arrival.model
        if self.loras and getattr(arrival, "loras", ()):
            body["loras"] = [{"id": name, "scale": float(scale or 1)}
                             for name, _, scale in (lora.partition(":") for lora in arrival.loras)]
        return body


async def _send(
    client: httpx.AsyncClient, record: Record, body: dict[str, Any], t0: float, tracker: Tracker
) -> None:
    record.sent_s = time.monotonic() - t0
    tracker.sent()
    try:
        response = await client.post(PATH, json=body, headers={"X-Request-Id": f"bench-{record.index}"})
        record.status = response.status_code
        if response.status_code != 200 and "json" in response.headers.get("content-type", ""):
            record.code = str((response.json().get("error") or {}).get("code", ""))
        headers = response.headers
        if "x-service-time-seconds" in headers:
            record.queue_wait_s = float(headers["x-queue-wait-seconds"])
            record.service_time_s = float(headers["x-service-time-seconds"])
            record.batch_images = int(headers["x-batch-images"])
            record.replica_id = headers.get("x-replica-id", "")
            record.model_load = headers.get("x-model-load")
        record.outcome = classify(record.status, record.code)
    except httpx.HTTPError as exc:
        record.outcome, record.error = Outcome.ERROR, f"{type(exc).__name__}: {exc}"
    record.done_s = time.monotonic() - t0
    tracker.done(record)


async def open_loop(
    url: str, arrivals: list[Arrival], template: RequestTemplate,
    tracker: Tracker | None = None, client_timeout_s: float = 900, t0: float | None = None,
) -> list[Record]:
    """Send each arrival at ``t0`` + its time, never waiting for earlier answers."""
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=64)
    tracker = tracker or Tracker()
    records = [Record(i, a.at, n=a.n) for i, a in enumerate(arrivals)]
    async with httpx.AsyncClient(base_url=url, timeout=client_timeout_s, limits=limits) as client:
        t0 = time.monotonic() if t0 is None else t0

        async def one(record: Record, arrival: Arrival) -> None:
            await asyncio.sleep(max(0.0, arrival.at - (time.monotonic() - t0)))
            await _send(client, record, template.body(arrival, record.index), t0, tracker)

        await asyncio.gather(*(one(r, a) for r, a in zip(records, arrivals)))
    return records


async def closed_loop(
    url: str, concurrency: int, requests: int, template: RequestTemplate,
    tracker: Tracker | None = None, client_timeout_s: float = 900, t0: float | None = None,
) -> list[Record]:
    """``concurrency`` clients, each sending its next request when the previous one answers."""
    tracker = tracker or Tracker()
    records: list[Record] = []
    async with httpx.AsyncClient(base_url=url, timeout=client_timeout_s) as client:
        t0 = time.monotonic() if t0 is None else t0

        async def client_loop() -> None:
            while len(records) < requests:
                record = Record(len(records), time.monotonic() - t0)
                records.append(record)
                body = template.body(Arrival(record.scheduled_s), record.index)
                await _send(client, record, body, t0, tracker)

        await asyncio.gather(*(client_loop() for _ in range(concurrency)))
    return records
