"""The control loop in the simulator: when the policy is called, what it sees, and its target applied.

The live loops decide every ``control_interval_s`` (0.1 s), but most of those calls cannot change
anything. The simulator calls the policy on the same 0.1 s grid only when its answer may differ: at
the first grid point after an event that changes what the policy sees (an arrival, an answer, a
replica ready or stopped, a request count Ray's controller reads; any event at all while the policy
says so, as sdserve's loop does with a queue), right after the target changed, and otherwise when
the policy says its own clocks run out (:meth:`ControlPolicy.review_at`: a keep-alive, a stable
window, a scale-down interval, the deadline rule's slack, Ray's delays and look-back). Its target is
applied at once.
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
        self._asked: set[int] = set()  # grid points (in intervals) a call is scheduled at
        self._last = -1  # the grid point of the last call
        self.watching = False  # the policy's answer may change with any event (ControlPolicy.watches_events)

    def counts_changed(self) -> None:
        moved = self.total.set(self.sim.now, self.sim.outstanding)
        moved = self.queued.set(self.sim.now, self.sim.router.queued) or moved
        if moved and self.policy.reads_counts:
            self.changed()

    def _point(self, t: float) -> int:
        """The first point of the live loop's grid (multiples of the interval) at or after ``t``."""
        every = self.sim.spec.control_interval_s
        point = math.ceil(t / every - 1e-9)
        return point if point * every >= t else point + 1

    def changed(self) -> None:
        """Something the policy sees changed: it decides at the next grid point."""
        self.schedule(self.sim.now)

    def fleet_changed(self) -> None:
        """The replicas changed: the policy decides when it sees it (sdserve's loop at its next read)."""
        self.schedule(self.policy.sees_fleet_at(self.sim.now))

    def schedule(self, t: float) -> None:
        """A call at the first grid point at or after ``t`` (once, however often it is asked for)."""
        point = max(self._point(t), self._last + 1)
        if point not in self._asked:
            self._asked.add(point)
            self.sim.events.push(point * self.sim.spec.control_interval_s, Event.TICK, point)

    def _live(self) -> bool:
        """Anything left that a policy could act on (the reference schedule stops after the last)."""
        sim = self.sim
        return bool(sim.pool.active or sim.pool.pending or sim.outstanding or sim.resolved < len(sim.requests))

    def tick(self, point: int) -> None:
        self._asked.discard(point)
        self._last = point
        sim, spec = self.sim, self.sim.spec
        obs = Observation(sim.now, len(sim.pool.running()), sim.pool.starting(), self.target, self.total,
                          self.queued, sim.pool.view_at, spec.control_interval_s)
        self.calls += 1
        if self.policy.reads_tiers and spec.tells_loads:
            self.policy.expect(sim.pool.expected_tiers(sim.router.waiting()))
        target = self.policy(obs)
        changed = target != self.target
        if changed:
            self.target = target
            sim.pool.apply_target(target)
            sim.router.dispatch()
        self.watching = self.policy.watches_events()
        if changed or (spec.every_interval and self._live()):
            self.schedule(sim.now)  # the next grid point
        elif (review := self.policy.review_at(sim.now)) is not None:
            self.schedule(review)
