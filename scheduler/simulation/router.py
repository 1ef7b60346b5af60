"""Ray Serve's router in the simulator: one FIFO queue in front of the replicas.

Requests wait for a replica with a free slot (``max_ongoing_requests``); beyond
``max_queued_requests`` waiting, the answer is 503 (``overloaded``). A request whose deadline passes
while it waits is answered 504 then and removed. A slot that frees is not filled at once: Ray's
routing tasks (two per running replica, one per queued request, at most 50) poll for one with
exponential backoff (25 ms doubling, capped at 0.5 s; ``request_router.py``), so a queue behind a
busy replica leaves it idle between calls.
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING

from scheduler.simulation.events import Event

if TYPE_CHECKING:
    from scheduler.simulation.fleet import Simulator

QUEUED, ON_REPLICA = "queued", "replica"


class Router:
    def __init__(self, sim: Simulator) -> None:
        self.sim = sim
        self.queue: deque[int] = deque()  # expired requests stay in it, skipped when popped
        self.queued = 0  # requests really waiting in the queue
        self.located: dict[int, str] = {}  # request → QUEUED | ON_REPLICA; absent: not here (any more)
        self.routing: dict[int, int] = {}  # routing tasks: id → backoff attempt (-1: fresh)
        self._task_ids = 0

    def full(self) -> bool:
        """No room in the queue: a new request gets 503."""
        limit = self.sim.spec.max_queued_requests
        return 0 <= limit <= self.queued

    def enqueue(self, i: int) -> None:
        self.queue.append(i)
        self.queued += 1
        self.located[i] = QUEUED
        self.dispatch()

    def withdraw(self, i: int) -> bool:
        """Request ``i``'s deadline passed: take it out of the queue or its replica's waiting list
        (Ray cancels it before it reached a call). False when it is already in a call or answered."""
        where = self.located.pop(i, None)
        if where == QUEUED:
            self.queued -= 1
        elif where == ON_REPLICA:
            replica = self.sim.pool.all[self.sim.records[i].replica]
            replica.waiting.remove(i)
            self.sim.pool.release_if_drained(replica)
        return where is not None

    def in_call(self, i: int) -> None:
        """Request ``i`` entered a pipeline call: only its own finish answers it now."""
        self.located.pop(i, None)

    def dispatch(self) -> None:
        """Fill free slots from the queue: at once, or through Ray's polling routing tasks."""
        if self.sim.spec.router_initial_backoff_s <= 0:
            while self._dispatch_one():
                pass
            return
        while len(self.routing) < self._tasks_wanted():
            self._task_ids += 1
            self.routing[self._task_ids] = -1
            self.route(self._task_ids)

    def _tasks_wanted(self) -> int:
        """Ray's ``target_num_routing_tasks``: one per queued request, at most two per replica."""
        return min(self.queued, self.sim.spec.router_tasks_per_replica * len(self.sim.pool.running()), 50)

    def route(self, task: int) -> None:
        """One routing attempt: the oldest queued request to a free slot, else back off and retry.
        A task that routed one takes the next at once with a fresh backoff; a surplus task retires."""
        if task not in self.routing:
            return
        if len(self.routing) > self._tasks_wanted():
            del self.routing[task]
            return
        sim, spec = self.sim, self.sim.spec
        if self._dispatch_one():
            self.routing[task] = -1
            sim.events.push(sim.now, Event.ROUTE, task)
            sim.counts_changed()
            return
        attempt = self.routing[task]
        backoff = 0.0 if attempt < 0 else min(
            spec.router_initial_backoff_s * spec.router_backoff_multiplier ** attempt, spec.router_max_backoff_s)
        self.routing[task] = attempt + 1
        sim.events.push(sim.now + backoff, Event.ROUTE, task)

    def _dispatch_one(self) -> bool:
        """The oldest queued request to the least-loaded running replica with a free slot."""
        sim = self.sim
        free = sim.pool.free(sim.spec.max_ongoing_requests)
        while self.queued and free:
            replica = min(free, key=lambda r: (r.ongoing, r.id))
            i = self.queue.popleft()
            if self.located.get(i) != QUEUED:
                continue  # expired while queued
            self.queued -= 1
            self.located[i] = ON_REPLICA
            sim.records[i].replica = replica.id
            replica.waiting.append(i)
            sim.calls.assigned(replica)
            return True
        return False
