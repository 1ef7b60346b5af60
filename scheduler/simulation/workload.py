"""What the simulator replays and against what: requests, the service-time model, the fleet's rules.

The service-time model is passed in as a plain callable (``scheduler/`` does not import
``models/``); the benchmark CLI wires in the simulated A10 profile from ``models/simulated.py``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

#: Seconds one pipeline call takes: ``(images in the call, pixels per image, steps) -> seconds``.
ServiceModel = Callable[[int, int, int], float]

from scheduler.collector import REFERENCE_PIXELS

#: Replica start → ready when nothing better is known: the production trace's median base-model
#: load (``alibaba-genai-2026-load-latency.csv``, checkpoint switches, p50).
TRACE_MEDIAN_COLD_START_S = 22.7


@dataclass(frozen=True)
class SimRequest:
    """One request: when it arrives, its images and steps, its size, and its deadline."""

    arrival_s: float
    n: int = 1
    steps: int = 25
    pixels: int = REFERENCE_PIXELS  # per image (width × height)
    timeout_s: float = 120.0  # relative deadline, as the live ingress assigns it
    tenant: str = ""  # who sent it (the trace's groupId): the dispatcher's fairness is across tenants
    model: str = ""  # its checkpoint (the trace's checkpoint_model_version_id); used when models are simulated
    kind: str = "text"  # text, img2img or inpaint: a call holds one kind; ``steps`` are the ones it runs
    loras: tuple[str, ...] = ()  # its LoRA adapters ("id:scale"): a call holds one (checkpoint, LoRA set)


#: Which replicas a scale-down stops (``FleetSpec.stop_order``).
STOP_ORDERS = ("ray", "least-loss")


@dataclass(frozen=True)
class FleetSpec:
    """The live system's rules the simulator reproduces; each field names its live counterpart.

    ``control_interval_s`` is Ray's control loop (``RAY_SERVE_CONTROL_LOOP_INTERVAL_S`` = 0.1 s) and
    sdserve's (``autoscaling.interval_s``): see :mod:`scheduler.simulation.control`.
    """

    max_batch_size: int = 1  # batching.max_batch_size (1: single, the FaaS setting)
    batch_wait_timeout_s: float = 0.05  # batching.batch_wait_timeout_s
    adaptive: bool = False  # batching.adaptive: each call's size from the replica's learned model
    adaptive_min_calls: int = 4  # batching.adaptive_min_calls
    adaptive_margin: float = 1.1  # batching.adaptive_margin
    max_ongoing_requests: int = 1  # the deployment's max_ongoing_requests
    max_queued_requests: int = 64  # the deployment's max_queued_requests (-1: unbounded) → 503
    cold_start_s: float = TRACE_MEDIAN_COLD_START_S  # replica start → ready
    cold_start_jitter_s: float = 0.0  # uniform ± jitter on each cold start
    #: With models replayed, a cold start made of its parts: this (± jitter: starting the process,
    #: imports, building the pipeline) plus the load of the checkpoint the replica starts with, from
    #: where it is then (host memory: ``model_load_host_s``; disk: ``model_load_disk_s``). None:
    #: ``cold_start_s`` for every cold start, whatever tier its checkpoint comes from.
    cold_start_overhead_s: float | None = None
    #: Replica by replica, in the order they are asked for (cycling): each cold start, e.g. a live
    #: run's measured ones (sdserve-bench validate). Empty: ``cold_start_s`` ± jitter for all.
    cold_starts_s: tuple[float, ...] = ()
    #: What replicas report as their cold start (the worker measures process start → ready, not
    #: Ray's scheduling before the process exists). None: the cold start itself.
    reported_cold_start_s: float | None = None
    #: Replica by replica, in the order they are made (cycling): what each reports, e.g. a live
    #: run's replicas' own reports in the order they first replied (sdserve-bench validate), since
    #: the loop learns from the latest. Empty: ``reported_cold_start_s`` for all.
    reported_cold_starts_s: tuple[float, ...] = ()
    initial_replicas: int = 0  # replicas running (warm) at t = 0
    #: GPUs for replicas: a replica beyond them waits (PENDING, unpaid) until a stopping one frees
    #: its GPU, as Ray's scheduler holds it. None: unlimited.
    gpu_slots: int | None = None
    shed_hopeless: bool = True  # deadlines.shed_hopeless: refuse what the replica's model says is too late
    #: Per-call time outside the pipeline (HTTP, proxy, ingress and handle hops), added to every
    #: call: it holds the replica's slot and the client's latency alike. Measured live when the
    #: simulator is validated (sdserve-bench validate), else 0.
    request_overhead_s: float = 0.0
    #: sdserve's dispatcher (``queue.dispatch``): requests wait in its fair queue (across tenants,
    #: earliest deadline first within one) and go to a replica the instant it has a free slot,
    #: followed by the next ones of the same shape. False: Ray's router, as below.
    dispatch: bool = False
    #: with dispatch: a request this close to its due time goes first (``queue.urgent_within_s``), its
    #: due time its arrival plus ``due_within_s`` (``autoscaling.policy.latency_objective_s``) if set
    urgent_within_s: float | None = None
    due_within_s: float | None = None
    #: Ray's router (``RAY_SERVE_ROUTER_RETRY_*``): a queued request is routed by a task that polls
    #: for a free slot, backing off from this (0: a freed slot is filled at once, no polling) ...
    router_initial_backoff_s: float = 0.025
    router_backoff_multiplier: float = 2.0
    router_max_backoff_s: float = 0.5  # ... to this cap
    router_tasks_per_replica: int = 2  # routing tasks per running replica (Ray: 2, at most 50)
    #: Checkpoints (:mod:`scheduler.simulation.models`): how many one replica holds on its GPU
    #: (0: requests' models are not simulated, every replica serves every request as it is) ...
    models_per_replica: int = 0
    host_models_per_replica: int = 0  # ... and in host memory, loaded from there in
    model_load_host_s: float = 2.8  # (the trace's fast mode of checkpoint loads), else from disk in
    model_load_disk_s: float = 35.0  # (its slow mode)
    default_model: str = ""  # resident on a replica from its start (its cold start loaded it)
    model_preload: bool = False  # a new replica loads what the queue needs most instead (scheduler/preload.py)
    host_models_per_node: int = 0  # >0: host memory is the node's, shared by its replicas and outliving them
    #: sdserve's dispatcher starts reading a request's checkpoint from disk into the node's host
    #: memory when the request arrives, if no replica holds it (the read overlaps the queue wait)
    host_prefetch: bool = False
    #: ... and a request whose checkpoint is still being read waits for it in the queue, the free
    #: replicas taking the requests behind it (scheduler/preload.py: pass_over_reads)
    wait_for_reads: bool = False
    #: ... and reads the checkpoints it predicts from the past days' uses at this time of day into
    #: it (scheduler/prewarm.py: the days looked back; 0: off)
    prewarm_days: int = 0
    #: ... the pre-warm's day, window and period compressed this many times, as live on the
    #: simulated backend compressed by ``simulation.time_scale`` (sdserve-bench validate)
    prewarm_time_scale: float = 1.0
    #: keep the node's memory's journal (scheduler/simulation/journal.py), for lining a live replay up
    journal_node_memory: bool = False
    #: LoRA adapters a replica keeps loaded (model.resident_loras; 0: LoRAs are not simulated), each
    #: loaded onto one checkpoint and gone when that checkpoint leaves the GPU; a load takes
    loras_per_replica: int = 0
    lora_load_s: float = 4.4  # (the production trace's LoRA load median)
    #: a what-if (scheduler/simulation/lora_warming.py): an idle replica loads, one at a time, the
    #: adapters its checkpoints' requests used most in the last day, up to this many per checkpoint
    #: (0: off)
    lora_warming: int = 0
    #: sdserve's dispatcher ignores where checkpoints are (any free replica; a miss pays a load): the
    #: model-blind baseline
    model_blind: bool = False
    #: the dispatcher tells the control loop where each request's checkpoint is (autoscaling.per_request_loads)
    per_request_loads: bool = True
    #: the control loop counts each request's adapters in its load (autoscaling.per_request_adapters)
    per_request_adapters: bool = False
    #: Which replicas a scale-down stops: "ray", Ray 2.60's order (starting replicas first, then the
    #: newest running: ``deployment_scheduler._get_replicas_to_stop``), or "least-loss", a what-if
    #: that Ray offers no way to choose: the running replicas whose stop loses least first
    #: (scheduler/simulation/replicas.py: ``least_loss_first``)
    stop_order: str = "ray"
    control_interval_s: float = 0.1
    #: Call the policy at every ``control_interval_s`` grid point, as the live loop does, instead of
    #: only where its answer may change (the reference the faster schedule is tested against).
    every_interval: bool = False
    seed: int = 0

    def cold_start_with(self, checkpoint_s: float, jitter_s: float = 0.0) -> float:
        """A cold start ``jitter_s`` off whose first checkpoint loads in ``checkpoint_s``: that load
        counts only in a cold start in parts (``cold_start_overhead_s``, with models replayed)."""
        if self.cold_start_overhead_s is None or not self.models_per_replica:
            return max(0.0, self.cold_start_s + jitter_s)
        return max(0.0, self.cold_start_overhead_s + jitter_s) + checkpoint_s

    @property
    def tells_loads(self) -> bool:
        """Whether sdserve's dispatcher tells the control loop where each request's checkpoint comes
        from (live: ``autoscaling.per_request_loads``, ``queue.dispatch`` and ``queue.model_aware`` with
        a catalog)."""
        return bool(self.models_per_replica) and self.dispatch and not self.model_blind and self.per_request_loads

    def __post_init__(self) -> None:
        if self.max_batch_size < 1 or self.max_ongoing_requests < 1:
            raise ValueError("max_batch_size and max_ongoing_requests must be >= 1")
        if self.cold_start_s < 0 or self.cold_start_jitter_s < 0:
            raise ValueError("cold_start_s and cold_start_jitter_s must be >= 0")
        if self.cold_start_overhead_s is not None:
            if self.cold_start_overhead_s < 0:
                raise ValueError("cold_start_overhead_s must be >= 0")
            if self.cold_starts_s:
                raise ValueError("give cold_starts_s (measured, whole) or cold_start_overhead_s (in parts), not both")
        if self.control_interval_s <= 0:
            raise ValueError("control_interval_s must be > 0")
        if self.stop_order not in STOP_ORDERS:
            raise ValueError(f"stop_order must be one of {', '.join(STOP_ORDERS)}, got {self.stop_order!r}")
