"""The dispatcher's queue: fair across tenants, earliest deadline first within each.

One tenant's flood must not delay everyone behind it, and within a tenant a request with 5 s left
should not wait behind one with 10 minutes left. So the queue is two-level:

- **across tenants**, start-time fair queuing (Goyal et al., SIGCOMM 1996), a weighted fair queuing
  discipline: each tenant with work waiting carries a virtual start tag; the next request comes
  from the tenant with the smallest tag, whose tag then advances by ``1 / weight``. A tenant that
  was idle starts at the current virtual time, so it is served at once rather than paying for its
  silence or cashing it in. Over any backlogged stretch, each tenant gets a share of dispatches in
  proportion to its weight (an API key, else the client address, is a tenant);
- **within a tenant**, earliest deadline first (ties: arrival order);
- **urgent requests first** (``urgent_within_s``, off by default): a request within that many seconds
  of its due time (its deadline, or sooner: when the latency objective says it should be answered)
  goes ahead of the fair order, earliest due first. Fair order alone lets a newly arrived tenant's
  request pass one that has waited most of its objective, which then misses it; on one replica,
  earliest due first meets every due time whenever any order can (Jackson's rule, 1955), so the
  queue falls back to it exactly where a request's time is running out, and stays fair elsewhere. An urgent request is still charged to its tenant, so a flood of urgent requests buys
  its tenant no extra share over a backlogged stretch.

The queue only orders; what to do with a request that can no longer finish, and where to send the
next one, is the dispatcher's (``serve/dispatcher.py``) and the simulator's. Removal (a client that
went away) is O(1), applied lazily when the removed request would come up.
"""

from __future__ import annotations

import heapq
import itertools
import time
from collections.abc import Callable, Hashable, Iterator, Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True)
class QueuedJob:
    """What the queue knows of a waiting request."""

    job_id: str
    tenant: str
    deadline: float  # absolute, seconds
    shape: Hashable = ()  # what can share a pipeline call with it (size, steps): for batches
    model: str = ""  # its checkpoint ("": the default): where the dispatcher prefers to send it
    adapters: tuple[str, ...] = ()  # its LoRA adapters' ids: the dispatcher prefers where they are loaded
    due: float | None = None  # when it should be answered (absolute; None: its deadline): for urgency


def _due(job: QueuedJob) -> float:
    """When ``job`` should be answered: its due time, never after its deadline."""
    return job.deadline if job.due is None else min(job.due, job.deadline)


@dataclass
class _Tenant:
    weight: float
    heap: list[tuple[float, int, str]] = field(default_factory=list)  # (deadline, seq, job id)
    start: float = 0.0  # virtual start tag of its next request (while it has any)
    finish: float = 0.0  # virtual finish tag of its last request dispatched
    waiting: int = 0  # not removed


class FairQueue:
    def __init__(self, weights: Mapping[str, float] | None = None, default_weight: float = 1.0,
                 urgent_within_s: float | None = None, clock: Callable[[], float] = time.time) -> None:
        """``urgent_within_s``: None, fair order only; a number, a request that close to its due time
        goes first. ``clock``: now, on the deadlines' clock (the simulator passes its own)."""
        if default_weight <= 0 or any(w <= 0 for w in (weights or {}).values()):
            raise ValueError("tenant weights must be > 0")
        self.clock = clock
        self._by_due: list[tuple[float, int, str]] = []  # (due, seq, job id) of waiting requests, with urgency
        self.weights = dict(weights or {})
        self.default_weight = default_weight
        self._tenants: dict[str, _Tenant] = {}
        self._active: dict[str, _Tenant] = {}  # tenants with requests waiting: the only ones ordered
        self._jobs: dict[str, tuple[QueuedJob, int]] = {}  # waiting (not removed): job and its seq
        self._seq = itertools.count()
        self._virtual = 0.0  # the start tag of the request dispatched last
        self._urgent_within_s: float | None = None
        self.urgent_within_s = urgent_within_s

    @property
    def urgent_within_s(self) -> float | None:
        return self._urgent_within_s

    @urgent_within_s.setter
    def urgent_within_s(self, value: float | None) -> None:
        """Set or change urgency (a reconfigured dispatcher): the waiting requests keep their place."""
        if value is not None and value < 0:
            raise ValueError("urgent_within_s must be >= 0 (or unset)")
        self._urgent_within_s = value
        self._by_due = [] if value is None else [(_due(job), seq, job.job_id) for job, seq in self._jobs.values()]
        heapq.heapify(self._by_due)

    def __len__(self) -> int:
        return len(self._jobs)

    def __contains__(self, job_id: str) -> bool:
        return job_id in self._jobs

    def push(self, job: QueuedJob) -> None:
        if job.job_id in self._jobs:
            raise ValueError(f"job {job.job_id!r} is already queued")
        tenant = self._tenants.get(job.tenant)
        if tenant is None:
            tenant = self._tenants[job.tenant] = _Tenant(self.weights.get(job.tenant, self.default_weight))
        if not tenant.waiting:  # (re)joins: from now, neither behind for its silence nor ahead
            tenant.start = max(self._virtual, tenant.finish)
            tenant.weight = self.weights.get(job.tenant, self.default_weight)  # weights may be reconfigured
            self._active[job.tenant] = tenant
        seq = next(self._seq)
        heapq.heappush(tenant.heap, (job.deadline, seq, job.job_id))
        if self.urgent_within_s is not None:
            heapq.heappush(self._by_due, (_due(job), seq, job.job_id))
        tenant.waiting += 1
        self._jobs[job.job_id] = (job, seq)

    def remove(self, job_id: str) -> bool:
        """Take a waiting request out (its client left); False if it is not waiting."""
        entry = self._jobs.pop(job_id, None)
        if entry is None:
            return False
        self._left(entry[0].tenant)
        return True

    def _left(self, name: str) -> None:
        """One of the tenant's requests left the queue."""
        tenant = self._tenants[name]
        tenant.waiting -= 1
        if not tenant.waiting:
            tenant.heap.clear()  # only removed entries can be left
            del self._active[name]

    def _head(self, tenant: _Tenant) -> str | None:
        while tenant.heap and tenant.heap[0][2] not in self._jobs:
            heapq.heappop(tenant.heap)  # removed earlier
        return tenant.heap[0][2] if tenant.heap else None

    def _order(self) -> list[tuple[float, int, str]]:
        """Tenants with work, in the order their next requests go: (start tag, head's arrival
        seq, tenant) — equal tags go to the request that arrived first."""
        order = []
        for name, tenant in self._active.items():
            if self._head(tenant) is not None:
                order.append((tenant.start, tenant.heap[0][1], name))
        order.sort()
        return order

    def pop(self, accept: Callable[[QueuedJob], bool] | None = None) -> QueuedJob | None:
        """The next request in fair order; with ``accept``, the first tenant head it accepts (a
        replica whose batch takes only one shape of work)."""
        for job in self._urgent():
            if accept is None or accept(job):
                self._charge(job, out_of_order=True)
                return job
        for _, _, name in self._order():
            tenant = self._tenants[name]
            job = self._jobs[tenant.heap[0][2]][0]
            if accept is None or accept(job):
                heapq.heappop(tenant.heap)
                del self._jobs[job.job_id]
                self._virtual = tenant.start  # the fair order's own tag (a look-ahead may have passed it)
                tenant.finish = tenant.start + 1.0 / tenant.weight
                tenant.start = tenant.finish
                self._left(name)
                return job
        return None

    def peek(self) -> QueuedJob | None:
        """The request :meth:`pop` would return, left in the queue."""
        urgent = self._urgent()
        if urgent:
            return urgent[0]
        order = self._order()
        return self._jobs[self._tenants[order[0][2]].heap[0][2]][0] if order else None

    def take(self, accept: Callable[[QueuedJob], bool], look_ahead: int) -> QueuedJob | None:
        """The first of the next ``look_ahead`` requests in fair order that ``accept`` takes, out
        of the queue and charged to its tenant as a dispatch; None if none of them. (A free replica
        that holds some requests' checkpoint takes one of those when the head's checkpoint is
        held by another replica: the look-ahead bounds how far it may go past the order.)"""
        for job in self.in_order()[:look_ahead]:
            if accept(job):
                self._charge(job)
                return job
        return None

    def in_order(self) -> list[QueuedJob]:
        """The waiting requests in the order they go if nothing else arrives and no more become
        urgent: the urgent ones, earliest due first, then each tenant's k-th request (earliest
        deadline first) with tag start + k / weight, all in order of (tag, arrival)."""
        urgent = self._urgent()
        first = {job.job_id for job in urgent}
        tags = []
        for tenant in self._active.values():
            for k, seq in enumerate(self._waiting_in_order(tenant)):
                tags.append((tenant.start + k / tenant.weight, seq))
        by_seq = {seq: job for job, seq in self._jobs.values()}
        return urgent + [by_seq[seq] for _, seq in sorted(tags) if by_seq[seq].job_id not in first]

    def _charge(self, job: QueuedJob, out_of_order: bool = False) -> None:
        """Take ``job`` out of the queue as a dispatch of its tenant's (its tag advances). An urgent
        dispatch (``out_of_order``) leaves the virtual time where the fair order is: a tenant that
        joins next starts there, not behind the tag of a flood whose request was urgent."""
        tenant = self._tenants[job.tenant]
        self.remove(job.job_id)
        if not out_of_order:
            self._virtual = max(self._virtual, tenant.start)
        tenant.finish = tenant.start + 1.0 / tenant.weight
        tenant.start = tenant.finish

    def _urgent(self) -> list[QueuedJob]:
        """The waiting requests within ``urgent_within_s`` of their due time, earliest due first."""
        if self.urgent_within_s is None:
            return []
        while self._by_due and not self._waiting(*self._by_due[0][1:]):
            heapq.heappop(self._by_due)  # dispatched or removed earlier
        horizon = self.clock() + self.urgent_within_s
        if not self._by_due or self._by_due[0][0] > horizon:
            return []
        return [self._jobs[job_id][0] for _, seq, job_id in sorted(e for e in self._by_due if e[0] <= horizon)
                if self._waiting(seq, job_id)]

    def _waiting(self, seq: int, job_id: str) -> bool:
        """Whether this entry is a waiting request (not one that left, nor an earlier stay of a
        request queued again)."""
        entry = self._jobs.get(job_id)
        return entry is not None and entry[1] == seq

    def position(self, job_id: str) -> int:
        """How many waiting requests go before ``job_id`` if nothing else arrives: each tenant's
        k-th request (earliest deadline first) goes with tag start + k / weight, all in order of
        (tag, arrival). Urgency aside: requests that become urgent later may still pass it."""
        job, seq = self._jobs[job_id]
        ranks = {name: self._waiting_in_order(t) for name, t in self._active.items()}
        own = ranks[job.tenant]
        mine = (self._tenants[job.tenant].start + own.index(seq) / self._tenants[job.tenant].weight, seq)
        ahead = 0
        for name, seqs in ranks.items():
            tenant = self._tenants[name]
            ahead += sum(1 for k, s in enumerate(seqs) if (tenant.start + k / tenant.weight, s) < mine)
        return ahead

    def position_if_added(self, tenant: str, deadline: float) -> int:
        """Where a request of ``tenant`` due at ``deadline`` would go if it were queued now."""
        probe = f"\0probe{next(self._seq)}"
        self.push(QueuedJob(probe, tenant, deadline))
        try:
            return self.position(probe)
        finally:
            self.remove(probe)

    def _waiting_in_order(self, tenant: _Tenant) -> list[int]:
        """Arrival seqs of the tenant's waiting requests, earliest deadline first."""
        return [s for _, s, j in sorted(tenant.heap) if j in self._jobs]

    def __iter__(self) -> Iterator[QueuedJob]:
        return (job for job, _ in self._jobs.values())
