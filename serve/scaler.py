"""One scaling loop per application, however many ingress replicas run: a named Ray actor owns it.

Every ingress replica reports what it sees (requests accepted and answered, replies) to the actor,
in batches every ``autoscaling.interval_s``; the actor runs the :class:`ScalingLoop` over the whole
application's traffic and is the only writer of the worker deployment's target. A named actor is
unique in the cluster, so two ingress replicas — or an old one still draining during an update —
find the same loop. What the loop learnt (idle-time histograms, service and cold-start times) is
saved in Ray's internal key-value store, so a new actor (its node lost, the application redeployed)
starts from it. The actor is detached from the ingress that created it and ends itself once its
application is gone.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from typing import Any

import ray

from scheduler.collector import CallReport, PendingJob, ServiceRate
from serve.control import ScalingLoop
from serve.fleet import ServeFleet
from serve.settings import WORKER_DEPLOYMENT, ControlLoopSettings

log = logging.getLogger("ray.serve")
NAMESPACE = "sdserve"
#: The actor ends itself after its application has been gone this long.
ORPHANED_AFTER_S = 30.0
#: What it learnt is saved at most this often (and when it ends).
SAVE_EVERY_S = 10.0


class OrphanClock:
    """Whether the application has been missing (or unreadable) for ``after_s`` without a break."""

    def __init__(self, after_s: float) -> None:
        self.after_s = after_s
        self._missing_since: float | None = None

    def gone(self, now: float, here: bool) -> bool:
        if here:
            self._missing_since = None
            return False
        if self._missing_since is None:
            self._missing_since = now
        return now - self._missing_since >= self.after_s


def actor_name(app_name: str) -> str:
    return f"sdserve-scaler:{app_name}"


def state_key(app_name: str) -> bytes:
    return f"sdserve:scaler-state:{app_name}".encode()


@ray.remote(num_cpus=0, max_restarts=0)
class ScalerActor:
    """The application's scaling loop, fed by every ingress replica."""

    def __init__(self, app_name: str, settings: dict[str, Any]) -> None:
        self.app_name = app_name
        self.loop = ScalingLoop(ControlLoopSettings.model_validate(settings), ServeFleet(app_name, WORKER_DEPLOYMENT),
                                f"{app_name}/{WORKER_DEPLOYMENT}")
        saved = _kv_get(state_key(app_name))
        if saved:
            self.loop.restore(json.loads(saved))
            log.info("scaler for %s restored what it had learnt", app_name)
        self._saved_at = time.monotonic()
        self._watch: asyncio.Task[None] | None = None

    async def report(self, accepted: list[tuple[str, PendingJob]], answered: list[str],
                     replied: list[CallReport], sent: list[tuple[str, float, str]] | None = None,
                     tiers: dict[str, str] | None = None) -> dict[str, int]:
        """What one ingress replica saw since its last report (with its dispatcher: the requests it
        sent to replicas, and where its queued requests' checkpoints are); answers what the fleet is now."""
        self._start()
        collector = self.loop.driver.collector
        for key, job in accepted:
            collector.accepted(key, job)
        for key, at, tier in sent or ():
            collector.started(key, at, tier)
        collector.expect(tiers or {})
        for call in replied:
            collector.replied(call)
        for key in answered:
            collector.answered(key)
        return {"running": self.loop.running, "target": self.loop.driver.target}

    async def configure(self, settings: dict[str, Any]) -> None:
        self._start()
        self.loop.configure(ControlLoopSettings.model_validate(settings))
        log.info("scaler for %s configured: %s", self.app_name, self.loop.driver.config)

    async def forget_speed(self) -> None:
        """The workers' speed changed (a live change of the simulated GPU): learn it again."""
        self.loop.driver.collector.rate = ServiceRate()

    async def decisions(self, limit: int = 50) -> dict[str, Any]:
        return self.loop.decisions.read(limit)

    def _start(self) -> None:
        if self._watch is None:
            self.loop.start()
            self._watch = asyncio.get_running_loop().create_task(self._housekeeping())

    async def _housekeeping(self) -> None:
        """Save what was learnt now and then; end once the application has been gone a while (or
        the Serve controller could not be read that long: Serve shut down)."""
        orphan = OrphanClock(ORPHANED_AFTER_S)
        while True:
            await asyncio.sleep(1.0)
            if time.monotonic() - self._saved_at >= SAVE_EVERY_S:
                self._save()
            try:
                status = await asyncio.wait_for(self.loop.fleet.status(), 5.0)
                here = status.minimum is not None
            except Exception:  # noqa: BLE001 - the controller busy, or gone with Serve itself
                here = False
            if orphan.gone(time.monotonic(), here):
                log.info("application %s is gone: its scaler ends", self.app_name)
                self._save()
                ray.actor.exit_actor()

    def _save(self) -> None:
        _kv_put(state_key(self.app_name), json.dumps(self.loop.snapshot()).encode())
        self._saved_at = time.monotonic()


def _kv_get(key: bytes) -> bytes | None:
    from ray.experimental.internal_kv import _internal_kv_get

    return _internal_kv_get(key, namespace=NAMESPACE)


def _kv_put(key: bytes, value: bytes) -> None:
    from ray.experimental.internal_kv import _internal_kv_put

    _internal_kv_put(key, value, overwrite=True, namespace=NAMESPACE)


class ScalingClient:
    """An ingress replica's side: events buffered and sent to the application's scaler every
    ``interval_s``; the actor found (or created) by name, again if it was lost."""

    def __init__(self, app_name: str, settings: ControlLoopSettings) -> None:
        self.app_name, self.settings = app_name, settings
        self.running = 1  # running worker replicas, as the scaler last said (1 until it has)
        self._accepted: list[tuple[str, PendingJob]] = []
        self._answered: list[str] = []
        self._replied: list[CallReport] = []
        self._sent: list[tuple[str, float, str]] = []
        #: the queued requests' tiers, read at each report (the dispatcher's ``queued_tiers``)
        self.tiers: Callable[[], dict[str, str]] | None = None
        self._actor: Any = None
        self._configured = False  # the scaler has these settings
        self._task: asyncio.Task[None] | None = None

    def accepted(self, key: str, job: PendingJob) -> None:
        self._accepted.append((key, job))

    def answered(self, key: str) -> None:
        self._answered.append(key)

    def replied(self, call: CallReport) -> None:
        self._replied.append(call)

    def sent(self, key: str, tier: str) -> None:
        """The dispatcher sent request ``key`` to a replica, its checkpoint expected from ``tier``."""
        self._sent.append((key, time.time(), tier))

    def start(self) -> None:
        """Start reporting on the running event loop (RuntimeError when none runs yet)."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    def _scaler(self) -> Any:
        if self._actor is None:
            self._actor = ScalerActor.options(
                name=actor_name(self.app_name), namespace=NAMESPACE, get_if_exists=True, lifetime="detached",
            ).remote(self.app_name, self.settings.model_dump())
        return self._actor

    def configure(self, settings: ControlLoopSettings) -> None:
        """New settings, sent before the next report (a new ingress replica sends its own too: the
        scaler may have been started by an older deployment's)."""
        self.settings, self._configured = settings, False

    def forget_speed(self) -> None:
        self._scaler().forget_speed.remote()

    async def decisions(self, limit: int = 50) -> dict[str, Any]:
        return await self._scaler().decisions.remote(limit)

    async def _run(self) -> None:
        while True:
            await self.flush()
            await asyncio.sleep(self.settings.interval_s)

    async def flush(self) -> None:
        """Send what was seen since the last report (kept for the next one if the actor is lost)."""
        batch = (self._accepted, self._answered, self._replied, self._sent)
        self._accepted, self._answered, self._replied, self._sent = [], [], [], []
        try:
            if not self._configured:
                sent = self.settings
                await asyncio.wait_for(self._scaler().configure.remote(sent.model_dump()), 10.0)
                self._configured = self.settings is sent  # newer settings may have come meanwhile
            tiers = self.tiers() if self.tiers is not None else None
            view = await asyncio.wait_for(self._scaler().report.remote(*batch, tiers), 10.0)
            self.running = view["running"]
        except Exception:  # noqa: BLE001 - the actor lost or slow: find it again, resend next time
            log.exception("reporting to the scaler of %s failed; retrying", self.app_name)
            self._actor, self._configured = None, False
            self._accepted, self._answered, self._replied, self._sent = (
                batch[0] + self._accepted, batch[1] + self._answered, batch[2] + self._replied, batch[3] + self._sent)
