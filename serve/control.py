"""sdserve's own scaling loop, run by the ingress: collector → decider → actuator (Knative's split).

Why not Ray's policy hook: Ray 2.60 wraps every policy, custom ones included, and while no replica
is RUNNING and requests wait it answers ``max(1, target)`` itself without calling the policy
(``_get_cold_start_scale_up_replicas`` in ``ray/serve/autoscaling_policy.py``). A burst from zero
then gets one replica, the rest one cold start later; the policy's state also goes stale across
zero. With the application's ``external_scaler_enabled: true`` Ray leaves the replica count to us:

- **collector**: the ingress sees every request (accepted, deadline, images, steps) and every reply
  (service time, the replica's cold start); it polls Serve for RUNNING vs starting replicas.
- **decider**: :func:`scheduler.autoscaling.decide`, the same pure function the simulator runs,
  with inputs built by :func:`scheduler.collector.build_inputs` — as in the simulator.
- **actuator**: the Serve controller's ``update_deployment_replicas``, the method Ray's public
  external-scaler REST endpoint (``POST /api/v1/applications/{app}/deployments/{dep}/scale``,
  alpha in 2.60) calls. Calling it from inside the cluster needs neither the dashboard process nor
  its token auth; it is an internal method, so its absence fails loudly at start.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from typing import Any

from scheduler.autoscaling import AutoscalerConfig, AutoscalerState, Decision, decide
from scheduler.collector import ArrivalWindow, PendingJob, ServiceRate, StartTracker, build_inputs
from serve.cluster import GpuReplicaCap
from serve.decision_log import DecisionReporter
from serve.settings import ControlLoopSettings

log = logging.getLogger("ray.serve")

#: Replica states that are on their way to serving (Serve's ReplicaState values).
STARTING_STATES = ("STARTING", "UPDATING", "RECOVERING", "PENDING_MIGRATION")


class ServeFleet:
    """Reads a deployment's replica states and sets its target, through the Serve controller."""

    def __init__(self, app_name: str, deployment: str) -> None:
        import ray
        from ray.serve._private.common import DeploymentID
        from ray.serve._private.constants import SERVE_CONTROLLER_NAME, SERVE_NAMESPACE

        self.app_name, self.deployment = app_name, deployment
        self._id = DeploymentID(name=deployment, app_name=app_name)
        self._controller = ray.get_actor(SERVE_CONTROLLER_NAME, namespace=SERVE_NAMESPACE)
        if not hasattr(self._controller, "update_deployment_replicas"):
            raise RuntimeError("this Ray has no external-scaler API (update_deployment_replicas); Ray >= 2.50 needed")

    async def replicas(self) -> tuple[int, int]:
        """(running, starting) replicas of the deployment."""
        status = await self.status()
        return status["running"], status["starting"]

    async def status(self) -> dict[str, int]:
        """Running and starting replicas, and the floor the deployment keeps (its minimum)."""
        details = await self._controller.get_serve_instance_details.remote()
        app = (details.get("applications") or {}).get(self.app_name) or {}
        deployment = (app.get("deployments") or {}).get(self.deployment) or {}
        states = [str(r.get("state", "")).split(".")[-1] for r in deployment.get("replicas") or []]
        config = deployment.get("deployment_config") or {}
        scaling = config.get("autoscaling_config") or {}
        minimum = scaling.get("min_replicas") if scaling else config.get("num_replicas")
        return {"running": states.count("RUNNING"), "starting": sum(states.count(s) for s in STARTING_STATES),
                "minimum": int(minimum or 0)}

    async def scale(self, target: int) -> None:
        await self._controller.update_deployment_replicas.remote(self._id, target)


class ScalingLoop:
    """Every ``interval_s``: collect, decide, and set the worker deployment's target if it changed."""

    def __init__(self, settings: ControlLoopSettings, fleet: Any, initial_target: int,
                 deployment_name: str) -> None:
        self.settings = settings
        self.config = AutoscalerConfig(**settings.policy)
        self.fleet = fleet
        self.name = deployment_name
        self.target = initial_target
        self.state = AutoscalerState(target=initial_target)
        self.rate = ServiceRate()
        self.starts = StartTracker()
        self.arrived = ArrivalWindow()
        self.cold_start_s: float | None = None
        #: Requests per call the replicas say they take now (adaptive batching); None: the static
        #: ``capacity_per_replica`` of the config.
        self.capacity: int | None = None
        self.jobs: dict[str, PendingJob] = {}  # outstanding, in arrival order
        self.gpu_cap = GpuReplicaCap(settings.gpus_per_replica) if settings.follow_cluster_gpus else None
        self.reporter = DecisionReporter()
        self.last: Decision | None = None
        self._replicas = (0, 0)
        self._polled_at = 0.0
        self._task: asyncio.Task[None] | None = None

    # -- collector: called by the ingress for every request and reply --------------------------
    def accepted(self, job_id: str, job: PendingJob) -> None:
        self.jobs[job_id] = job
        self.arrived.arrived(job.accepted_at)

    def answered(self, job_id: str) -> None:
        self.jobs.pop(job_id, None)

    def replied(self, seconds: float, images: int, steps: int, pixels: int, cold_start_s: float | None,
                capacity: int | None = None) -> None:
        self.rate.observe(seconds, images, steps, pixels)
        if cold_start_s:
            self.cold_start_s = cold_start_s
        if capacity:
            self.capacity = min(capacity, self.config.capacity_per_replica)

    @property
    def running(self) -> int:
        """Running replicas as the loop last read them."""
        return self._replicas[0]

    # -- the loop -------------------------------------------------------------------------------
    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        log.info("scaling loop for %s every %.2fs: %s", self.name, self.settings.interval_s, self.config)
        while True:
            try:
                await self.tick(time.time())
            except asyncio.CancelledError:
                raise
            except Exception:  # a failed read or scale call: try again next tick, never stop
                log.exception("scaling loop tick failed")
            await asyncio.sleep(self.settings.interval_s)

    async def tick(self, now: float) -> Decision:
        if now - self._polled_at >= self.settings.fleet_poll_s:
            self._replicas = await self.fleet.replicas()
            self._polled_at = now
        running, starting = self._replicas
        if self.target < 0:  # first tick: take over the fleet as deployed
            self.target = running + starting
            self.state = dataclasses.replace(self.state, target=self.target)
        starting = max(starting, self.target - running)  # asked for, maybe not yet in Serve's view
        config = self.config
        if self.capacity is not None:
            config = dataclasses.replace(config, capacity_per_replica=self.capacity)
        if self.gpu_cap is not None and (cap := self.gpu_cap(now)):
            config = dataclasses.replace(config, max_replicas=max(config.min_replicas, min(config.max_replicas, cap)))
        inputs = build_inputs(now, list(self.jobs.values()), running, starting, config.capacity_per_replica,
                              self.rate, self.starts, self.cold_start_s, config.default_service_time_s,
                              config.default_cold_start_s, config.latency_objective_s, self.arrived.count(now))
        decision = decide(inputs, self.state, config)
        self.state, self.last = decision.state, decision
        if decision.desired != self.target:
            await self.fleet.scale(decision.desired)
            self.target = decision.desired
            self._polled_at = 0.0  # read the fleet again next tick
        self.reporter.report(self.name, now, decision.desired, decision.reason, inputs)
        return decision
