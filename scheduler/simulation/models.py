"""Checkpoints on simulated replicas: which are resident, what a miss costs, and where Ray's model
multiplexing and sdserve's dispatcher send a request for one (SIMULATION).

The production trace names each request's checkpoint (87 of them) and the service measured its
checkpoint loads: bimodal, ~2.8 s when the weights were still in the host's memory, ~35 s from disk
(``alibaba-genai-2026-load-latency.csv``). A replica here holds ``models_per_replica`` checkpoints
on its GPU and ``host_models_per_replica`` more in host memory, each an LRU (Ray's
``@serve.multiplexed`` evicts least recently used too); a call for a checkpoint that is not
resident first loads it, from host memory if it is there, else from disk. A replica starts with the
default checkpoint resident (its cold start loaded it). With ``host_models_per_node`` the host tier
is the node's instead (its page cache): one LRU shared by its replicas, which outlives a replica that
stops and keeps what any of them read from disk (all replicas on one node: the trace's 4-GPU fleet).
A checkpoint leaving a GPU becomes its most recently used only where replicas keep what leaves
their GPU in host memory (``host_models_per_replica``); in a page cache alone its files stay where
their last read left them, as live.

Placement, when ``FleetSpec.models_per_replica`` is set:

- **Ray's multiplexing** (``MultiplexMixin`` in Ray 2.60's ``request_router.py``): the first attempt
  considers the replicas that hold the model (none: those with the fewest models, once per model
  until a match shows up again); later attempts, for a random 1–2 s
  (``RAY_SERVE_MULTIPLEXED_MODEL_ID_MATCHING_TIMEOUT_S`` = 1, drawn anew from [T, 2T) at every
  check), the replicas with the fewest models; then once more those, then any. Each attempt then
  draws two of the candidates (power of two choices);
- **sdserve's dispatcher**: among the replicas with a free slot, by ``scheduler/placement.py``'s
  rule, as live: where the model is, else where it is in host memory; then the fewest of the
  request's LoRAs to load, the fewest calls running, and so on.
"""

from __future__ import annotations

import random
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from scheduler.load_timing import LoadTiming
from scheduler.placement import FreeReplica, choose_replica

if TYPE_CHECKING:
    from scheduler.simulation.records import Replica
    from scheduler.simulation.workload import FleetSpec

NONE, HOST, DISK = "none", "host", "disk"
LORA = "lora"  # adapter loads, timed apart from checkpoints


@dataclass
class Residency:
    """One replica's checkpoints: on the GPU and in host memory, least recently used first."""

    device: OrderedDict[str, None] = field(default_factory=OrderedDict)
    host: OrderedDict[str, float] = field(default_factory=OrderedDict)  # checkpoint -> when its copy is whole
    loras: OrderedDict[tuple[str, str], None] = field(default_factory=OrderedDict)  # (checkpoint, adapter id)
    #: loads since the start as the live catalog times them, by where it saw them come from
    timed: dict[str, LoadTiming] = field(default_factory=dict)

    def holds(self, model: str) -> bool:
        return model in self.device

    def timed_load(self, tier: str, seconds: float, spec: FleetSpec) -> None:
        """A checkpoint load for a call, timed as live: the catalog knows only its own host memory,
        so a read the node's page cache made quick counts as a (fast) load from disk."""
        if tier != NONE:
            self._timing(HOST if tier == HOST and not spec.host_models_per_node else DISK).add(1, seconds)

    def _timing(self, kind: str) -> LoadTiming:
        return self.timed.setdefault(kind, LoadTiming())

    def expected_load_s(self, model: str, loras: tuple[str, ...], spec: FleetSpec) -> float:
        """What the replica's deadline rules expect a call of ``model`` with ``loras`` to spend
        loading, as the live catalog does: its own mean load from the tier the checkpoint would come
        from, plus the adapters not loaded into it by its mean adapter load (0 until measured)."""
        adapters = {name.partition(":")[0] for name in loras}
        if model in self.device:
            return self._timing(LORA).expected_s(len({lora for lora in adapters if (model, lora) not in self.loras}))
        own_host = not spec.host_models_per_node and model in self.host
        return self._timing(HOST if own_host else DISK).expected_s() + self._timing(LORA).expected_s(len(adapters))

    def load_loras(self, model: str, loras: tuple[str, ...], spec: FleetSpec) -> tuple[int, float]:
        """Make a call's adapters resident on ``model`` (resident already): how many loaded, how long.
        The scale is per call; the adapter is loaded once. Least recently used out beyond the budget."""
        loaded = 0
        for lora in dict.fromkeys(name.partition(":")[0] for name in loras):
            key = (model, lora)
            if key in self.loras:
                self.loras.move_to_end(key)
            else:
                self.loras[key] = None
                loaded += 1
        while len(self.loras) > max(spec.loras_per_replica, len(set(loras))):
            self.loras.popitem(last=False)
        if loaded:
            self._timing(LORA).add(loaded, loaded * spec.lora_load_s)
        return loaded, loaded * spec.lora_load_s

    def load(self, model: str, spec: FleetSpec, now: float = 0.0) -> tuple[str, float]:
        """Make ``model`` resident for a call at ``now``: where it came from and how long that took (a
        copy still being read into host memory, :func:`prefetch`, first finishes its read)."""
        if model in self.device:
            self.device.move_to_end(model)
            return NONE, 0.0
        if model in self.host:
            pending = max(0.0, self.host[model] - now)
            tier, seconds = (DISK if pending else HOST), pending + spec.model_load_host_s
        else:
            tier, seconds = DISK, spec.model_load_disk_s
        shared = spec.host_models_per_node > 0  # the node's pool: a copy stays for the other replicas
        if shared:  # as the node's page cache keeps the files a load read from disk, once it has read them
            if model not in self.host:
                self.host[model] = now + seconds
            self.host.move_to_end(model)
        else:
            self.host.pop(model, None)
        self.device[model] = None
        while len(self.device) > spec.models_per_replica:
            evicted, _ = self.device.popitem(last=False)
            for key in [key for key in self.loras if key[0] == evicted]:  # its adapters leave with it
                del self.loras[key]
            if spec.host_models_per_replica:  # the replica keeps it in host memory (its own, or the node's)
                self.host[evicted] = 0.0
                self.host.move_to_end(evicted)
        while len(self.host) > (spec.host_models_per_node if shared else spec.host_models_per_replica):
            self.host.popitem(last=False)
        return tier, seconds


def prefetch(host: OrderedDict[str, float], model: str, now: float, spec: FleetSpec) -> bool:
    """Start reading ``model`` from disk into the node's host memory at ``now`` (sdserve's dispatcher
    does when a request for a checkpoint held nowhere arrives, so the read overlaps the request's
    wait for a replica); least recently used out beyond the budget. False: it is there already."""
    if model in host:
        return False
    host[model] = now + max(0.0, spec.model_load_disk_s - spec.model_load_host_s)
    while len(host) > spec.host_models_per_node:
        host.popitem(last=False)
    return True


def fewest_models(replicas: list[Replica]) -> list[Replica]:
    fewest = min(len(r.models.device) for r in replicas)
    return [r for r in replicas if len(r.models.device) == fewest]


@dataclass
class MuxState:
    """Ray's routing context of one request, as far as multiplexing goes."""

    started_s: float | None = None
    tried_first: bool = False
    tried_fewest: bool = False


class RayMultiplexing:
    """The candidate replicas Ray's ``apply_multiplex_routing`` offers one routing attempt."""

    def __init__(self, rng: random.Random, matching_timeout_s: float = 1.0) -> None:
        self.rng, self.matching_timeout_s = rng, matching_timeout_s
        self.fallback: set[str] = set()  # models with no match seen, fallen back once already
        self.states: dict[int, MuxState] = {}

    def candidates(self, i: int, model: str, running: list[Replica], now: float) -> list[Replica]:
        state = self.states.setdefault(i, MuxState())
        if state.started_s is None:
            state.started_s = now
        timeout = self.rng.uniform(self.matching_timeout_s, 2 * self.matching_timeout_s)
        if now - state.started_s < timeout:
            holding = [r for r in running if r.models.holds(model)]
            if (not holding and model not in self.fallback) or state.tried_first:
                holding = fewest_models(running)
                self.fallback.add(model)
            elif holding:
                self.fallback.discard(model)
            state.tried_first = True
            return holding
        if not state.tried_fewest:
            state.tried_fewest = True
            return fewest_models(running)
        return running

    def routed(self, i: int) -> None:
        self.states.pop(i, None)


def dispatcher_choice(free: list[Replica], model: str, loras: tuple[str, ...] = (),
                      last_sent: Mapping[str, float] | None = None) -> Replica:
    """sdserve's placement among replicas with a free slot: ``scheduler/placement.py``'s rule, the
    one ``serve/dispatcher.py`` follows live."""
    views = {r.id: r for r in free}
    chosen = choose_replica([FreeReplica(r.id, r.ongoing, r.models.device, r.models.host, r.models.loras)
                             for r in free], model, loras, last_sent)
    return views[chosen.replica_id]
