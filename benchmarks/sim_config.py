"""A Serve config file, read as the simulator's fleet and policy: the same YAML that deploys.

The worker deployment's ``max_ongoing_requests``, ``max_queued_requests`` and ``autoscaling_config``
and the application's ``batching``, ``limits`` and ``deadlines`` args become a
:class:`~scheduler.simulation.workload.FleetSpec` and a policy: sdserve's own control loop when the
application has ``external_scaler_enabled`` and ``autoscaling.enabled``, else Ray's default policy
inside Ray's wrapper with the config's delays, look-back and bounds, as Ray runs it. The service time
is the simulated A10 SD 1.5 profile (``models/simulated.py``), whatever model the config names.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from models.request import DEFAULT_STRENGTH, TEXT, effective_steps
from models.simulated import A10_SD15_STEP_TIME_S, SimulationProfile
from scheduler.autoscaling import AutoscalerConfig
from scheduler.simulation.policies import ControlPolicy, RayControlled, SdserveLoop
from scheduler.simulation.ray_autoscaler import RayAutoscalingConfig
from scheduler.simulation.workload import FleetSpec, ServiceModel, SimRequest
from serve.settings import WORKER_DEPLOYMENT, AppSettings, load_config


def a10_service_model(time_scale: float = 1.0, step_time_s: dict[int, float] | None = None) -> ServiceModel:
    """The simulated backend's service time (per call), optionally compressed ``time_scale``×."""
    profile = SimulationProfile(step_time_s=tuple(sorted((step_time_s or A10_SD15_STEP_TIME_S).items())))

    def service(images: int, pixels: int, steps: int) -> float:
        return profile.seconds_per_step(images, pixels) * steps / time_scale

    return service


@dataclass
class SimTarget:
    """One config as the simulator runs it."""

    name: str
    path: str
    spec: FleetSpec
    policy_kind: str  # "sdserve-loop" (sdserve's own control loop) or "ray-default"
    ray_config: RayAutoscalingConfig
    policy_kwargs: dict[str, Any]
    settings: AppSettings

    def policy(self) -> ControlPolicy:
        """A fresh policy (policies keep state: one per run)."""
        if self.policy_kind == "sdserve-loop":
            return SdserveLoop(self.name, AutoscalerConfig(**self.policy_kwargs),
                               fleet_poll_s=self.settings.autoscaling.fleet_poll_s)
        return RayControlled(self.name, self.ray_config)

    def with_overrides(self, spec: dict[str, Any] | None = None, ray: dict[str, Any] | None = None,
                       policy: dict[str, Any] | None = None, name: str | None = None) -> "SimTarget":
        """A variant (the recommender and the Pareto sweep change knobs this way)."""
        return dataclasses.replace(
            self, name=name or self.name,
            spec=dataclasses.replace(self.spec, **(spec or {})),
            ray_config=dataclasses.replace(self.ray_config, **(ray or {})),
            policy_kwargs={**self.policy_kwargs, **(policy or {})},
        )

    def requests(self, arrivals: list[Any], size: str | None = None, timeout_s: float | None = None) -> list[SimRequest]:
        """Trace arrivals as this config's server would see them (default size, steps, timeout); an
        edit (the trace's IMG_2_IMG and INPAINTING rows) runs the steps its default strength gives."""
        width, height = (int(x) for x in (size or self.settings.limits.default_size).split("x"))
        steps = self.settings.limits.default_steps
        timeout = timeout_s or self.settings.deadlines.default_timeout_s
        requests = []
        for a in arrivals:
            kind = getattr(a, "kind", TEXT)
            runs = max(1, effective_steps(a.steps or steps, kind, DEFAULT_STRENGTH.get(kind, 1.0)))
            requests.append(SimRequest(a.at, a.n, runs, width * height, timeout, a.tenant, a.model, kind))
        return requests


def _worker(app: dict[str, Any], path: str) -> dict[str, Any]:
    for deployment in app.get("deployments", []):
        if deployment.get("name") == WORKER_DEPLOYMENT:
            return deployment
    raise ValueError(f"{path}: no deployment named {WORKER_DEPLOYMENT}")


def load_target(path: str | Path, cold_start_s: float, overrides: list[str] | None = None,
                deployment_overrides: dict[str, list[str]] | None = None, seed: int = 0,
                cold_start_jitter_s: float = 0.0, name: str | None = None) -> SimTarget:
    """Read ``path`` (a Serve config) into a :class:`SimTarget`."""
    config = load_config(path, overrides, deployment_overrides)
    app = config["applications"][0]
    settings = AppSettings.model_validate(app.get("args") or {})
    worker = _worker(app, str(path))
    autoscaling = dict(worker.get("autoscaling_config") or {})
    loop = settings.autoscaling
    if app.get("external_scaler_enabled") and loop.enabled:  # sdserve's own loop sizes the fleet
        kwargs = dict(loop.policy)
        loop_config = AutoscalerConfig(**kwargs)
        replicas = int(worker.get("num_replicas", 1))
        autoscaling = {"min_replicas": loop_config.min_replicas, "max_replicas": loop_config.max_replicas,
                       "initial_replicas": replicas}
        kind = "sdserve-loop"
    else:
        if not autoscaling:
            replicas = int(worker.get("num_replicas", 1))
            autoscaling = {"min_replicas": replicas, "max_replicas": replicas, "initial_replicas": replicas}
        policy = autoscaling.pop("policy", None) or {}
        if policy.get("policy_function") is not None:
            raise ValueError(f"{path}: the simulator knows sdserve's control loop and Ray's default policy, "
                             f"not {policy['policy_function']!r}")
        kwargs = {}
        kind = "ray-default"
    ray_config = RayAutoscalingConfig.from_dict(autoscaling)
    initial = ray_config.initial_replicas if ray_config.initial_replicas is not None else ray_config.min_replicas
    spec = FleetSpec(
        max_batch_size=settings.batching.max_batch_size,
        batch_wait_timeout_s=settings.batching.batch_wait_timeout_s,
        adaptive=settings.batching.adaptive,
        adaptive_min_calls=settings.batching.adaptive_min_calls,
        adaptive_margin=settings.batching.adaptive_margin,
        max_ongoing_requests=int(worker.get("max_ongoing_requests", 5)),
        max_queued_requests=int(worker.get("max_queued_requests", -1)),
        cold_start_s=cold_start_s,
        cold_start_jitter_s=cold_start_jitter_s,
        initial_replicas=initial,
        gpu_slots=ray_config.max_replicas,  # max_replicas = the GPUs you have, in every shipped config
        shed_hopeless=settings.deadlines.shed_hopeless,
        dispatch=settings.queue.dispatch,
        seed=seed,
    )
    return SimTarget(name or Path(path).stem, str(path), spec, kind, ray_config, kwargs, settings)
