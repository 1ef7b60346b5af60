"""The control loop in the simulator: when the policy is called, what it sees, and its target applied.

The policy is called every ``control_interval_s`` while anything is queued or starting
(``idle_control_interval_s`` otherwise: only scale-down decisions are possible then, and a second
of error on a keep-alive of minutes is noise); an arrival brings the next call forward to the
interval's grid, as the live loop ticking every 0.1 s sees even a short request. With no replica, no
request and nothing in the policy's look-back window, it is not called until the next arrival:
nothing can change. Its target is applied at once.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from scheduler.simulation.events import Event
from scheduler.simulation.policies import ControlPolicy, Observation, StepSeries

if TYPE_CHECKING:
    from scheduler.simulation.fleet import Simulator


class ControlTicks:
    def __init__(self, sim: Simulator, policy: ControlPolicy) -> None:
        self.sim, self.policy = sim, policy
        keep = max(policy.look_back_s, 1.0) + 1.0
        self.total, self.queued = StepSeries(keep), StepSeries(keep)  # the counts Ray's controller averages
        self.target = 0
        self.calls = 0
        self._token = 0
        self.next_at: float | None = None  # None: no call scheduled (nothing can change)

    def counts_changed(self) -> None:
        self.total.set(self.sim.now, self.sim.outstanding)
        self.queued.set(self.sim.now, self.sim.router.queued)

    def arrival(self) -> None:
        every = self.sim.spec.control_interval_s
        grid = math.ceil(self.sim.now / every - 1e-9) * every
        if self.next_at is None or self.next_at > grid:
            self.schedule(grid)

    def schedule(self, at: float) -> None:
        """The next call at ``at``; any call scheduled before it is dropped."""
        self._token += 1
        self.next_at = at
        self.sim.events.push(at, Event.TICK, self._token)

    def tick(self, token: int) -> None:
        if token != self._token:
            return  # superseded by an earlier tick scheduled on an arrival
        sim, spec = self.sim, self.sim.spec
        self.next_at = None
        obs = Observation(sim.now, len(sim.pool.running()), sim.pool.starting(), self.target, self.total,
                          self.queued)
        self.calls += 1
        target = self.policy(obs)
        if target != self.target:
            self.target = target
            sim.pool.apply_target(target)
            sim.router.dispatch()
        if sim.router.queued or sim.pool.starting():
            self.schedule(sim.now + spec.control_interval_s)
        elif sim.pool.active or sim.outstanding or sim.now - self.total.last_change_s <= self.policy.look_back_s:
            self.schedule(sim.now + spec.idle_control_interval_s)
