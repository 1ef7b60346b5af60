"""The discrete-event fleet simulator: arrivals → router queue → replicas → outcomes, over days.

Pure and deterministic for a seed: no Ray, no torch, no sleeping. It reproduces the live system's
rules (``serve/`` and Ray Serve's router and controller):

- **Router**: requests wait in one FIFO queue for a replica with a free slot
  (``max_ongoing_requests``); beyond ``max_queued_requests`` waiting, the answer is 503
  (``overloaded``). A request whose deadline passes while it waits is answered 504 then
  (``deadline``) and removed. A slot that frees is not filled at once: Ray's routing tasks
  (two per running replica) poll for one with exponential backoff (25 ms doubling, capped at
  0.5 s; ``request_router.py``), so a queue behind a busy replica leaves it idle between calls.
- **Replicas** start (cold start, optional jitter), run, and stop. Ray stops starting replicas
  first, then the newest running ones; a running replica that is stopped finishes what it holds
  (graceful shutdown) and pays until then.
- **Calls**: single mode runs one request per call; batched mode takes up to ``max_batch_size``
  requests after ``batch_wait_timeout_s`` (``@serve.batch``), splits them by (size, steps) and runs
  the groups one after another, answering all when the batch returns, as the worker does.
  At a group's start each request is admitted (``shed`` when the replica's estimate says it cannot
  finish in time); a group stops at the first step boundary after all of its members' deadlines;
  a member whose deadline passes inside a call that goes on is answered 504 at its deadline.
- **Control loop**: the policy is called every ``control_interval_s`` while anything is queued or
  starting (``idle_control_interval_s`` otherwise) and its target is applied at once.
"""

from __future__ import annotations

import heapq
import math
import random
from collections import deque

from scheduler.adaptive_batching import AdaptiveBatcher, AdaptiveConfig, Waiting
from scheduler.collector import PendingJob
from scheduler.outcomes import DEADLINE
from scheduler.simulation.policies import ControlPolicy, Observation, StepSeries
from scheduler.simulation.records import Replica, RequestRecord, SimResult
from scheduler.simulation.workload import FleetSpec, ServiceModel, SimRequest

ARRIVE, READY, FINISH, CALL_DONE, EXPIRE, BATCH, TICK, ROUTE = range(8)


class Simulator:
    def __init__(self, requests: list[SimRequest], spec: FleetSpec, service: ServiceModel,
                 policy: ControlPolicy) -> None:
        self.requests = sorted(requests, key=lambda r: r.arrival_s)
        self.spec, self.service, self.policy = spec, service, policy
        self.rng = random.Random(spec.seed)
        self.records = [RequestRecord(i, r.arrival_s, r.n) for i, r in enumerate(self.requests)]
        self.deadline = [r.arrival_s + r.timeout_s for r in self.requests]
        self.replicas: list[Replica] = []
        self.active: list[Replica] = []  # holding a GPU: starting, running, draining
        self.pending: list[Replica] = []  # wanted, waiting for a GPU (not paid)
        self.resolved = 0
        self.queue: deque[int] = deque()
        self.queued_count = 0
        self.located: dict[int, str] = {}  # request → "queued" | "replica"; absent: not here or done
        self.unanswered: dict[int, None] = {}  # accepted, not answered: the ingress's view, in arrival order
        self.replies: list[tuple[float, float, int, int, int]] = []  # heap: (end, seconds, images, steps, pixels)
        self.arrived: list[float] = []  # since the last tick
        self.outstanding = 0
        self.target = 0
        self.events: list[tuple[float, int, int, int, int]] = []
        self._seq = 0
        self.tick_token = 0
        self.next_tick_at: float | None = None  # None: no tick scheduled (nothing can change)
        keep = max(policy.look_back_s, 1.0) + 1.0
        self.total, self.waiting = StepSeries(keep), StepSeries(keep)
        self.samples: list[tuple[float, int, int, int]] = []
        self.policy_calls = 0
        self.now = 0.0
        self.routing: dict[int, int] = {}  # Ray's routing tasks: id → backoff attempt (-1: fresh)
        self._routing_ids = 0

    # -- events -------------------------------------------------------------------------------
    def _push(self, t: float, kind: int, a: int = 0, b: int = 0) -> None:
        self._seq += 1
        heapq.heappush(self.events, (t, self._seq, kind, a, b))

    def run(self) -> SimResult:
        for _ in range(self.spec.initial_replicas):
            replica = self._new_replica(0.0, cold=False)
            replica.state = "running"
        self.target = self.spec.initial_replicas
        for i, request in enumerate(self.requests):
            self._push(request.arrival_s, ARRIVE, i)
        if self.target:
            self._schedule_tick(0.0)
        total = len(self.requests)
        handlers = {ARRIVE: self._arrive, READY: self._ready, FINISH: self._finish, CALL_DONE: self._call_done,
                    EXPIRE: self._expire, BATCH: self._batch_timer, TICK: self._tick,
                    ROUTE: self._route}
        while self.events and self.resolved < total:
            t, _, kind, a, b = heapq.heappop(self.events)
            self.now = t
            handlers[kind](a, b)
            self._sample()
        end = max((r.done_s for r in self.records), default=0.0)
        return SimResult(self.policy.name, self.records, self.replicas, self.samples, end, self.policy_calls)

    def _sample(self) -> None:
        point = (len(self.active), sum(1 for r in self.active if r.state == "running"), self.outstanding)
        if not self.samples or self.samples[-1][1:] != point:
            self.samples.append((self.now, *point))

    # -- arrivals and the router --------------------------------------------------------------
    def _arrive(self, i: int, _: int) -> None:
        self.arrived.append(self.now)
        limit = self.spec.max_queued_requests
        if limit >= 0 and self.queued_count >= limit:
            self._answer(i, "overloaded", self.now)
            return
        self.outstanding += 1
        self.unanswered[i] = None
        self.queue.append(i)
        self.queued_count += 1
        self.located[i] = "queued"
        self._push(self.deadline[i], EXPIRE, i)
        self._dispatch()
        self._counts_changed()
        grid = math.ceil(self.now / self.spec.control_interval_s - 1e-9) * self.spec.control_interval_s
        if self.next_tick_at is None or self.next_tick_at > grid:
            self._schedule_tick(grid)  # the live loop ticks every 0.1 s: it sees even a short request

    def _expire(self, i: int, _: int) -> None:
        where = self.located.get(i)
        if where == "queued":
            self.queued_count -= 1  # left in the deque; skipped when popped
        elif where == "replica":
            replica = self.replicas[self.records[i].replica]
            replica.waiting.remove(i)  # Ray cancels it before it reached a call
            if replica.state == "draining" and not replica.busy and not replica.waiting:
                self._release(replica)
        else:
            return
        self.located.pop(i)
        self.outstanding -= 1
        self.unanswered.pop(i, None)
        self._answer(i, DEADLINE, self.now)
        self._counts_changed()

    def _dispatch(self) -> None:
        """Fill free slots from the queue: at once, or through Ray's polling routing tasks."""
        if self.spec.router_initial_backoff_s <= 0:
            while self._dispatch_one():
                pass
            return
        while len(self.routing) < self._routing_target():
            self._routing_ids += 1
            self.routing[self._routing_ids] = -1
            self._route(self._routing_ids, 0)

    def _routing_target(self) -> int:
        """Ray's ``target_num_routing_tasks``: one per queued request, at most two per replica."""
        running = sum(1 for r in self.active if r.state == "running")
        return min(self.queued_count, self.spec.router_tasks_per_replica * running, 50)

    def _route(self, task: int, _: int) -> None:
        """One routing attempt: the oldest queued request to a free slot, else back off and retry.
        A task that routed one takes the next at once with a fresh backoff; a surplus task retires."""
        if task not in self.routing:
            return
        if len(self.routing) > self._routing_target():
            del self.routing[task]
            return
        if self._dispatch_one():
            self.routing[task] = -1
            self._push(self.now, ROUTE, task)
            self._counts_changed()
            return
        attempt = self.routing[task]
        spec = self.spec
        backoff = 0.0 if attempt < 0 else min(
            spec.router_initial_backoff_s * spec.router_backoff_multiplier ** attempt, spec.router_max_backoff_s)
        self.routing[task] = attempt + 1
        self._push(self.now + backoff, ROUTE, task)

    def _dispatch_one(self) -> bool:
        """The oldest queued request to the least-loaded running replica with a free slot."""
        cap = self.spec.max_ongoing_requests
        free = [r for r in self.active if r.state == "running" and r.ongoing < cap]
        while self.queued_count and free:
            replica = min(free, key=lambda r: (r.ongoing, r.id))
            i = self.queue.popleft()
            if self.located.get(i) != "queued":
                continue  # expired while queued
            self.queued_count -= 1
            self.located[i] = "replica"
            self.records[i].replica = replica.id
            replica.waiting.append(i)
            self._maybe_start_call(replica)
            return True
        return False

    def _counts_changed(self) -> None:
        self.total.set(self.now, self.outstanding)
        self.waiting.set(self.now, self.queued_count)

    def _answer(self, i: int, outcome: str, when: float) -> None:
        record = self.records[i]
        record.outcome, record.done_s = outcome, when
        self.resolved += 1

    # -- replicas -----------------------------------------------------------------------------
    def _new_replica(self, now: float, cold: bool = True) -> Replica:
        spec = self.spec
        jitter = self.rng.uniform(-spec.cold_start_jitter_s, spec.cold_start_jitter_s) if cold else 0.0
        cold_s = max(0.0, spec.cold_start_s + jitter)
        replica = Replica(len(self.replicas), now, now + (cold_s if cold else 0.0), cold_s)
        self.replicas.append(replica)
        if cold and spec.gpu_slots is not None and len(self.active) >= spec.gpu_slots:
            replica.state = "pending"  # no GPU free until a stopping replica lets go of one
            self.pending.append(replica)
        else:
            self.active.append(replica)
            if cold:
                replica.cold_started = True
                self._push(replica.ready_s, READY, replica.id)
        return replica

    def _release(self, replica: Replica) -> None:
        """``replica`` stopped: its GPU goes to the oldest pending replica, whose start begins now."""
        replica.state, replica.stopped_s = "stopped", self.now
        self.active.remove(replica)
        if self.pending:
            waiting = self.pending.pop(0)
            waiting.state, waiting.started_s = "starting", self.now
            waiting.ready_s = self.now + waiting.cold_start_s
            waiting.cold_started = True
            self.active.append(waiting)
            self._push(waiting.ready_s, READY, waiting.id)

    def _ready(self, rid: int, _: int) -> None:
        replica = self.replicas[rid]
        if replica.state == "starting":
            replica.state = "running"
            self._dispatch()
            self._counts_changed()

    def _stop(self, replica: Replica) -> None:
        if replica.state == "pending":
            replica.state, replica.stopped_s = "stopped", replica.started_s  # never held a GPU: free
            self.pending.remove(replica)
        elif replica.state == "running" and (replica.busy or replica.waiting):
            replica.state = "draining"
        else:
            self._release(replica)

    def _apply_target(self, target: int) -> None:
        self.target = target
        alive = self.pending + [r for r in self.active if r.state in ("starting", "running")]
        if target > len(alive):
            for _ in range(target - len(alive)):
                self._new_replica(self.now)
        elif target < len(alive):
            not_running = [r for r in alive if r.state != "running"][::-1]
            running = [r for r in alive if r.state == "running"][::-1]
            for replica in (not_running + running)[: len(alive) - target]:
                self._stop(replica)

    # -- calls --------------------------------------------------------------------------------
    def _maybe_start_call(self, replica: Replica) -> None:
        if replica.busy or not replica.waiting:
            return
        spec = self.spec
        if spec.max_batch_size == 1 or len(replica.waiting) >= spec.max_batch_size:
            self._start_call(replica)
        elif replica.batch_timer == 0:
            replica.batch_timer = self._seq + 1
            self._push(self.now + spec.batch_wait_timeout_s, BATCH, replica.id, replica.batch_timer)

    def _batch_timer(self, rid: int, token: int) -> None:
        replica = self.replicas[rid]
        if replica.batch_timer == token and not replica.busy and replica.waiting:
            self._start_call(replica)

    def _start_call(self, replica: Replica) -> None:
        spec = self.spec
        replica.batch_timer = 0
        if spec.adaptive:
            batch = self._adaptive_batch(replica)
        else:
            batch = replica.waiting[: spec.max_batch_size]
        replica.waiting = [i for i in replica.waiting if i not in batch]
        replica.in_call = batch
        replica.busy = True
        for i in batch:
            self.located.pop(i, None)  # in a call: only its own finish answers it now
        t = self.now
        finishing: list[int] = []
        groups: dict[tuple[int, int], list[int]] = {}
        for i in batch:
            groups.setdefault((self.requests[i].pixels, self.requests[i].steps), []).append(i)
        for (pixels, steps), members in groups.items():
            t = self._run_group(replica, members, pixels, steps, t, finishing)
        for i in finishing:
            self._push(t, FINISH, i, 1)
        self._push(t, CALL_DONE, replica.id)

    def _adaptive_batch(self, replica: Replica) -> list[int]:
        """As the worker does: earliest deadline first, the head's size and steps, as many as the
        replica's learned model says meet every member's deadline (AIMD while it is cold)."""
        if replica.batcher is None:
            replica.batcher = AdaptiveBatcher(AdaptiveConfig(
                max_batch_size=self.spec.max_batch_size, min_calls=self.spec.adaptive_min_calls,
                margin=self.spec.adaptive_margin))
        ordered = sorted(replica.waiting[: self.spec.max_batch_size], key=lambda i: self.deadline[i])
        head = self.requests[ordered[0]]
        same = [i for i in ordered if (self.requests[i].pixels, self.requests[i].steps) == (head.pixels, head.steps)]
        k = replica.batcher.choose([Waiting(self.deadline[i], self.requests[i].n) for i in same], self.now,
                                   head.pixels, head.steps)
        return same[:k]

    def _run_group(self, replica: Replica, members: list[int], pixels: int, steps: int, t: float,
                   finishing: list[int]) -> float:
        """Admit and run one (size, steps) group starting at ``t``; return when it ends."""
        spec = self.spec
        images = sum(self.requests[i].n for i in members)
        estimate = self.service(images, pixels, steps)
        admitted = []
        for i in members:
            if t >= self.deadline[i]:
                self._push(t, FINISH, i, 0)  # expired at admission (the ingress answered already)
                self.records[i].outcome = DEADLINE
            elif spec.shed_hopeless and replica.calls >= spec.shed_after_calls and self.deadline[i] - t < estimate:
                self.records[i].outcome = "shed"
                self._push(t, FINISH, i, 0)
            else:
                admitted.append(i)
        if not admitted:
            return t
        images = sum(self.requests[i].n for i in admitted)
        # the measured per-request overhead (routing, hand-offs, serialization) holds the slot too
        duration = self.service(images, pixels, steps) + spec.request_overhead_s
        step_s = duration / steps if steps else duration
        last_deadline = max(self.deadline[i] for i in admitted)
        stopped = last_deadline < t + duration
        end = t + (min(duration, math.ceil((last_deadline - t) / step_s - 1e-9) * step_s) if stopped else duration)
        replica.calls += 1
        if replica.batcher is not None:  # learnt when the call ends, as the live replica does
            in_time = not stopped and all(self.deadline[i] >= end for i in admitted)
            replica.learned = (images, pixels, steps, duration if not stopped else 0.0, in_time)
        if not stopped:
            heapq.heappush(self.replies, (end, duration, images, steps, pixels))
            alpha = spec.service_time_alpha
            replica.service_ewma_s = duration if replica.service_ewma_s is None else (
                alpha * duration + (1 - alpha) * replica.service_ewma_s)
        for i in admitted:
            record = self.records[i]
            record.start_s, record.replica = t, replica.id
            if self.deadline[i] < end or stopped:
                record.outcome = DEADLINE
                self._push(min(self.deadline[i], end), FINISH, i, 0)
            else:
                record.outcome = "ok"
                record.service_time_s, record.batch_images = duration, images
                finishing.append(i)
        return end

    def _finish(self, i: int, _: int) -> None:
        record = self.records[i]
        record.done_s = self.now
        self.outstanding -= 1
        self.unanswered.pop(i, None)
        self.resolved += 1
        self._counts_changed()

    def _call_done(self, rid: int, _: int) -> None:
        replica = self.replicas[rid]
        replica.busy, replica.in_call = False, []
        if replica.learned is not None:
            images, pixels, steps, seconds, in_time = replica.learned
            replica.batcher.observe(images if seconds else 0, pixels, steps, seconds, in_time)
            replica.learned = None
        if replica.state == "draining" and not replica.waiting:
            self._release(replica)
            return
        self._maybe_start_call(replica)
        self._dispatch()

    # -- the control loop ---------------------------------------------------------------------
    def _jobs(self) -> list[PendingJob]:
        """The outstanding requests as the ingress knows them, in arrival order."""
        return [self._job_of(i) for i in self.unanswered]

    def _job_of(self, i: int) -> PendingJob:
        r = self.requests[i]
        return PendingJob(r.arrival_s, self.deadline[i], r.n, r.steps, r.pixels)

    def _schedule_tick(self, at: float) -> None:
        """The next control-loop call at ``at``; any call scheduled before it is dropped."""
        self.tick_token += 1
        self.next_tick_at = at
        self._push(at, TICK, self.tick_token)

    def _tick(self, token: int, _b: int) -> None:
        if token != self.tick_token:
            return  # superseded by an earlier tick scheduled on an arrival
        self.next_tick_at = None
        running = [r for r in self.active if r.state == "running"]
        said = self.spec.reported_cold_start_s
        reports: dict[str, dict[str, float]] = {
            "cold_start_s": {str(r.id): r.cold_start_s if said is None else said for r in running}}
        service = {str(r.id): r.service_ewma_s for r in running if r.service_ewma_s is not None}
        if service:
            reports["service_time_s"] = service
        replies = []
        while self.replies and self.replies[0][0] <= self.now:
            replies.append(heapq.heappop(self.replies)[1:])
        starting = len(self.pending) + sum(1 for r in self.active if r.state == "starting")
        obs = Observation(self.now, len(running), self.target, self.total, self.waiting, reports,
                          starting=starting, jobs=self._jobs, replies=replies, arrivals=self.arrived)
        self.arrived = []
        self.policy_calls += 1
        target = self.policy(obs)
        if target != self.target:
            self._apply_target(target)
            self._dispatch()
        starting = self.pending or any(r.state == "starting" for r in self.active)
        if self.queued_count or starting:
            self._schedule_tick(self.now + self.spec.control_interval_s)
        elif self.active or self.outstanding or self.now - self.total.last_change_s <= self.policy.look_back_s:
            self._schedule_tick(self.now + self.spec.idle_control_interval_s)
        # else: nothing can change until the next arrival


def simulate(requests: list[SimRequest], spec: FleetSpec, service: ServiceModel,
             policy: ControlPolicy) -> SimResult:
    """Replay ``requests`` against a fleet run by ``policy``; every request gets one outcome."""
    return Simulator(requests, spec, service, policy).run()
