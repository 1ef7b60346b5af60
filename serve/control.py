"""sdserve's own scaling loop: collector → decider → actuator (Knative's split).

Why not Ray's policy hook: Ray 2.60 wraps every policy, custom ones included, and while no replica
is RUNNING and requests wait it answers ``max(1, target)`` itself without calling the policy
(``_get_cold_start_scale_up_replicas`` in ``ray/serve/autoscaling_policy.py``). A burst from zero
then gets one replica, the rest one cold start later; the policy's state also goes stale across
zero. With the application's ``external_scaler_enabled: true`` Ray leaves the replica count to us:

- **collector**: every ingress replica reports each request (accepted, deadline, images, steps) and
  each reply (service time, the replica's cold start and batch capacity) to the one loop of the
  application (``serve/scaler.py``); the loop polls Serve for RUNNING vs starting replicas and for
  the target Serve holds;
- **decider**: :class:`scheduler.driver.ScalingDriver` around :func:`scheduler.autoscaling.decide` —
  the very class the simulator runs;
- **actuator**: the Serve controller's ``update_deployment_replicas``, the method Ray's public
  external-scaler REST endpoint (``POST /api/v1/applications/{app}/deployments/{dep}/scale``,
  alpha in 2.60) calls. Calling it from inside the cluster needs neither the dashboard process nor
  its token auth; it is an internal method, so its absence fails loudly at start.

The loop cannot drift from Serve: every poll adopts the target Serve holds (a redeploy resets it to
``num_replicas``; another writer may change it), every controller call has a timeout (a hung call
costs a tick, never the loop), and what the loop learnt can be saved and restored (``snapshot``).
A replica Serve is stopping that no node ever ran is ended at once (:func:`serve.fleet.unplaced_stopping`).
Each decision is kept in :class:`DecisionLog` (``GET /v1/scheduler`` and the metrics read it).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, TypeVar

from scheduler.autoscaling import AutoscalerConfig, AutoscalerInputs, Decision
from scheduler.collector import ServiceRate
from scheduler.driver import ScalingDriver
from serve.cluster import GpuReplicaCap
from serve.fleet import ControllerGone, FleetStatus
from serve.settings import ControlLoopSettings

log = logging.getLogger("ray.serve")
T = TypeVar("T")


class Fleet(Protocol):
    async def status(self) -> FleetStatus: ...

    async def scale(self, target: int) -> None: ...

    async def cancel(self, actor_names: tuple[str, ...]) -> int: ...


class DecisionLog:
    """The latest decision and the recent changes (count or kind), for ``GET /v1/scheduler``."""

    def __init__(self, deployment: str, keep: int = 200) -> None:
        self.deployment = deployment
        self.recent: deque[dict[str, Any]] = deque(maxlen=keep)
        self.latest: dict[str, Any] | None = None

    def record(self, decision: Decision, inputs: AutoscalerInputs) -> None:
        counts = {f.name: getattr(inputs, f.name) for f in dataclasses.fields(inputs)
                  if f.name not in ("now", "backlog", "slot_free_in_s")}
        entry = {"time": inputs.now, "deployment": self.deployment, "desired": decision.desired,
                 "kind": str(decision.kind), "reason": decision.reason, **counts}
        if self.latest is None or (self.latest["desired"], self.latest["kind"]) != (decision.desired, entry["kind"]):
            log.info("autoscaler %s: desired %d (%s)", self.deployment, decision.desired, decision.reason)
            self.recent.append(entry)
        self.latest = entry

    def read(self, limit: int = 50) -> dict[str, Any]:
        latest = {self.deployment: self.latest} if self.latest else {}
        return {"latest": latest, "recent": list(self.recent)[-limit:] if limit > 0 else []}


#: The longest pause between ticks while they keep failing.
MAX_BACKOFF_S = 5.0


class ScalingLoop:
    """Every ``interval_s``: read the fleet when due, decide, and set the target if it changed."""

    def __init__(self, settings: ControlLoopSettings, fleet: Fleet, deployment_name: str,
                 call_timeout_s: float = 5.0) -> None:
        self.fleet = fleet
        self.call_timeout_s = call_timeout_s
        self.driver = ScalingDriver(AutoscalerConfig(**settings.policy), settings.fleet_poll_s)
        self.decisions = DecisionLog(deployment_name)
        self.running = 0  # running replicas as last read
        self._task: asyncio.Task[None] | None = None
        self.configure(settings)

    def configure(self, settings: ControlLoopSettings) -> None:
        """New knobs (a reconfigure): the driver keeps what it learnt, the decider uses the new ones."""
        self.settings = settings
        self.gpu_cap = GpuReplicaCap(settings.gpus_per_replica) if settings.follow_cluster_gpus else None
        self.driver.reconfigure(AutoscalerConfig(**settings.policy), settings.fleet_poll_s)

    def start(self) -> None:
        """Start on the running event loop (RuntimeError when none runs yet: start it later)."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        log.info("scaling loop for %s every %.2fs: %s", self.decisions.deployment, self.settings.interval_s,
                 self.driver.config)
        failures = 0
        while True:
            try:
                await self.tick(time.time())
                if failures:
                    log.info("scaling loop for %s works again after %d failed ticks", self.decisions.deployment,
                             failures)
                failures = 0
            except asyncio.CancelledError:
                raise
            except Exception as error:  # a failed or hung read or scale call: try again, never stop
                failures += 1
                if failures == 1 and isinstance(error, ControllerGone):  # Serve shut down, or restarting
                    log.warning("scaling loop for %s: %s; retrying, backing off to %gs", self.decisions.deployment,
                                error, MAX_BACKOFF_S)
                elif failures == 1:
                    log.exception("scaling loop tick failed; retrying, backing off to %gs", MAX_BACKOFF_S)
            # after failures, back off (doubling, at most MAX_BACKOFF_S): a controller that is gone
            # is not asked ten times a second
            await asyncio.sleep(min(MAX_BACKOFF_S, self.settings.interval_s * 2 ** min(failures, 10)))

    async def _call(self, call: Callable[[], Awaitable[T]], what: str) -> T:
        try:
            return await asyncio.wait_for(call(), self.call_timeout_s)
        except asyncio.TimeoutError:
            raise TimeoutError(f"the Serve controller did not answer {what} within {self.call_timeout_s:g}s") from None

    async def tick(self, now: float) -> Decision:
        driver = self.driver
        if driver.fleet_due(now):
            status = await self._call(self.fleet.status, "a fleet read")
            if status.target is not None and driver.target >= 0 and status.target != driver.target:
                log.warning("autoscaler %s: Serve's target is %d, not the %d asked for (a redeploy or another "
                            "writer): adopting it", self.decisions.deployment, status.target, driver.target)
            driver.fleet_seen(now, status.counts.running, status.counts.starting, status.target)
            self.running = status.counts.running
            if status.unplaced_stopping:
                cancelled = await self._call(lambda: self.fleet.cancel(status.unplaced_stopping),
                                             "a cancel of replicas never placed")
                if cancelled:
                    log.info("autoscaler %s: ended %d replica(s) Serve was stopping that no node had run; Ray "
                             "would hold them for graceful_shutdown_timeout_s (ray-project/ray#50426)",
                             self.decisions.deployment, cancelled)
        decision = driver.step(now, self.gpu_cap(now) if self.gpu_cap is not None else None)
        if decision.desired != driver.target:
            await self._call(lambda: self.fleet.scale(decision.desired), f"a scale to {decision.desired}")
            driver.applied(decision.desired)
        assert driver.last_inputs is not None
        self.decisions.record(decision, driver.last_inputs)
        return decision

    def snapshot(self) -> dict[str, Any]:
        """What the loop learnt and should survive a restart: the idle-time histograms and the
        service, load (per tier) and cold-start times the replicas reported."""
        collector, state = self.driver.collector, self.driver.state
        return {"idle_histograms": [list(h) for h in state.idle_histograms],
                "per_image_step_s": collector.rate.per_image_step_s, "call_s": collector.rate.call_s,
                "cold_start_s": collector.cold_start_s,
                "load_s": {tier: mean.value for tier, mean in collector.tier_load.items() if mean.value is not None}}

    def restore(self, saved: dict[str, Any]) -> None:
        driver = self.driver
        driver.state = dataclasses.replace(
            driver.state, idle_histograms=tuple(tuple(h) for h in saved.get("idle_histograms", ())))
        driver.collector.rate = ServiceRate.restored(saved.get("per_image_step_s"), saved.get("call_s"))
        driver.collector.cold_start_s = saved.get("cold_start_s")
        for tier, seconds in saved.get("load_s", {}).items():
            if tier in driver.collector.tier_load:
                driver.collector.tier_load[tier].value = seconds
