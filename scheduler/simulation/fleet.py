"""The discrete-event fleet simulator: arrivals → router queue → replicas → outcomes, over days.

Pure and deterministic for a seed: no Ray, no torch, no sleeping. It reproduces the live system's
rules, each in its own part: Ray Serve's router (:mod:`.router`), replicas' lives (:mod:`.replicas`),
pipeline calls by the worker's own admission and batching rules (:mod:`.calls`), and the control
loop with its policy (:mod:`.control`). This module holds them together: the clock, the requests,
and each request's one answer.
"""

from __future__ import annotations

import random

from scheduler.collector import CallReport, PendingJob
from scheduler.outcomes import Outcome
from scheduler.placement import adapter_ids
from scheduler.simulation.calls import CallRunner
from scheduler.simulation.control import ControlTicks
from scheduler.simulation.events import Event, EventQueue
from scheduler.simulation.gpus import GpuSlots
from scheduler.simulation.policies import ControlPolicy
from scheduler.simulation.records import RequestRecord, SimResult
from scheduler.simulation.replicas import ReplicaPool
from scheduler.simulation.router import Router
from scheduler.simulation.workload import FleetSpec, ServiceModel, SimRequest


class Simulator:
    def __init__(self, requests: list[SimRequest], spec: FleetSpec, service: ServiceModel,
                 policy: ControlPolicy, gpus: GpuSlots | None = None) -> None:
        """``gpus``: a GPU cap shared with other fleets (scheduler/simulation/gpus.py); by default
        the fleet's own, ``spec.gpu_slots``."""
        self.requests = sorted(requests, key=lambda r: r.arrival_s)
        self.spec, self.service, self.policy = spec, service, policy
        self.rng = random.Random(spec.seed)
        self.records = [RequestRecord(i, r.arrival_s, r.n) for i, r in enumerate(self.requests)]
        self.deadline = [r.arrival_s + r.timeout_s for r in self.requests]
        self.events = EventQueue()
        self.now = 0.0
        self.gpus = gpus if gpus is not None else GpuSlots(spec.gpu_slots)
        self.pool, self.router, self.calls = ReplicaPool(self), Router(self), CallRunner(self)
        self.control = ControlTicks(self, policy)
        self.outstanding = 0  # accepted, not answered
        self.resolved = 0
        self.reports: dict[int, CallReport] = {}  # ok requests' replies, told to the policy when answered
        self.samples: list[tuple[float, int, int, int]] = []
        self._handlers = {Event.ARRIVE: self._arrive, Event.READY: self.pool.ready, Event.FINISH: self._finish,
                          Event.CALL_DONE: self.calls.call_done, Event.EXPIRE: self._expire,
                          Event.BATCH: self.calls.batch_timer, Event.TICK: self.control.tick,
                          Event.ROUTE: self.router.route, Event.PREWARM: self.pool.prewarm,
                          Event.WARMED: self.pool.warmed}

    def run(self) -> SimResult:
        self.start()
        while self.events and self.resolved < len(self.requests):
            self.step()
        return self.result(self.records_end())

    def start(self) -> None:
        """The fleet at time 0 (its warm replicas) and every arrival, as events."""
        for _ in range(self.spec.initial_replicas):
            self.pool.new(0.0, cold=False)
        self.control.target = self.spec.initial_replicas
        for i, request in enumerate(self.requests):
            self.events.push(request.arrival_s, Event.ARRIVE, i)
        if self.control.target:
            self.control.schedule(0.0)
        if self.pool.prewarms() is not None:
            self.events.push(0.0, Event.PREWARM)

    def step(self) -> None:
        """The next event."""
        self.now, kind, a, b = self.events.pop()
        if kind in (Event.FINISH, Event.BATCH):
            self._handlers[kind](a, b)
        else:
            self._handlers[kind](a)
        if self.control.watching and kind is not Event.TICK:
            self.control.changed()
        self._sample()

    def records_end(self) -> float:
        """When the last request was answered."""
        return max((r.done_s for r in self.records), default=0.0)

    def result(self, end_s: float) -> SimResult:
        """The run so far, ending at ``end_s`` (a replica still up is paid until then)."""
        events = getattr(self.pool.node_host, "events", [])  # a journal, when the spec asked for one
        return SimResult(self.policy.name, self.records, self.pool.all, self.samples, end_s, self.control.calls,
                         list(events))

    def _sample(self) -> None:
        active = self.pool.active
        point = (len(active), sum(1 for r in active if r.state == "running"), self.outstanding)
        if not self.samples or self.samples[-1][1:] != point:
            self.samples.append((self.now, *point))

    def counts_changed(self) -> None:
        self.control.counts_changed()

    def _arrive(self, i: int) -> None:
        if self.router.full():
            self._answer(i, Outcome.OVERLOADED)
            return
        r = self.requests[i]
        adapters = len(adapter_ids(r.loras)) if self.spec.per_request_adapters else None
        self.policy.accepted(str(i), PendingJob(r.arrival_s, self.deadline[i], r.n, r.steps, r.pixels, adapters))
        self.outstanding += 1
        self.events.push(self.deadline[i], Event.EXPIRE, i)
        self.router.enqueue(i)
        self.pool.arrived(r.model, r.loras)
        self.counts_changed()
        self.control.changed()

    def _expire(self, i: int) -> None:
        if not self.router.withdraw(i):
            return  # in a call or answered: its own finish answers it
        self._accepted_answered(i)
        self._answer(i, Outcome.DEADLINE)
        self.counts_changed()
        self.control.changed()

    def _finish(self, i: int, ok: int) -> None:
        """A request's answer from its replica (``ok``: with its images)."""
        self.records[i].done_s = self.now
        if ok:
            self.policy.replied(self.reports.pop(i))
        self._accepted_answered(i)
        self.resolved += 1
        self.counts_changed()
        self.control.changed()

    def _accepted_answered(self, i: int) -> None:
        self.outstanding -= 1
        self.policy.answered(str(i))

    def _answer(self, i: int, outcome: Outcome) -> None:
        record = self.records[i]
        record.outcome, record.done_s = outcome, self.now
        self.resolved += 1


def simulate(requests: list[SimRequest], spec: FleetSpec, service: ServiceModel,
             policy: ControlPolicy) -> SimResult:
    """Replay ``requests`` against a fleet run by ``policy``; every request gets one outcome."""
    return Simulator(requests, spec, service, policy).run()
