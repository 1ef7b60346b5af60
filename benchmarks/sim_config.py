"""A Serve config file, read as the simulator's fleet and policy: the same YAML that deploys.

The worker deployment's ``max_ongoing_requests``, ``max_queued_requests`` and ``autoscaling_config``
and the application's ``batching``, ``limits`` and ``deadlines`` args become a
:class:`~scheduler.simulation.workload.FleetSpec` and a policy: sdserve's own control loop when the
application has ``external_scaler_enabled`` and ``autoscaling.enabled``, else Ray's default policy
inside Ray's wrapper with the config's delays, look-back and bounds, as Ray runs it. The service time
is the simulated A10 SD 1.5 profile (``models/simulated.py``), whatever model the config names.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections import Counter
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
        spec = dict(spec or {})
        if policy and "latency_objective_s" in policy:  # the dispatcher's due times follow the objective
            spec.setdefault("due_within_s", policy["latency_objective_s"])
        return dataclasses.replace(
            self, name=name or self.name,
            spec=dataclasses.replace(self.spec, **spec),
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
            requests.append(SimRequest(a.at, a.n, runs, width * height, timeout, a.tenant, a.model, kind,
                                       getattr(a, "loras", ())))
        return requests


@dataclass(frozen=True)
class ModelReplay:
    """How the simulator replays the checkpoints and LoRAs a trace names (SIMULATION): per-tier load
    times (the production trace's modes, ``alibaba-genai-2026-load-latency.csv``) and the size that
    turns ``model.host_memory_gb`` into checkpoints (SD 1.5 in fp16: 2.1 GB, as sd15-shaped measures)."""

    host_load_s: float = 2.8
    disk_load_s: float = 35.0
    lora_load_s: float = 4.4
    checkpoint_gb: float = 2.1
    node_host_models: int = 0  # >0: host memory is the node's, this many checkpoints, shared
    cold_start_overhead_s: float | None = None  # a cold start in parts (FleetSpec.cold_start_overhead_s)
    per_model_shared_gpus: bool = False  # the per-model fleet's deployments share the GPU cap (benchmarks/per_model.py)

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        models = parser.add_argument_group("checkpoints and LoRAs (when the trace names them)")
        models.add_argument("--host-load-s", type=float, default=cls.host_load_s, help="a checkpoint load from host memory")
        models.add_argument("--disk-load-s", type=float, default=cls.disk_load_s, help="a checkpoint load from disk")
        models.add_argument("--lora-load-s", type=float, default=cls.lora_load_s, help="a LoRA adapter load")
        models.add_argument("--checkpoint-gb", type=float, default=cls.checkpoint_gb, help="one checkpoint in host memory")
        models.add_argument("--node-host-models", type=int, default=0, help="host memory per node, in checkpoints, "
                            "shared by its replicas (0: model.host_memory_gb per replica)")
        models.add_argument("--cold-start-overhead-s", type=float, default=None, metavar="S",
                            help="a cold start is S plus the load of the checkpoint the replica starts with, "
                                 "from host memory (--host-load-s) or disk (--disk-load-s); default: "
                                 "--cold-start-s for every cold start")
        models.add_argument("--per-model-shared-gpus", action="store_true",
                            help="the per-model fleet's deployments share the config's GPUs (max_replicas), as "
                                 "deployments on one cluster do; default: each has its own, which favours it")
        models.add_argument("--one-checkpoint", action="store_true",
                            help="replay every request for one checkpoint without LoRAs (the trace's times, "
                                 "sizes and steps; its checkpoint and LoRA columns ignored)")

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "ModelReplay":
        return cls(args.host_load_s, args.disk_load_s, args.lora_load_s, args.checkpoint_gb, args.node_host_models,
                   args.cold_start_overhead_s, getattr(args, "per_model_shared_gpus", False))

    def cold_start_text(self, cold_start_s: float, models: bool = True) -> str:
        """The cold start a run replays, in words (``models``: the trace names checkpoints)."""
        if self.cold_start_overhead_s is None or not models:
            return f"cold start {cold_start_s:g}s"
        return (f"cold start {self.cold_start_overhead_s:g}s + the load of its first checkpoint from host memory "
                f"({self.host_load_s:g}s) or disk ({self.disk_load_s:g}s)")

    def per_model_text(self, gpus: int | None) -> str:
        """How the per-model fleet's deployments hold GPUs, in words."""
        if self.per_model_shared_gpus:
            return f"the per-model fleet's deployments share the {gpus} GPUs"
        return "the per-model fleet's deployments do not share a GPU cap"

    def apply(self, target: SimTarget, arrivals: list[Any]) -> SimTarget:
        """``target`` replaying models when the arrivals name checkpoints: its config's
        ``model.resident_models`` (0, the whole catalog, is taken as 1), ``resident_loras`` (0:
        unbounded), ``host_memory_gb``, ``preload`` and ``queue.model_aware``; every replica starts
        holding the trace's most used checkpoint. Arrivals that name none replay no models at all
        (every request for the one checkpoint each replica holds)."""
        used = Counter(a.model for a in arrivals if a.model)
        if not used:
            return target.with_overrides(spec={"models_per_replica": 0})
        model = target.settings.model
        return target.with_overrides(spec={
            "models_per_replica": model.resident_models or 1,
            "host_models_per_replica": int(model.host_memory_gb // self.checkpoint_gb),
            "host_models_per_node": self.node_host_models,
            "loras_per_replica": model.resident_loras or 10**9,
            "model_load_host_s": self.host_load_s, "model_load_disk_s": self.disk_load_s,
            "lora_load_s": self.lora_load_s, "default_model": used.most_common(1)[0][0],
            "cold_start_overhead_s": self.cold_start_overhead_s})


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
        urgent_within_s=settings.queue.urgent_within_s,
        due_within_s=kwargs.get("latency_objective_s"),
        models_per_replica=settings.model.resident_models,
        loras_per_replica=settings.model.resident_loras,
        # both need sdserve's dispatcher (live: the ingress answers from its queue); Ray cannot
        # tell a new replica what to load, nor read a checkpoint ahead
        model_preload=settings.model.preload and settings.queue.model_aware and settings.queue.dispatch,
        host_prefetch=settings.model.prefetch and settings.queue.model_aware and settings.queue.dispatch,
        wait_for_reads=settings.queue.wait_for_reads,
        prewarm_days=settings.model.prewarm_days,
        prewarm_time_scale=settings.simulation.time_scale if settings.model.backend == "simulated" else 1.0,
        model_blind=not settings.queue.model_aware,
        per_request_loads=settings.autoscaling.per_request_loads,
        per_request_adapters=settings.autoscaling.per_request_adapters,
        seed=seed,
    )
    return SimTarget(name or Path(path).stem, str(path), spec, kind, ray_config, kwargs, settings)
