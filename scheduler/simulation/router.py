"""Ray Serve's router in the simulator, as Ray 2.60's ``PowerOfTwoChoicesRequestRouter`` routes.

Requests wait for a replica with a free slot (``max_ongoing_requests``); beyond
``max_queued_requests`` waiting, the answer is 503 (``overloaded``). A request whose deadline passes
while it waits is answered 504 then and removed.

Routing (``ray/serve/_private/request_router/request_router.py`` and ``pow_2_router.py``): each
queued request, oldest first, is taken by a routing task (one per queued request, at most two per
running replica and 50 in all) that works for *that* request. An attempt draws two running replicas
at random (:func:`two_choices`, Ray's own procedure) and sends the request to the one of them with
fewer requests, if it has a free slot (:func:`least_loaded`); else the task backs off — at once the
first time, then 25 ms doubling to 0.5 s — and draws again. So a freed slot is not filled at once, a
task may miss a free replica its draw did not include, and a newer request may go before an older
one. A task that routed its request takes the next one with a fresh backoff, or retires when there
are more tasks than wanted. ``router_initial_backoff_s = 0`` switches polling off: a freed slot is
filled at once, oldest request first, least-loaded replica (a reference for tests).

With ``FleetSpec.dispatch`` (sdserve's configs) the queue is sdserve's dispatcher instead
(``serve/dispatcher.py``): a :class:`~scheduler.fair_queue.FairQueue` over the requests' tenants, and
a freed slot filled at once — after everything else that happens at that instant (the other replies
of a batch free their slots too), the replica with the most free slots takes the next request in
fair order, then the next ones of the same shape (size and steps) while it has slots.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Sequence
from typing import TYPE_CHECKING

from scheduler.fair_queue import FairQueue, QueuedJob
from scheduler.preload import HOLDER_LOOK_AHEAD, TOOK, pass_over, pass_over_reads
from scheduler.simulation.events import Event
from scheduler.simulation.models import RayMultiplexing, dispatcher_choice

if TYPE_CHECKING:
    from scheduler.simulation.fleet import Simulator
    from scheduler.simulation.records import Replica

QUEUED, ON_REPLICA = "queued", "replica"
#: The ROUTE event's task number that stands for sdserve's dispatcher (Ray's tasks count from 1).
DISPATCHER = 0
#: Ray's ``max_num_routing_tasks_cap``.
MAX_ROUTING_TASKS = 50


def two_choices(rng: random.Random, n: int) -> list[int]:
    """Indices of the (at most) two replicas one attempt considers, drawn as Ray's
    ``PowerOfTwoChoicesRequestRouter.choose_replicas`` draws them from its candidates."""
    if n == 1:
        return [0]
    if n == 2:
        return [0, 1] if rng.getrandbits(1) else [1, 0]
    i = rng.randrange(n)
    j = rng.randrange(n - 1)
    return [i, j + 1 if j >= i else j]


def least_loaded(queue_lengths: Sequence[int], max_ongoing: int) -> int | None:
    """Which of the drawn replicas gets the request: the first with the fewest requests among those
    with a free slot (Ray's ``_select_from_candidate_replicas``); None: back off and draw again."""
    chosen, lowest = None, max_ongoing
    for index, length in enumerate(queue_lengths):
        if length < lowest:
            chosen, lowest = index, length
    return chosen


class Router:
    def __init__(self, sim: Simulator) -> None:
        self.sim = sim
        self.queue: deque[int] = deque()  # queued requests no task works for yet (oldest first)
        self.queued = 0  # requests really waiting in the queue
        self.located: dict[int, str] = {}  # request → QUEUED | ON_REPLICA; absent: not here (any more)
        self.routing: dict[int, list[int]] = {}  # routing task → [its request, backoff attempt (-1: fresh)]
        self._task_ids = 0
        self.rng = random.Random(sim.spec.seed + 1)  # the routers' own draws
        # sdserve's dispatcher's queue, on the simulated clock
        self.fair = FairQueue(urgent_within_s=sim.spec.urgent_within_s, clock=lambda: sim.now) \
            if sim.spec.dispatch else None
        self._fill_due = False
        self._wake_at = 0.0  # when the dispatcher looks again for a request held for its read
        # Ray's model multiplexing, when checkpoints are simulated and Ray's router routes
        self.last_sent: dict[str, float] = {}  # checkpoint → when a request for it was last sent
        self.mux = RayMultiplexing(random.Random(sim.spec.seed + 2)) if sim.spec.models_per_replica else None

    def full(self) -> bool:
        """No room in the queue: a new request gets 503."""
        limit = self.sim.spec.max_queued_requests
        return 0 <= limit <= self.queued

    def waiting(self) -> list[int]:
        """The requests in the queue (in the dispatcher's fair queue, or Ray's router's)."""
        return [int(job.job_id) for job in self.fair] if self.fair is not None else list(self.queue)

    def enqueue(self, i: int) -> None:
        if self.fair is not None:
            r = self.sim.requests[i]
            within = self.sim.spec.due_within_s
            self.fair.push(QueuedJob(str(i), r.tenant, self.sim.deadline[i], (r.pixels, r.steps, r.model, r.kind, r.loras),
                                     due=None if within is None else r.arrival_s + within))
        else:
            self.queue.append(i)
        self.queued += 1
        self.located[i] = QUEUED
        self.dispatch()

    def withdraw(self, i: int) -> bool:
        """Request ``i``'s deadline passed: take it out of the queue or its replica's waiting list
        (Ray cancels it before it reached a call). False when it is already in a call or answered."""
        where = self.located.pop(i, None)
        if self.mux is not None:
            self.mux.routed(i)
        if where == QUEUED:
            self.queued -= 1
            if self.fair is not None:
                self.fair.remove(str(i))
        elif where == ON_REPLICA:
            replica = self.sim.pool.all[self.sim.records[i].replica]
            replica.waiting.remove(i)
            self.sim.pool.release_if_drained(replica)
        return where is not None

    def in_call(self, i: int) -> None:
        """Request ``i`` entered a pipeline call: only its own finish answers it now."""
        self.located.pop(i, None)

    def dispatch(self) -> None:
        """Fill free slots from the queue: at once, or through Ray's routing tasks."""
        if self.fair is not None:  # once, after everything else at this instant (replies of one batch)
            if not self._fill_due:
                self._fill_due = True
                self.sim.events.push(self.sim.now, Event.ROUTE, DISPATCHER)
            return
        if self.sim.spec.router_initial_backoff_s <= 0:
            while self._fill_at_once():
                pass
            return
        while len(self.routing) < self._tasks_wanted() and (i := self._next_request()) is not None:
            self._task_ids += 1
            self.routing[self._task_ids] = [i, -1]
            self.route(self._task_ids)

    def _tasks_wanted(self) -> int:
        """Ray's ``target_num_routing_tasks``: one per queued request, at most two per replica."""
        replicas = len(self.sim.pool.running())
        return min(self.queued, self.sim.spec.router_tasks_per_replica * replicas, MAX_ROUTING_TASKS)

    def _next_request(self) -> int | None:
        """The oldest queued request no task works for (expired ones are passed over)."""
        while self.queue:
            i = self.queue.popleft()
            if self.located.get(i) == QUEUED:
                return i
        return None

    def route(self, task: int) -> None:
        """One attempt of ``task`` for its request; then the next request, a retry, or retirement."""
        if task == DISPATCHER:
            self._fill_due = False
            while self._fill_fair():
                pass
            return
        if task not in self.routing:
            return
        sim, spec = self.sim, self.sim.spec
        i, attempt = self.routing[task]
        if self.located.get(i) != QUEUED:  # expired meanwhile: work for the next one
            i, attempt = self._next_request(), -1
            if i is None:
                del self.routing[task]
                return
            self.routing[task] = [i, attempt]
        running = sim.pool.running()
        if self.mux is not None and running:
            running = self.mux.candidates(i, sim.requests[i].model, running, sim.now)
        drawn = [running[k] for k in two_choices(self.rng, len(running))] if running else []
        chosen = least_loaded([r.ongoing for r in drawn], spec.max_ongoing_requests)
        if chosen is not None:
            if self.mux is not None:
                self.mux.routed(i)
            self._send(i, drawn[chosen])
            sim.counts_changed()
            if len(self.routing) <= self._tasks_wanted() and (following := self._next_request()) is not None:
                self.routing[task] = [following, -1]
                sim.events.push(sim.now, Event.ROUTE, task)
            else:
                del self.routing[task]
            return
        backoff = 0.0 if attempt < 0 else min(
            spec.router_initial_backoff_s * spec.router_backoff_multiplier ** attempt, spec.router_max_backoff_s)
        self.routing[task][1] = attempt + 1
        sim.events.push(sim.now + backoff, Event.ROUTE, task)

    def _send(self, i: int, replica: Replica) -> None:
        self.queued -= 1
        self.located[i] = ON_REPLICA
        self.sim.records[i].replica = replica.id
        self.last_sent[self.sim.requests[i].model] = self.sim.now
        replica.waiting.append(i)
        self.sim.calls.assigned(replica)

    def _pass_over_head(self, free: list[Replica]) -> str:
        """As the live dispatcher (``scheduler/preload.py: pass_over``): TOOK, IDLE or "" (dispatch in order)."""
        head = self.fair.peek()
        if head is None:
            return ""
        pool, requests = self.sim.pool, self.sim.requests
        free_ids = {r.id for r in free}
        busy = [r.models.device for r in pool.active if r.state == "running" and r.id not in free_ids]
        starting = [r.models.device for r in pool.active + pool.pending if r.state in ("starting", "pending")]
        passed, replica, job = pass_over(
            requests[int(head.job_id)].model, [(r, r.models.device, r.models.host) for r in free], busy, starting,
            lambda test: self.fair.take(lambda q: test(requests[int(q.job_id)].model), HOLDER_LOOK_AHEAD))
        if job is not None:
            self._send(int(job.job_id), replica)
        return passed

    def _pass_over_reads(self, free: list[Replica]) -> str:
        """As the live dispatcher (``scheduler/preload.py: pass_over_reads``): while the head's
        checkpoint is still being read into the node's memory, TOOK (a request behind it went) or
        IDLE (dispatch again when the first read ends); "" otherwise."""
        head, sim = self.fair.peek(), self.sim
        if head is None or not sim.spec.wait_for_reads:
            return ""
        reads = sim.pool.reading()
        if not reads:
            return ""
        requests, first = sim.requests, int(head.job_id)
        passed, job = pass_over_reads(
            # (with the node's memory shared, a replica's host memory is the node's: being read)
            requests[first].model, reads, [r.models.device for r in free],
            lambda test: self.fair.take(lambda q: test(requests[int(q.job_id)].model), HOLDER_LOOK_AHEAD))
        if passed:
            sim.records[first].waited_for_read = True
        if job is not None:
            r = requests[int(job.job_id)]
            self._send(int(job.job_id), dispatcher_choice(free, r.model, r.loras, self.last_sent))
        elif passed and (wake := min(reads.values())) > self._wake_at:  # reads all take as long: ends only grow
            self._wake_at = wake
            sim.events.push(wake, Event.ROUTE, DISPATCHER)
        return passed

    def _fill_at_once(self) -> bool:
        """Polling off: the oldest queued request to the least-loaded running replica with a free slot."""
        free = self.sim.pool.free(self.sim.spec.max_ongoing_requests)
        if not free:
            return False
        i = self._next_request()
        if i is None:
            return False
        self._send(i, min(free, key=lambda r: (r.ongoing, r.id)))
        return True

    def _fill_fair(self) -> bool:
        """The dispatcher: the next request in fair order to the replica with the most free slots,
        then, while it has slots, the next ones of the same shape (they batch with it)."""
        limit = self.sim.spec.max_ongoing_requests
        free = self.sim.pool.free(limit)
        if not free or self.fair is None:
            return False
        if self.sim.spec.models_per_replica and not self.sim.spec.model_blind:
            passed = self._pass_over_reads(free) or self._pass_over_head(free)
            if passed:
                return passed == TOOK
        job = self.fair.pop()
        if job is None:
            return False
        if self.sim.spec.models_per_replica:
            request = self.sim.requests[int(job.job_id)]
            blind = self.sim.spec.model_blind
            replica = free[0] if blind else dispatcher_choice(free, request.model, request.loras, self.last_sent)
        else:
            replica = min(free, key=lambda r: (r.ongoing, r.id))
        self._send(int(job.job_id), replica)
        while replica.ongoing < limit and (same := self.fair.pop(lambda j: j.shape == job.shape)) is not None:
            self._send(int(same.job_id), replica)
        return True
