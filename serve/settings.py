"""The application's settings: what a Serve config file's ``args:`` section may say.

One typed tree with documented defaults, validated when the application is built, so a typo in a
config file fails the deploy with a message naming the key instead of surfacing at request time.
Ray's own per-deployment knobs (``max_ongoing_requests``, autoscaling, graceful shutdown) stay in
the config file's ``deployments:`` section where Ray reads them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

#: The two deployments every application has (the config files' ``deployments:`` names).
WORKER_DEPLOYMENT = "DiffusionWorker"
INGRESS_DEPLOYMENT = "Ingress"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelSettings(_Section):
    """Which weights to serve and where to run them."""

    id: str = Field("tiny", description="'tiny', a local diffusers directory, or a Hugging Face id")
    served_name: str | None = Field(None, description="name shown in /v1/models; default: id")
    backend: Literal["diffusers", "simulated"] = Field(
        "diffusers", description="'simulated' fakes GPU timing for scheduler tests; never default"
    )
    device: str = Field("auto", description="auto (CUDA if present, else CPU), cpu, cuda, cuda:N")
    dtype: str = Field("auto", description="auto (fp16 on CUDA, fp32 on CPU), float32, float16, bfloat16")
    allow_download: bool = Field(False, description="fetch from the Hugging Face hub if not cached")
    compile_unet: bool = Field(False, description="torch.compile the UNet (slow first request)")
    torch_threads: int | None = Field(None, ge=1, description="CPU threads per replica (None: torch's)")
    cache_dir: str | None = Field(None, description="where 'tiny' is built; default ~/.cache/sdserve")
    catalog: dict[str, str] = Field(
        default_factory=dict, description="more checkpoints, served name → source ('tiny:N', a local diffusers "
        "directory, or a Hugging Face id); requests pick one with "
        "'model' (default: this model)")
    loras: dict[str, str] = Field(
        default_factory=dict, description="LoRA adapters, served name → source ('tiny-lora:N', a diffusers LoRA "
        "directory or .safetensors file; 'sd15-shaped-lora:N' only to measure); a request applies some with 'loras': [{id, scale}]")
    resident_models: int = Field(
        0, ge=0, description="checkpoints a worker replica keeps loaded at once; 0: the whole catalog, loaded at "
        "start; fewer: loaded on first use, the least recently used unloaded")
    resident_loras: int = Field(
        0, ge=0, description="LoRA adapters each checkpoint's pipeline keeps loaded; the least recently used "
        "beyond it is deleted (never one the call needs); 0: every adapter used stays loaded")
    host_memory_gb: float = Field(
        0.0, ge=0, description="host RAM per worker replica for checkpoints taken off its device (with "
        "resident_models): kept as CPU tensors, pinned on CUDA, and copied back into a built pipeline "
        "instead of loaded from disk; measured bytes, least recently used out; 0: off")
    preload: bool = Field(
        True, description="with resident_models: a starting worker replica asks the ingress which checkpoint "
        "its queue needs most (per replica holding it) and loads that one instead of the default "
        "(scheduler/preload.py)")
    prefetch: bool = Field(
        True, description="with resident_models and queue.model_aware: a request for a checkpoint no worker "
        "replica holds starts the read of its files into the node's page cache when it arrives, so the load "
        "overlaps its wait (models/page_cache.py; the simulated backend: simulation.page_cache_checkpoints)")
    prewarm_days: int = Field(
        7, ge=0, description="with prefetch: every 10 minutes, read into the node's page cache the checkpoints "
        "asked for in the coming 3 hours on any of this many past days (scheduler/prewarm.py; the ingress's "
        "request history); 0: off")
    prewarm_history: str = Field(
        "auto", description="where the ingress keeps the pre-warm's request history across restarts (JSON, "
        "written every 10 minutes; a shared path when the ingress may move between nodes): a path; 'auto': "
        "~/.cache/sdserve/prewarm-APP.json for real checkpoints, in memory only for the simulated backend "
        "(each replay starts fresh); 'none': in memory only")

    @property
    def name(self) -> str:
        """The served model name; a simulated backend is always labelled ``simulated:``."""
        return self._label(self.served_name or self.id)

    def _label(self, base: str) -> str:
        if self.backend == "simulated" and not base.startswith("simulated:"):
            return f"simulated:{base}"
        return base

    @property
    def served(self) -> dict[str, str]:
        """Every checkpoint served, name → source: the default first, then the catalog."""
        return {self.name: self.id, **{self._label(name): source for name, source in self.catalog.items()}}


class SimulationSettings(_Section):
    """Only for ``model.backend: simulated``: the service-time profile (see models/simulated.py)."""

    step_time_s: dict[int, float] | None = Field(
        None, description="seconds per denoising step by images per call; default: A10 SD 1.5"
    )
    load_time_s: float = Field(2.0, ge=0, description="simulated model load at replica start (and, with a "
                               "catalog and model.resident_models, a checkpoint's load from disk)")
    host_load_time_s: float = Field(2.8, ge=0, description="with a catalog: a checkpoint's load from host memory "
                                    "(model.host_memory_gb; the production trace's fast mode)")
    checkpoint_gb: float = Field(2.1, gt=0, description="with a catalog: what one checkpoint takes in host memory")
    lora_load_time_s: float = Field(0.0, ge=0, description="a LoRA adapter's load into a checkpoint not holding it "
                                    "(model.loras name the adapters; production p50 4.4 s); 0: adapters cost nothing")
    page_cache_checkpoints: int = Field(
        0, ge=0, description="with a catalog: checkpoints the node's page cache holds, shared by the node's replicas "
        "(a load of one whose files are there takes host_load_time_s; least recently used out); 0: none")
    page_cache_journal: str = Field(
        "", description="a file the simulated page cache appends each checkpoint's arrival, use and eviction to "
        "(wall-clock time, event, checkpoint): `sdserve-bench validate` sets it to line a live replay up against "
        "the simulator's node memory; empty: none")
    scale_with_pixels: bool = Field(True, description="scale step time with pixels vs 512x512")
    time_scale: float = Field(
        1.0, gt=0, description="run k× faster: step times and load time divided by k (compressed replays)"
    )


class BatchingSettings(_Section):
    """``max_batch_size: 1`` is the single-concurrency (FaaS) setting; above 1, ``@serve.batch``."""

    max_batch_size: int = Field(1, ge=1, le=64, description="requests per pipeline call (the most, if adaptive)")
    batch_wait_timeout_s: float = Field(0.05, ge=0, le=10, description="wait to fill a batch")
    adaptive: bool = Field(
        False, description="choose each call's batch from a learned latency model and the deadlines waiting"
    )
    adaptive_min_calls: int = Field(4, ge=1, description="calls before the model is trusted (AIMD until then)")
    adaptive_margin: float = Field(1.1, ge=1, description="predicted call time x this must meet every deadline")


class LimitSettings(_Section):
    """Bounds on what one request may ask for; anything outside gets a 422 naming the field."""

    default_size: str = Field("512x512", pattern=r"^\d+x\d+$")
    max_width: int = Field(1024, ge=8)
    max_height: int = Field(1024, ge=8)
    max_n: int = Field(4, ge=1)
    max_loras_per_request: int = Field(4, ge=0, description="LoRA adapters one request may apply")
    default_steps: int = Field(25, ge=1)
    max_steps: int = Field(100, ge=1)
    default_guidance_scale: float = Field(7.5, ge=0)
    max_guidance_scale: float = Field(30.0, ge=0)
    max_prompt_chars: int = Field(4000, ge=1)
    max_body_bytes: int = Field(65536, ge=1024, description="larger request bodies get 413")
    max_edit_body_bytes: int = Field(
        16 * 2**20, ge=1024, description="larger /v1/images/edits bodies (image, mask and fields) get 413")
    body_read_timeout_s: float = Field(
        10.0, gt=0, description="a body not fully received in this time gets 408 (slow uploads)"
    )

    @property
    def default_width_height(self) -> tuple[int, int]:
        width, height = self.default_size.split("x")
        return int(width), int(height)


class DeadlineSettings(_Section):
    """Every request has a deadline: body ``timeout_s``, else the header, else the default."""

    default_timeout_s: float = Field(120.0, gt=0, description="when a request names no timeout")
    max_timeout_s: float = Field(600.0, gt=0, description="larger timeouts are refused with 422")
    proxy_guard_s: float = Field(
        0.5, ge=0, description="header deadlines end this early so our 504 beats Ray's proxy 408"
    )
    ingress_slack_s: float = Field(
        0.25, ge=0, description="ingress gives up this long after the deadline (queued requests)"
    )
    shed_hopeless: bool = Field(
        True, description="refuse (504) requests whose measured run time exceeds their time left"
    )


class QueueSettings(_Section):
    """The queue requests wait in (serve/dispatcher.py), and how Retry-After is computed when it is
    full. The bound itself is ``max_queued_requests`` on the DiffusionWorker deployment."""

    dispatch: bool = Field(
        True, description="requests wait in sdserve's fair, deadline-ordered queue and go to a replica "
        "only when it has a free slot; false: straight into Ray's router queue (first in, first out)")
    model_aware: bool = Field(
        True, description="with dispatch: place a request where its checkpoint is (device, then host memory), "
        "let a free replica take a request for a checkpoint it holds when the head's holder is busy or "
        "starting, and tell starting replicas what to preload (model.preload); false: any free replica")
    wait_for_reads: bool = Field(
        True, description="with model_aware and model.prefetch: a request whose checkpoint is still being read "
        "from disk waits in the queue until the read ends, and free replicas take the requests behind it; "
        "false: it goes to a free replica, which waits for the read (scheduler/preload.py)")
    urgent_within_s: float | None = Field(
        None, ge=0, description="with dispatch: a request this many seconds from its due time (its deadline, "
        "or its arrival plus autoscaling.policy.latency_objective_s if sooner) goes ahead of the fair order, "
        "earliest due first (scheduler/fair_queue.py); unset: fair order only")
    tenant_weights: dict[str, float] = Field(
        default_factory=dict, description="share of dispatches per tenant (as request logs name it: "
        "'key-<digest>' for an API key, else the client address); others weigh 1")

    drain_window_s: float = Field(30.0, gt=0, description="window for the completion rate")
    max_outstanding_per_client: int | None = Field(
        None, ge=1, description="requests one API key (or, without keys, one address) may have "
        "outstanding; beyond it 429 + Retry-After. Set below the worker's max_queued_requests",
    )


class MemorySettings(_Section):
    """Memory admission and out-of-memory handling (see scheduler/memory.py)."""

    calibrate: bool = Field(True, description="measure probe calls at load time to fit the estimate")
    cache_probes: bool = Field(
        True, description="keep probe results per (model, GPU type, dtype, versions): probe once, not per replica"
    )
    budget_fraction: float = Field(
        0.9, gt=0, le=1, description="GPU: share of device memory one call may use (minus weights)"
    )
    cpu_budget_mb: float = Field(4096, gt=0, description="CPU: megabytes one call may use")
    safety_factor: float = Field(1.3, ge=1, description="estimates are multiplied by this")
    max_oom_strikes: int = Field(
        3, ge=1, description="consecutive OOMs on requests the estimate said fit → replica unhealthy"
    )
    measure_every_n_calls: int = Field(
        10, ge=1, description="measure the real peak of every n-th call (estimate vs actual metric)"
    )


class TestingSettings(_Section):
    """Test-only hooks. Never set in a production config."""

    inject_error_marker: str | None = Field(
        None, description="prompts containing this make the worker raise before the pipeline (a bug)"
    )
    inject_oom_marker: str | None = Field(
        None, description="prompts containing this raise torch.OutOfMemoryError (fault injection)"
    )


class AuthSettings(_Section):
    """Bearer keys. With none set the server is open, so it refuses to start on a non-loopback
    address unless ``allow_open_on_network`` says that is meant (e.g. behind an authenticating proxy)."""

    api_keys_env: str = Field("SDSERVE_API_KEYS", description="env var with comma-separated keys")
    api_keys_file: str | None = Field(None, description="file with one key per line")
    allow_open_on_network: bool = Field(
        False, description="start without keys on a non-loopback address (someone else authenticates)"
    )


class ResourceSettings(_Section):
    """Ray resources of one worker replica."""

    num_gpus: float = Field(0, ge=0, description="GPUs per replica; fractions are logical only")
    num_cpus: float = Field(1, ge=0)
    fail_fast_without_gpu: bool = Field(
        True, description="refuse to deploy a GPU config on a cluster with no GPU at all"
    )


class ControlLoopSettings(_Section):
    """sdserve's own scaling loop, run by the ingress (``serve/control.py``). Needs the application's
    ``external_scaler_enabled: true`` and no ``autoscaling_config`` on the worker deployment; the
    worker's ``num_replicas`` is then the fleet at deploy time. Every decision knob is a field of
    ``scheduler.autoscaling.AutoscalerConfig`` under ``policy``."""

    enabled: bool = Field(False, description="scale the worker fleet from the ingress")
    interval_s: float = Field(0.1, gt=0, le=10, description="decide this often (Ray's own loop: 0.1 s)")
    fleet_poll_s: float = Field(0.5, gt=0, le=30, description="read replica states from Serve this often")
    follow_cluster_gpus: bool = Field(False, description="cap max replicas at the cluster's GPUs")
    gpus_per_replica: float = Field(1.0, gt=0, description="= resources.num_gpus, for that cap")
    per_request_loads: bool = Field(
        True, description="with a catalog and sdserve's model-aware dispatcher: count each request's checkpoint "
        "load by where its checkpoint is (resident, host memory, disk; scheduler/collector.py); false: the mean "
        "load per call for every request")
    per_request_adapters: bool = Field(
        False, description="with per_request_loads: count each request's LoRA adapters too (its expected load is "
        "the mean over calls from its checkpoint's tier whose requests named as many adapters)")
    policy: dict[str, Any] = Field(default_factory=dict, description="AutoscalerConfig fields")

    @model_validator(mode="after")
    def _valid_policy(self) -> "ControlLoopSettings":
        from scheduler.autoscaling import AutoscalerConfig

        try:
            AutoscalerConfig(**self.policy)
        except TypeError as error:
            raise ValueError(f"autoscaling.policy: {error}") from None
        return self


class AppSettings(_Section):
    """Everything under ``args:`` in a Serve config file."""

    model: ModelSettings = ModelSettings()
    batching: BatchingSettings = BatchingSettings()
    simulation: SimulationSettings = SimulationSettings()
    limits: LimitSettings = LimitSettings()
    deadlines: DeadlineSettings = DeadlineSettings()
    queue: QueueSettings = QueueSettings()
    memory: MemorySettings = MemorySettings()
    testing: TestingSettings = TestingSettings()
    auth: AuthSettings = AuthSettings()
    resources: ResourceSettings = ResourceSettings()
    autoscaling: ControlLoopSettings = ControlLoopSettings()

    @model_validator(mode="after")
    def _consistent(self) -> "AppSettings":
        if self.deadlines.default_timeout_s > self.deadlines.max_timeout_s:
            raise ValueError("deadlines.default_timeout_s exceeds deadlines.max_timeout_s")
        width, height = self.limits.default_width_height
        if width > self.limits.max_width or height > self.limits.max_height:
            raise ValueError(f"limits.default_size {self.limits.default_size} exceeds the maximum")
        if self.batching.adaptive and self.batching.max_batch_size < 2:
            raise ValueError("batching.adaptive needs batching.max_batch_size >= 2 (the most it may choose)")
        capacity = self.autoscaling.policy.get("capacity_per_replica", 1)
        if self.autoscaling.enabled and capacity != self.batching.max_batch_size:
            raise ValueError(
                f"autoscaling.policy.capacity_per_replica ({capacity}) must equal "
                f"batching.max_batch_size ({self.batching.max_batch_size}): a replica runs that many at once"
            )
        loop, gpus = self.autoscaling, self.resources.num_gpus
        if loop.enabled and loop.follow_cluster_gpus and gpus > 0 and loop.gpus_per_replica != gpus:
            raise ValueError(
                f"autoscaling.gpus_per_replica ({loop.gpus_per_replica}) must equal resources.num_gpus "
                f"({gpus}): the fleet cap counts GPUs the replicas really take"
            )
        return self


#: What a deployment's ``user_config`` may change on running replicas: Ray calls their ``reconfigure``
#: instead of restarting them (no cold start, no reloaded model). Everything else is ``args``, and a
#: change there restarts every replica of the application.
LIVE_KEYS = (
    "deadlines", "queue.drain_window_s", "queue.max_outstanding_per_client", "queue.tenant_weights",
    "limits", "auth", "testing",
    "autoscaling.interval_s", "autoscaling.fleet_poll_s", "autoscaling.policy",
    "batching.batch_wait_timeout_s",
    "memory.budget_fraction", "memory.cpu_budget_mb", "memory.safety_factor", "memory.max_oom_strikes",
    "memory.measure_every_n_calls",
    "simulation.step_time_s", "simulation.scale_with_pixels",
)


def _dotted(tree: dict[str, Any], prefix: str = "") -> list[str]:
    keys = []
    for key, value in tree.items():
        name = f"{prefix}{key}"
        keys += _dotted(value, f"{name}.") if isinstance(value, dict) and value else [name]
    return keys


def _merged(base: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    result = dict(base)
    for key, value in changes.items():
        nested = isinstance(value, dict) and isinstance(result.get(key), dict)
        result[key] = _merged(result[key], value) if nested else value
    return result


def live_settings(args: dict[str, Any], user_config: dict[str, Any] | None) -> AppSettings:
    """``args`` with a deployment's ``user_config`` on top (same shape as ``args``). A key that
    cannot change on a running replica is refused by name."""
    changes = user_config or {}
    fixed = [key for key in _dotted(changes) if not any(key == k or key.startswith(f"{k}.") for k in LIVE_KEYS)]
    if fixed:
        raise ValueError(f"user_config cannot change {', '.join(fixed)} on running replicas: set it under args "
                         f"(restarts the replicas). Live keys: {', '.join(LIVE_KEYS)}")
    return AppSettings.model_validate(_merged(args, changes))


#: Environment variable with ``key=value`` overrides of ``args`` (comma- or space-separated), read by
#: the application builder. It lets ``serve run configs/X.yaml`` run a GPU config on CPU:
#: ``SDSERVE_SET="model.id=tiny resources.num_gpus=0" serve run configs/batched.yaml``.
OVERRIDES_ENV = "SDSERVE_SET"


def parse_assignments(text: str) -> list[str]:
    return [part for part in text.replace(",", " ").split() if part]


def apply_overrides(args: dict[str, Any], assignments: list[str]) -> dict[str, Any]:
    """Return a copy of ``args`` with dotted ``key=value`` assignments applied (values as YAML)."""
    import copy

    import yaml

    result = copy.deepcopy(args)
    for assignment in assignments:
        key, sep, raw = assignment.partition("=")
        if not sep or not key:
            raise ValueError(f"override {assignment!r} is not KEY=VALUE (e.g. model.id=tiny)")
        node = result
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ValueError(f"override {assignment!r}: {part!r} is not a section")
        node[leaf] = yaml.safe_load(raw)
    return result


def load_config(
    path: str | Path,
    overrides: list[str] | None = None,
    deployment_overrides: dict[str, list[str]] | None = None,
) -> dict[str, Any]:
    """Read a Serve config file and apply ``key=value`` overrides to every application's args
    and, per deployment name, to its ``deployments:`` entry (e.g. autoscaling knobs)."""
    import yaml

    try:
        config = yaml.safe_load(Path(path).read_text())
    except yaml.YAMLError as error:
        raise ValueError(f"{path} is not valid YAML: {error}") from None
    if not isinstance(config, dict):
        raise ValueError(f"{path} is not a Serve config (a mapping with 'applications:')")
    for app in config.get("applications", []):
        app["args"] = apply_overrides(app.get("args") or {}, overrides or [])
        deployments = app.get("deployments", [])
        for name, assignments in (deployment_overrides or {}).items():
            matches = [i for i, d in enumerate(deployments) if d.get("name") == name]
            if not matches:
                raise ValueError(f"{path} has no deployment named {name!r}")
            deployments[matches[0]] = apply_overrides(deployments[matches[0]], assignments)
    return config
