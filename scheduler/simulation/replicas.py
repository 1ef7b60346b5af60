"""Replicas' lives in the simulator: started (cold start, waiting for a GPU), ready, stopped.

Ray stops starting replicas first, then the newest running ones (``FleetSpec.stop_order``: or, a
what-if, those whose stop loses least); a running replica that is stopped finishes what it holds
(graceful shutdown) and pays until then. A replica beyond the GPUs
(``FleetSpec.gpu_slots``, or a cap shared with other fleets: :mod:`.gpus`) waits unpaid, as Ray's
scheduler holds it PENDING, until a stopping one frees its GPU.
"""

from __future__ import annotations

import bisect
import math
from collections import OrderedDict
from typing import TYPE_CHECKING

from scheduler.adaptive_batching import AdaptiveConfig
from scheduler.admission import ReplicaRules
from scheduler.collector import tier_of
from scheduler.preload import preload_choice
from scheduler.prewarm import PrewarmConfig, prewarm_plan
from scheduler.simulation.events import Event
from scheduler.simulation.journal import JournaledMemory
from scheduler.simulation.lora_warming import AdapterUses, next_to_warm
from scheduler.simulation.models import prefetch
from scheduler.simulation.records import Replica

if TYPE_CHECKING:
    from scheduler.simulation.fleet import Simulator


class ReplicaPool:
    def __init__(self, sim: Simulator) -> None:
        self.sim = sim
        self.all: list[Replica] = []
        self.active: list[Replica] = []  # holding a GPU: starting, running, draining
        self.pending: list[Replica] = []  # wanted, waiting for a GPU (not paid)
        #: the node's host memory (host_models_per_node), with its journal when the spec asks for one
        self.node_host: OrderedDict[str, float] = (JournaledMemory(lambda: sim.now) if sim.spec.journal_node_memory
                                                   else OrderedDict())
        self.reads: dict[str, float] = {}  # checkpoints the prefetch is reading into it → when each read ends
        self.uses: dict[str, list[float]] = {}  # checkpoint → its requests' arrival times (the pre-warm's history)
        self.adapter_uses = AdapterUses()  # each checkpoint's adapters, as used (FleetSpec.lora_warming)
        self.cold_asked = 0  # replicas asked for that start cold (the index into spec.cold_starts_s)
        self._views: list[tuple[float, int, int]] = [(0.0, 0, 0)]  # (time, running, starting) as Serve shows them

    def viewed(self) -> None:
        """Record the fleet as Serve shows it (RUNNING, on the way), when it changed: policies that
        read it every half second see it as it was then. A change is news to the control loop."""
        view = (len(self.running()), self.starting())
        if view != self._views[-1][1:]:
            now = self.sim.now
            if self._views[-1][0] == now:
                self._views[-1] = (now, *view)
            else:
                self._views.append((now, *view))
            self.sim.control.fleet_changed()

    def view_at(self, t: float) -> tuple[int, int]:
        """(running, starting) at time ``t`` (not before the last change ``t`` is about)."""
        index = bisect.bisect_right(self._views, (t, math.inf, math.inf)) - 1
        return self._views[max(0, index)][1:]

    def running(self) -> list[Replica]:
        return [r for r in self.active if r.state == "running"]

    def starting(self) -> int:
        """Replicas asked for and not running yet (waiting for a GPU or starting)."""
        return len(self.pending) + sum(1 for r in self.active if r.state == "starting")

    def free(self, slots: int) -> list[Replica]:
        return [r for r in self.active if r.state == "running" and r.ongoing < slots]

    def _rules(self) -> ReplicaRules:
        spec = self.sim.spec
        adaptive = AdaptiveConfig(max_batch_size=spec.max_batch_size, min_calls=spec.adaptive_min_calls,
                                  margin=spec.adaptive_margin) if spec.adaptive else None
        return ReplicaRules(shed_hopeless=spec.shed_hopeless, adaptive=adaptive)

    def new(self, now: float, cold: bool = True) -> Replica:
        """A replica asked for at ``now``: it starts (or waits for a GPU); ``cold`` False: already warm."""
        spec = self.sim.spec
        replica = Replica(len(self.all), now, now, 0.0, rules=self._rules())
        if spec.host_models_per_node:
            replica.models.host = self.node_host  # the node's host memory: shared, outlives replicas
        checkpoint_s = 0.0
        if spec.models_per_replica and spec.default_model:
            _, checkpoint_s = replica.models.load(self._preload() if spec.model_preload else spec.default_model,
                                                  spec, now)
        if cold:
            replica.cold_start_s = self._cold_start(checkpoint_s)
            replica.ready_s = now + replica.cold_start_s
        else:  # warm from the start: what it reports as its cold start
            replica.cold_start_s = spec.cold_start_with(spec.model_load_host_s)
        self.all.append(replica)
        if not self.sim.gpus.take(force=not cold):
            replica.state = "pending"  # no GPU free until a stopping replica lets go of one
            self.pending.append(replica)
            self.sim.gpus.wait(self, replica)
        else:
            self.active.append(replica)
            if cold:
                replica.cold_started = True
                self.sim.events.push(replica.ready_s, Event.READY, replica.id)
            else:
                replica.state = "running"  # warm from the start
        self.viewed()
        return replica

    def _cold_start(self, checkpoint_s: float) -> float:
        """The next cold start: as measured, replica by replica; else the spec's, ± jitter, with
        ``checkpoint_s`` (the load of the checkpoint the replica starts with) in a cold start in parts."""
        spec = self.sim.spec
        self.cold_asked += 1
        if spec.cold_starts_s:
            return spec.cold_starts_s[(self.cold_asked - 1) % len(spec.cold_starts_s)]
        jitter_s = self.sim.rng.uniform(-spec.cold_start_jitter_s, spec.cold_start_jitter_s)
        return spec.cold_start_with(checkpoint_s, jitter_s)

    def arrived(self, model: str, loras: tuple[str, ...] = ()) -> None:
        """A request for ``model`` arrived: the pre-warm's history; with ``host_prefetch``, read it
        into the node's host memory now if no replica holds it on its GPU and it is not there already."""
        spec = self.sim.spec
        if model:
            self.uses.setdefault(model, []).append(self.sim.now)
            if spec.lora_warming and loras:
                self.adapter_uses.add(self.sim.now, model, loras)
        if spec.host_prefetch and spec.host_models_per_node and model and \
                not any(r.models.holds(model) for r in self.active + self.pending):
            self._prefetch(model)

    def _prefetch(self, model: str) -> None:
        if prefetch(self.node_host, model, self.sim.now, self.sim.spec):
            self.reads[model] = self.node_host[model]

    def reading(self) -> dict[str, float]:
        """The prefetch's and the pre-warm's reads under way: checkpoint → when it ends."""
        now = self.sim.now
        for model in [m for m, ends in self.reads.items() if ends <= now or self.node_host.get(m) != ends]:
            del self.reads[model]  # done, or evicted before it was read
        return self.reads

    def prewarms(self) -> PrewarmConfig | None:
        """The pre-warm's config, if it runs: it reads into the node's memory, as the prefetch."""
        spec = self.sim.spec
        if spec.prewarm_days and spec.host_prefetch and spec.host_models_per_node:
            return PrewarmConfig(days=spec.prewarm_days).compressed(spec.prewarm_time_scale)
        return None

    def prewarm(self, _: int = 0) -> None:
        """Every ``period_s``: keep the predicted checkpoints in the node's memory and read more
        (scheduler/prewarm.py)."""
        config = self.prewarms()
        if config is None:
            return
        now, spec = self.sim.now, self.sim.spec
        on_device = {model for r in self.active + self.pending for model in r.models.device}
        plan = prewarm_plan(self.uses, now, self.node_host, spec.host_models_per_node, on_device, config)
        for model in plan.keep:
            self.node_host.move_to_end(model)
        for model in plan.read:
            self._prefetch(model)
        self.sim.events.push(now + config.period_s, Event.PREWARM)

    def _preload(self) -> str:
        """The checkpoint a new replica loads during its cold start: what the queue needs most per
        replica already holding it (running, starting or waiting for a GPU)."""
        sim = self.sim
        held = [r.models.device for r in self.active + self.pending]
        return preload_choice([sim.requests[i].model for i in sim.router.waiting()], held, sim.spec.default_model)

    def expected_tiers(self, waiting: list[int]) -> dict[str, str]:
        """Where each waiting request's checkpoint would come from now, as the dispatcher sees it:
        a replica's device (running, starting or waiting for a GPU), host memory, else disk."""
        everyone = self.active + self.pending
        on_device = {model for r in everyone for model in r.models.device}
        in_host = {model for r in everyone for model in r.models.host} | set(self.node_host)
        return {str(i): tier_of(self.sim.requests[i].model, on_device, in_host) for i in waiting}

    def release(self, replica: Replica) -> None:
        """``replica`` stopped: its GPU goes to the replica that has waited longest for one."""
        replica.state, replica.stopped_s = "stopped", self.sim.now
        self.active.remove(replica)
        self.sim.gpus.let_go(self.sim.now)
        self.viewed()

    def start_pending(self, replica: Replica, now: float) -> None:
        """A GPU let go at ``now`` (here, or in a fleet sharing the cap) goes to ``replica``, waiting
        for one: its start begins."""
        self.sim.now = max(self.sim.now, now)
        self.pending.remove(replica)
        replica.state, replica.started_s = "starting", now
        replica.ready_s = now + replica.cold_start_s
        replica.cold_started = True
        self.active.append(replica)
        self.sim.events.push(replica.ready_s, Event.READY, replica.id)
        self.viewed()

    def ready(self, rid: int) -> None:
        replica = self.all[rid]
        if replica.state == "starting":
            replica.state = "running"
            self.sim.router.dispatch()
            self.sim.counts_changed()
            self.viewed()
            self.warm(replica)

    def warm(self, replica: Replica) -> None:
        """With ``lora_warming``: if ``replica`` runs with nothing to do, start loading the next
        adapter its checkpoints' requests used most (scheduler/simulation/lora_warming.py)."""
        spec, now = self.sim.spec, self.sim.now
        if not (spec.lora_warming and spec.loras_per_replica) or replica.state != "running" \
                or replica.busy or replica.waiting:
            return
        pick = next_to_warm(replica.models.device, replica.models.loras,
                            lambda model: self.adapter_uses.top(model, now, spec.lora_warming))
        if pick is not None:
            replica.busy, replica.warming = True, pick
            self.sim.events.push(now + spec.lora_load_s, Event.WARMED, replica.id)

    def warmed(self, rid: int) -> None:
        """An idle replica's adapter load ended: the adapter is loaded (its checkpoint cannot have
        left the GPU: only calls evict); then what was sent to it meanwhile, or the next adapter."""
        replica, spec = self.all[rid], self.sim.spec
        model, adapter = replica.warming or ("", "")
        replica.busy, replica.warming = False, None
        if model in replica.models.device:
            replica.models.load_loras(model, (adapter,), spec)
            replica.warm_loads += 1
        if replica.state == "draining" and not replica.waiting:
            self.release(replica)
        elif replica.waiting:
            self.sim.calls.assigned(replica)
        else:
            self.sim.router.dispatch()
            self.warm(replica)

    def release_if_drained(self, replica: Replica) -> None:
        if replica.state == "draining" and not replica.busy and not replica.waiting:
            self.release(replica)

    def _stop(self, replica: Replica) -> None:
        if replica.state == "pending":
            replica.state, replica.stopped_s = "stopped", replica.started_s  # never held a GPU: free
            self.pending.remove(replica)
            self.sim.gpus.cancel(replica)
        elif replica.state == "running" and (replica.busy or replica.waiting):
            replica.state = "draining"
        else:
            self.release(replica)
        self.viewed()

    def apply_target(self, target: int) -> None:
        alive = self.pending + [r for r in self.active if r.state in ("starting", "running")]
        if target > len(alive):
            for _ in range(target - len(alive)):
                self.new(self.sim.now)
        elif target < len(alive):
            not_running = [r for r in alive if r.state != "running"][::-1]
            running = [r for r in alive if r.state == "running"][::-1]
            if self.sim.spec.stop_order == "least-loss":
                running = least_loss_first(running, self.uses, self.sim.now)
            for replica in (not_running + running)[: len(alive) - target]:
                self._stop(replica)


#: How far back a checkpoint's requests count towards what losing its only GPU copy costs.
LOSS_WINDOW_S = 3600.0


def least_loss_first(running: list[Replica], uses: dict[str, list[float]], now: float) -> list[Replica]:
    """``running`` (in Ray's order, newest first) reordered so a scale-down stops first the replica
    whose stop loses least: the fewest requests in the last ``LOSS_WINDOW_S`` for the checkpoints
    no other of them holds on its GPU (each such request would load it again), Ray's order among
    equals. Busy or idle does not count: a busy replica drains its call, paid either way, while the
    idle one left takes the next request (on days 1–11 of the production trace, stopping idle
    replicas first, or busy ones first, scored below this rule without the node's memory and no
    better with it). ``uses``: each checkpoint's arrival times."""
    def recent(model: str) -> int:
        times = uses.get(model, [])
        return len(times) - bisect.bisect_left(times, now - LOSS_WINDOW_S)

    def loss(replica: Replica) -> int:
        others = {model for other in running if other is not replica for model in other.models.device}
        return sum(recent(model) for model in replica.models.device if model not in others)

    return sorted(running, key=loss)
