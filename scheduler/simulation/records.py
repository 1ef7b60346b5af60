"""What a simulation leaves behind: each replica's life, each request's fate, the fleet over time."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from scheduler.admission import ReplicaRules
from scheduler.simulation.models import Residency


@dataclass(frozen=True)
class CallLearning:
    """What a replica learns from its running call, once it ends (as the live replica does)."""

    call_pixels: int
    steps_done: int
    seconds: float
    all_in_time: bool


@dataclass
class Replica:
    id: int
    started_s: float
    ready_s: float
    cold_start_s: float
    state: str = "starting"  # (pending →) starting → running → (draining →) stopped
    stopped_s: float | None = None
    waiting: list[int] = field(default_factory=list)  # assigned, not yet in a call
    in_call: list[int] = field(default_factory=list)
    busy: bool = False
    calls: int = 0
    batch_timer: int = 0  # token: a stale batch timer is ignored
    cold_started: bool = False  # went through a cold start (initial warm replicas did not)
    rules: ReplicaRules = field(default_factory=ReplicaRules)  # the worker's admission and batch rules
    learning: list[CallLearning] = field(default_factory=list)  # the running call's, learnt when it ends
    models: Residency = field(default_factory=Residency)  # checkpoints it holds (models simulated)
    warming: tuple[str, str] | None = None  # the (checkpoint, adapter) it is loading while idle
    warm_loads: int = 0  # adapters it loaded while idle (FleetSpec.lora_warming)

    @property
    def ongoing(self) -> int:
        return len(self.waiting) + len(self.in_call)


@dataclass
class RequestRecord:
    """One request's fate, in the shape the benchmark's records have."""

    index: int
    arrival_s: float
    n: int
    outcome: str = ""
    done_s: float = 0.0
    start_s: float | None = None
    service_time_s: float | None = None
    batch_images: int | None = None
    replica: int | None = None
    call_s: float | None = None  # how long the call it ran in held the replica (cut short or not)
    call_images: int | None = None  # images in that call
    model_load: str | None = None  # where its checkpoint came from for its call: none, host, disk
    #: it waited in the queue for its checkpoint's read from disk into the node's memory (its
    #: call then copies it from there; ``model_load`` says disk: it was read from disk for it)
    waited_for_read: bool = False
    lora_loads: int = 0  # LoRA adapters its call loaded first
    load_s: float = 0.0  # how long its call loaded its checkpoint and adapters before it ran

    @property
    def latency_s(self) -> float:
        return self.done_s - self.arrival_s

    @property
    def queue_wait_s(self) -> float | None:
        return None if self.start_s is None else self.start_s - self.arrival_s


@dataclass
class SimResult:
    policy: str
    records: list[RequestRecord]
    replicas: list[Replica]
    samples: list[tuple[float, int, int, int]]  # (t, replicas incl. starting/draining, running, outstanding)
    end_s: float
    policy_calls: int
    #: the node's memory's journal, when the spec asked for it (scheduler/simulation/journal.py)
    node_memory_events: list[tuple[float, str, str]] = field(default_factory=list)

    def replica_starts(self) -> int:
        return sum(r.cold_started for r in self.replicas)

    def replica_seconds(self) -> float:
        return sum((r.stopped_s if r.stopped_s is not None else self.end_s) - r.started_s for r in self.replicas)

    def alive_at(self, t: float) -> int:
        """Replicas holding a GPU at time ``t``."""
        return sum(r.started_s <= t and (r.stopped_s is None or r.stopped_s > t) for r in self.replicas)

    def from_time(self, t0: float) -> SimResult:
        """The run as scored from ``t0`` on, what ran before being warm-up: the requests that arrived
        from ``t0``; each replica alive then paid from ``t0`` (a cold start counted only when it
        began there or later); the fleet's samples from ``t0`` (the one before it moved to ``t0``).
        Times are left as they are (a run over before ``t0`` is scored as nothing from ``t0``)."""
        replicas = [dataclasses.replace(r, started_s=max(r.started_s, t0), cold_started=r.cold_started and r.started_s >= t0)
                    for r in self.replicas if r.stopped_s is None or r.stopped_s > t0]
        before = [s for s in self.samples if s[0] < t0]
        samples = ([(t0, *before[-1][1:])] if before else []) + [s for s in self.samples if s[0] >= t0]
        return SimResult(self.policy, [r for r in self.records if r.arrival_s >= t0], replicas, samples,
                         max(self.end_s, t0), self.policy_calls,
                         [event for event in self.node_memory_events if event[0] >= t0])
