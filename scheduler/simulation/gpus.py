"""The GPUs replicas hold: one fleet's own (``FleetSpec.gpu_slots``), or a cap several fleets share.

Ray's scheduler holds a replica PENDING while no GPU is free and starts it when one is let go. One
fleet's pool keeps its own count; deployments on one cluster share its GPUs, so a GPU one of them
lets go goes to whichever replica, in any of them, has waited longest (:class:`GpuSlots` shared by
their pools, run together by :func:`simulate_together`).
"""

from __future__ import annotations

import heapq
from collections import deque
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from scheduler.simulation.fleet import Simulator
    from scheduler.simulation.records import Replica, SimResult


class WaitingPool(Protocol):
    sim: Simulator

    def start_pending(self, replica: Replica, now: float) -> None: ...


class GpuSlots:
    """``slots`` GPUs (None: as many as asked for) and the replicas waiting for one, oldest first."""

    def __init__(self, slots: int | None) -> None:
        self.slots = slots
        self.held = 0
        self.waiting: deque[tuple[WaitingPool, Replica]] = deque()
        #: pools a let-go GPU started a replica in, when someone reads them (simulate_together)
        self.started: list[WaitingPool] | None = None

    def take(self, force: bool = False) -> bool:
        """A GPU for a new replica, if one is free (``force``: a replica warm from the start has one)."""
        if force or self.slots is None or self.held < self.slots:
            self.held += 1
            return True
        return False

    def wait(self, pool: WaitingPool, replica: Replica) -> None:
        self.waiting.append((pool, replica))

    def cancel(self, replica: Replica) -> None:
        """A waiting replica no longer wanted."""
        self.waiting = deque(entry for entry in self.waiting if entry[1] is not replica)

    def let_go(self, now: float) -> None:
        """A replica stopped at ``now``: its GPU starts the replica that has waited longest, in
        whichever pool."""
        self.held -= 1
        if self.waiting:
            pool, replica = self.waiting.popleft()
            self.held += 1
            if self.started is not None:
                self.started.append(pool)
            pool.start_pending(replica, now)


def simulate_together(sims: list[Simulator], gpus: GpuSlots) -> list[SimResult]:
    """Run ``sims`` (whose pools share ``gpus``) on one clock: events in time order across them, a
    GPU let go in one starting a replica in another at that instant. Each runs until its requests
    are answered and its replicas stopped, or until every request of every one is answered; the
    results all end then (a replica still up is paid until that end)."""
    heap: list[tuple[float, int]] = []
    gpus.started = []
    number = {id(sim): n for n, sim in enumerate(sims)}

    def enqueue(n: int) -> None:
        if sims[n].events:
            heapq.heappush(heap, (sims[n].events.next_time(), n))

    for n, sim in enumerate(sims):
        sim.start()
        enqueue(n)
    unanswered = sum(len(sim.requests) - sim.resolved for sim in sims)
    while heap and unanswered:
        t, n = heapq.heappop(heap)
        sim = sims[n]
        if not sim.events or sim.events.next_time() != t:
            continue  # stale: a later entry holds its next event
        before = sim.resolved
        sim.step()
        unanswered -= sim.resolved - before
        for pool in gpus.started:
            enqueue(number[id(pool.sim)])  # its next event may now come sooner
        gpus.started.clear()
        if sim.resolved < len(sim.requests) or sim.pool.active or sim.pool.pending:
            enqueue(n)
    gpus.started = None
    end = max((sim.records_end() for sim in sims), default=0.0)
    return [sim.result(end) for sim in sims]
