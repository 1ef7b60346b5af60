"""The application's queue, held in the ingress: accepted requests wait here in fair order and go to
a worker replica only when that replica has a free slot.

Without it every accepted request waits in Ray's router, first in first out, where a routing task
polls the replicas with backoff (25 ms doubling to 0.5 s) and a freed slot can stay idle until the
next poll. Here (Knative's activator, in spirit):

- **order**: :class:`scheduler.fair_queue.FairQueue` — fair across tenants (an API key, else the
  client address; weights in ``queue.tenant_weights``), earliest deadline first within a tenant;
  a request whose deadline passed is answered at dequeue without reaching a replica;
- **slots**: every RUNNING worker replica has ``max_ongoing_requests`` slots; a slot is taken when a
  request is sent there and given back when its reply (or failure) comes. The replica list and the
  deployment's limits are read from Serve every ``POLL_S`` (replicas gone are dropped, new ones get
  their slots);
- **placement**: a replica that holds the request's checkpoint (as its last reply said), else
  any; the chosen replica's id travels in the job; :class:`serve.routing.DispatchedRouter`,
  the worker deployment's request router, sends the job there (Ray 2.60's pluggable request router:
  the one supported hook that sees each request and the replicas it may go to). A replica with free
  slots gets, after the next request in order, the next ones that batch with it (same size and steps);
- **preloading**: a worker replica that is starting asks which checkpoint to load
  (:meth:`Dispatcher.preload_for`): the one the queue needs most per replica holding it or told to
  load it (``scheduler/preload.py``); it counts as that checkpoint's holder until its first reply;
- **bound**: ``max_queued_requests`` of the worker deployment bounds this queue: beyond it, 503.

One dispatcher per ingress replica: the shipped configs run one ingress replica, so one per
application (with more, each would count slots the others also use; Ray's router then queues the
excess at the replica, nothing is lost).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Awaitable, Callable, Hashable, Iterable
from dataclasses import dataclass
from typing import Any

from scheduler.collector import tier_of
from scheduler.fair_queue import FairQueue, QueuedJob
from scheduler.placement import FreeReplica, choose_replica
from scheduler.preload import HOLDER_LOOK_AHEAD, IDLE, TOOK, pass_over, pass_over_reads, preload_choice

log = logging.getLogger("ray.serve")
#: How often the replica list and the deployment's limits are read from Serve.
POLL_S = 0.5
#: The longest a slot waits for its replica's stream to end after the reply came.
RELEASE_WAIT_S = 5.0
#: A replica told what to preload that is not running after this long is forgotten (it failed).
PRELOAD_FORGET_S = 600.0
#: ... or sooner, once Serve no longer lists it as starting this long after it asked (a read of the
#: pool older than its question may not list it yet).
PRELOAD_SEEN_S = 4 * POLL_S


class QueueFull(Exception):
    """The dispatcher's queue holds ``max_queued_requests`` already (503)."""

    def __init__(self, queued: int) -> None:
        super().__init__(queued)
        self.queued = queued


class Expired(Exception):
    """The request's deadline passed while it waited in the dispatcher's queue."""


@dataclass(frozen=True)
class WorkerPool:
    """What the dispatcher needs to know of the worker deployment, as Serve shows it."""

    running: tuple[str, ...]  # replica ids (``ReplicaID.unique_id``)
    max_ongoing_requests: int
    max_queued_requests: int  # -1: unbounded
    starting: tuple[str, ...] | None = None  # replicas on their way to running (None: not read)


def tenant_of(api_key: str | None, address: str) -> str:
    """A request's tenant: its API key (as a short digest: keys never reach logs or metrics), else
    its client address."""
    if api_key:
        return "key-" + hashlib.sha256(api_key.encode()).hexdigest()[:10]
    return address


class Dispatcher:
    def __init__(self, read_pool: Callable[[], "asyncio.Future[WorkerPool] | object"] | None = None) -> None:
        self.queue = FairQueue()
        self._read_pool = read_pool  # async () -> WorkerPool
        self._waiting: dict[str, asyncio.Future[str]] = {}  # job id → its grant (a replica id)
        self._free: dict[str, int] = {}  # running replica → free slots
        self._held: dict[str, str] = {}  # job id → replica it was sent to
        self.slots_per_replica = 1
        self.max_queued = -1
        self._poller: asyncio.Task[None] | None = None
        self._dispatch_due = False
        self._lost: set[str] = set()  # replicas a call found dead, until Serve stops listing them
        # replica → checkpoints it said it holds on its device, and in its host memory
        self._holding: dict[str, tuple[frozenset[str], frozenset[str]]] = {}
        self._adapters: dict[str, frozenset[tuple[str, str]]] = {}  # replica → (checkpoint, LoRA) loaded
        self._releasing: set[asyncio.Task[None]] = set()
        self._preloading: dict[str, tuple[str, float]] = {}  # starting replica → (checkpoint, when told)
        self.model_aware = True  # queue.model_aware: placement by checkpoint; False: any free replica
        self.default_model = ""  # the checkpoint of a request that names none
        self._last_sent: dict[str, float] = {}  # checkpoint → when a request for it was last sent
        #: called (must not block) with a queued request's checkpoint that no replica holds or was
        #: told to preload: the ingress's prefetch (serve/prefetch.py)
        self.on_unheld: Callable[[str], None] | None = None
        #: called (must not block) with every queued request's checkpoint: the pre-warm's history
        self.on_queued: Callable[[str], None] | None = None
        #: the checkpoints in the node's memory (page cache) or being read into it, as if in every
        #: replica's host memory: the prefetcher's (serve/prefetch.py)
        self.node_memory: Callable[[], frozenset[str]] = frozenset
        #: the checkpoints being read from disk into the node's memory now (the prefetcher's): with
        #: ``wait_for_reads`` a request for one waits for its read in the queue
        self.reading: Callable[[], frozenset[str]] = frozenset
        self.wait_for_reads = True  # queue.wait_for_reads
        #: called (must not block) with each request sent to a replica and the tier its checkpoint is
        #: expected from there (none, host, disk): the scaling loop counts its load (scheduler/collector.py)
        self.on_sent: Callable[[str, str], None] | None = None

    def configure(self, weights: dict[str, float], model_aware: bool = True, default_model: str = "",
                  wait_for_reads: bool = True, urgent_within_s: float | None = None) -> None:
        """``default_model``: the served name a request without a ``model`` (empty) gets, as the
        replicas name it when they say what they hold."""
        self.queue.weights = dict(weights)
        self.queue.urgent_within_s = urgent_within_s
        self.model_aware = model_aware
        self.default_model = default_model
        self.wait_for_reads = wait_for_reads

    # ---- the worker pool -----------------------------------------------------------------------

    def set_pool(self, pool: WorkerPool) -> None:
        """Reconcile with Serve: new replicas get their free slots, gone ones are dropped."""
        self.slots_per_replica, self.max_queued = pool.max_ongoing_requests, pool.max_queued_requests
        self._lost &= set(pool.running)
        running = set(pool.running) - self._lost
        for rid in list(self._free):
            if rid not in running:
                del self._free[rid]
                self._holding.pop(rid, None)
                self._adapters.pop(rid, None)
        for rid in running - self._free.keys():
            busy = sum(1 for r in self._held.values() if r == rid)
            self._free[rid] = max(0, self.slots_per_replica - busy)
            preloaded = self._preloading.pop(rid, None)
            if preloaded is not None and rid not in self._holding:  # until its first reply says more
                self._holding[rid] = (frozenset({preloaded[0]}), frozenset())
        now = time.time()
        starting = set(pool.starting) if pool.starting is not None else None
        for rid, (_, told) in list(self._preloading.items()):
            if now - told > PRELOAD_FORGET_S:  # never came up
                del self._preloading[rid]
            elif starting is not None and rid not in starting and now - told > PRELOAD_SEEN_S:
                # stopped before it ran (a scale-down takes starting replicas first): what it was to
                # bring is not coming, so the head of the queue must not wait for it
                del self._preloading[rid]
        self._dispatch()

    def start(self) -> None:
        if self._poller is None and self._read_pool is not None:
            self._poller = asyncio.get_running_loop().create_task(self._poll())

    async def _poll(self) -> None:
        while True:
            try:
                self.set_pool(await asyncio.wait_for(self._read_pool(), 5.0))
            except Exception as error:  # noqa: BLE001 - a failed read costs one poll, never the queue
                log.warning("dispatcher: reading the worker replicas failed: %s", error)
            await asyncio.sleep(POLL_S)

    # ---- requests ------------------------------------------------------------------------------

    async def acquire(self, job_id: str, tenant: str, deadline: float, shape: Hashable = (), model: str = "",
                      adapters: tuple[str, ...] = (), due: float | None = None) -> str:
        """Wait in fair order for a free slot; return the replica to send the job to. Raises
        :class:`QueueFull` at once when the queue is at its bound, :class:`Expired` if the deadline
        passes first (at dequeue); a cancelled wait leaves the queue at once."""
        self.start()  # the ingress starts it on its loop; its first request may come first
        if 0 <= self.max_queued <= len(self.queue):
            raise QueueFull(len(self.queue))
        granted: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._waiting[job_id] = granted
        model = model or self.default_model  # placed, preloaded and prefetched by its real name
        self.queue.push(QueuedJob(job_id, tenant, deadline, shape, model, adapters, due))
        if self.on_queued is not None:
            self.on_queued(model)
        if self.on_unheld is not None and self.model_aware and model not in self.checkpoints_on_devices():
            self.on_unheld(model)
        self._dispatch()
        try:
            return await granted
        except asyncio.CancelledError:
            self.queue.remove(job_id)
            self.release(job_id)  # granted in the same instant: give the slot back
            raise
        finally:
            self._waiting.pop(job_id, None)

    def _checkpoints_held(self) -> list[Iterable[str]]:
        """Each replica's checkpoints on its device, as its last reply said, and each starting
        replica's, as it was told to preload."""
        return [models for models, _ in self._holding.values()] + [{m} for m, _ in self._preloading.values()]

    def checkpoints_on_devices(self) -> set[str]:
        """Every checkpoint some replica holds on its device or was told to preload."""
        return {model for models in self._checkpoints_held() for model in models}

    def tier(self, model: str, replica_id: str) -> str:
        """Where ``model`` comes from for a call on ``replica_id``: its device ("none"), its host
        memory or the node's ("host"), else disk. A replica that has not said what it holds is taken
        to hold it."""
        device, host = self._holding.get(replica_id, (frozenset({model}), frozenset()))
        return tier_of(model, device, host | self.node_memory())

    def queued_tiers(self) -> dict[str, str]:
        """Where each queued request's checkpoint would come from now, by job id: some device that
        holds it or a starting replica told to preload it, some host memory or the node's, else disk."""
        device = self.checkpoints_on_devices()
        host = self.node_memory().union(*(host for _, host in self._holding.values()))
        return {job.job_id: tier_of(job.model, device, host) for job in self.queue}

    def release(self, job_id: str, after: Awaitable[None] | None = None) -> None:
        """The job's call ended (any outcome) or never started: its slot is free again — at once,
        or once ``after`` is done (the end of the replica's stream; at most ``RELEASE_WAIT_S``)."""
        if after is not None:
            task = asyncio.get_running_loop().create_task(self._release_after(job_id, after))
            self._releasing.add(task)
            task.add_done_callback(self._releasing.discard)
            return
        rid = self._held.pop(job_id, None)
        if rid is not None and rid in self._free:
            self._free[rid] = min(self.slots_per_replica, self._free[rid] + 1)
            self._dispatch_soon()

    async def _release_after(self, job_id: str, after: Awaitable[None]) -> None:
        try:
            await asyncio.wait_for(after, RELEASE_WAIT_S)
        except Exception:  # noqa: BLE001 - a stream that fails or hangs still frees its slot
            pass
        finally:
            self.release(job_id)

    def lost(self, replica_id: str) -> None:
        """A call found the replica dead: send nothing more there, even before Serve's replica
        list (read every ``POLL_S``) drops it."""
        self._lost.add(replica_id)
        self._free.pop(replica_id, None)

    def read_ended(self) -> None:
        """A checkpoint's read into the node's memory ended: a request waiting for it may go now."""
        self._dispatch_soon()

    def _dispatch_soon(self) -> None:
        """Dispatch once the replies ready now are all in: a batch's replies free its slots
        together, and the freed batch is then filled with requests that batch with each other."""
        if not self._dispatch_due:
            self._dispatch_due = True
            asyncio.get_running_loop().call_soon(self._dispatch)

    def _dispatch(self) -> None:
        """Hand queued requests to free slots: the replica with most free slots first; after the
        next request in fair order, the next ones of the same shape (they batch together)."""
        self._dispatch_due = False
        while self.queue and any(self._free.values()):
            passed = self._pass_over_reads() or self._pass_over_head()
            if passed == TOOK:
                continue
            if passed == IDLE:
                return
            job = self._next(None)
            if job is None:
                return
            rid = self._place(job.model, job.adapters)
            self._grant(job, rid)
            while self._free[rid] and (same := self._next(job.shape)) is not None:
                self._grant(same, rid)

    def _pass_over_reads(self) -> str:
        """The rule of ``scheduler/preload.py: pass_over_reads`` (the simulator's too): while the head's
        checkpoint is being read, TOOK (a request behind it went) or IDLE (nothing goes until
        :meth:`read_ended`); "" otherwise, or while a free replica has not said what it holds."""
        head = self.queue.peek() if self.model_aware and self.wait_for_reads else None
        free = [rid for rid, slots in self._free.items() if slots]
        reading = self.reading() if head is not None else frozenset()
        if not reading or any(rid not in self._holding for rid in free):
            return ""
        held = [device | host for device, host in (self._holding[rid] for rid in free)]  # the replica's own host
        passed, job = pass_over_reads(head.model, reading, held,
                                      lambda test: self.queue.take(lambda q: test(q.model), HOLDER_LOOK_AHEAD))
        if job is not None and job.deadline <= time.time():
            self._expire(job)
        elif job is not None:
            self._grant(job, self._place(job.model, job.adapters))
        return passed

    def _pass_over_head(self) -> str:
        """The rules of ``scheduler/preload.py: pass_over`` for the free replicas whose
        checkpoints are known: TOOK (one took a request past the head), IDLE (the head waits for a
        starting replica and nothing else may go now) or "" (dispatch in order)."""
        head = self.queue.peek() if self.model_aware else None
        free = [rid for rid, slots in self._free.items() if slots and rid in self._holding]
        if head is None or not free:
            return ""
        busy = [models for rid, (models, _) in self._holding.items() if not self._free.get(rid)]
        starting = [{model} for model, _ in self._preloading.values()]
        node = self.node_memory() if starting else frozenset()  # it matters only to wait for a start or not
        free_hold = [(rid, self._holding[rid][0], self._holding[rid][1] | node) for rid in free]
        passed, rid, job = pass_over(head.model, free_hold, busy, starting,
                                     lambda test: self.queue.take(lambda q: test(q.model), HOLDER_LOOK_AHEAD))
        if job is not None and job.deadline <= time.time():
            self._expire(job)
        elif job is not None:
            self._grant(job, rid)
        return passed

    def _place(self, model: str, adapters: tuple[str, ...] = ()) -> str:
        """A replica with a free slot, by ``scheduler/placement.py``'s rule (the simulator's too):
        where the checkpoint is on the device, else in host memory (a copy; a load from disk costs
        like a cold start); then the fewest of the request's LoRAs to load, the most free slots, and
        where a load must evict, the coldest checkpoints. Only free replicas are candidates, so a hot
        checkpoint whose holders are all busy spreads to another replica instead of queueing behind
        them. A replica that has not said what it holds is taken to hold the request's checkpoint."""
        free = [rid for rid, slots in self._free.items() if slots]
        if not self.model_aware:
            return max(free, key=self._free.__getitem__)
        unknown = (frozenset({model}), frozenset())
        # host: the replica's own host memory only. The node's page cache is every replica's alike
        # (the simulator's shared host tier): it changes no replica's rank against another.
        views = [FreeReplica(rid, self.slots_per_replica - self._free[rid], *self._holding.get(rid, unknown),
                             self._adapters.get(rid, frozenset())) for rid in free]
        return str(choose_replica(views, model, adapters, self._last_sent).replica_id)

    def holds(self, replica_id: str, models: Iterable[str] | None, host: Iterable[str] = (),
              adapters: Iterable[tuple[str, str]] = ()) -> None:
        """What a replica's reply said it holds on its device (None: every checkpoint it serves), in
        host memory, and which LoRA adapters it has loaded into which checkpoint."""
        self._adapters[replica_id] = frozenset(adapters)
        if models is None:
            self._holding.pop(replica_id, None)
        else:
            self._holding[replica_id] = (frozenset(models), frozenset(host))

    def preload_for(self, replica_id: str, default: str) -> str:
        """The checkpoint a starting replica should load (scheduler/preload.py): the one the queue
        needs most per replica holding it, counting what replicas still starting were told."""
        choice = preload_choice([job.model for job in self.queue], self._checkpoints_held(), default)
        self._preloading[replica_id] = (choice, time.time())
        return choice

    def residency(self) -> dict[str, dict[str, Any]]:
        """Each running replica's free slots, the checkpoints it holds (None before it said) and the
        adapters loaded into them (``checkpoint/adapter``), as its latest reply said."""
        return {rid: {"free_slots": free,
                      "resident": sorted(self._holding[rid][0]) if rid in self._holding else None,
                      "host": sorted(self._holding[rid][1]) if rid in self._holding else None,
                      "adapters": [f"{model}/{adapter}" for model, adapter in sorted(self._adapters.get(rid, ()))]}
                for rid, free in self._free.items()}

    def _next(self, shape: Hashable | None) -> QueuedJob | None:
        """The next request in fair order (of ``shape`` if given); expired ones are answered."""
        now = time.time()
        while True:
            job = self.queue.pop(None if shape is None else (lambda j: j.shape == shape))
            if job is None:
                return None
            if job.deadline > now:
                return job
            self._expire(job)

    def _expire(self, job: QueuedJob) -> None:
        """A request whose deadline passed while it queued: its waiter gets :class:`Expired`."""
        granted = self._waiting.get(job.job_id)
        if granted is not None and not granted.done():
            granted.set_exception(Expired())

    def _grant(self, job: QueuedJob, rid: str) -> None:
        granted = self._waiting.get(job.job_id)
        if granted is None or granted.done():
            return
        if self.on_sent is not None:
            self.on_sent(job.job_id, self.tier(job.model, rid))
        self._free[rid] -= 1
        self._held[job.job_id] = rid
        self._last_sent[job.model] = time.time()
        granted.set_result(rid)

    @property
    def queued(self) -> int:
        return len(self.queue)
