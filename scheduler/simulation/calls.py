"""Pipeline calls on a simulated replica, by the worker's rules (:class:`~scheduler.admission.ReplicaRules`).

Single mode runs one request per call; batched mode takes up to ``max_batch_size`` requests after
``batch_wait_timeout_s`` (``@serve.batch``), splits them by (size, steps, kind, checkpoint, LoRA
set) and runs the groups one after another, answering all when the batch returns, as the worker does. At a group's start each
request is admitted by the replica's rules (``shed`` when the replica's own call-time model, learnt
from the calls it simulated, says it cannot finish in time); the adaptive setting admits each
request alone, earliest deadline first, and sizes the call by the same rule as the worker. A group
stops at the first step boundary after all of its members' deadlines; a member whose deadline
passes inside a call that goes on is answered 504 at its deadline.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from scheduler.admission import Admission, JobView, earliest_deadline_first
from scheduler.collector import CallReport
from scheduler.outcomes import Outcome
from scheduler.placement import adapter_ids
from scheduler.simulation.events import Event
from scheduler.simulation.models import DISK, HOST
from scheduler.simulation.records import CallLearning, Replica
from scheduler.simulation.workload import SimRequest

if TYPE_CHECKING:
    from scheduler.simulation.fleet import Simulator

#: A refused request's outcome, by the rules' verdict (the simulator has no memory model).
REFUSED = {Admission.EXPIRED: Outcome.DEADLINE, Admission.HOPELESS: Outcome.SHED}


def _call_shape(r: SimRequest) -> tuple[object, ...]:
    """What one pipeline call's requests share: size, steps, kind, checkpoint and LoRA set."""
    return r.pixels, r.steps, r.model, r.kind, r.loras


class CallRunner:
    def __init__(self, sim: Simulator) -> None:
        self.sim = sim

    def view(self, i: int, replica: Replica | None = None) -> JobView:
        """What the deadline rules know of request ``i``; on ``replica``: what it expects to load first."""
        r, spec = self.sim.requests[i], self.sim.spec
        load_s = replica.models.expected_load_s(r.model, r.loras, spec) if replica and spec.models_per_replica else 0.0
        return JobView(self.sim.deadline[i], r.n, r.pixels, r.steps, load_s)

    def assigned(self, replica: Replica) -> None:
        """A request joined ``replica``'s waiting list: start a call, or the batch-wait timer."""
        if replica.busy or not replica.waiting:
            return
        spec, sim = self.sim.spec, self.sim
        if spec.max_batch_size == 1 or len(replica.waiting) >= spec.max_batch_size:
            self._start_call(replica)
        elif replica.batch_timer == 0:
            replica.batch_timer = sim.events.seq + 1
            sim.events.push(sim.now + spec.batch_wait_timeout_s, Event.BATCH, replica.id, replica.batch_timer)

    def batch_timer(self, rid: int, token: int) -> None:
        replica = self.sim.pool.all[rid]
        if replica.batch_timer == token and not replica.busy and replica.waiting:
            self._start_call(replica)

    def _refuse(self, i: int, admission: Admission, at: float) -> None:
        self.sim.records[i].outcome = REFUSED[admission]
        self.sim.events.push(at, Event.FINISH, i, 0)

    def _start_call(self, replica: Replica) -> None:
        sim = self.sim
        replica.batch_timer = 0
        if sim.spec.adaptive:
            batch, refused = self._adaptive_batch(replica)
        else:
            batch, refused = replica.waiting[: sim.spec.max_batch_size], []
        taken = set(batch + refused)
        replica.waiting = [i for i in replica.waiting if i not in taken]
        for i in taken:
            sim.router.in_call(i)  # in a call (or refused): only its own finish answers it now
        groups: dict[tuple[object, ...], list[int]] = {}
        for i in batch:
            r = sim.requests[i]
            groups.setdefault(_call_shape(r), []).append(i)
        t, finishing = sim.now, []
        for members in groups.values():
            t = self._run_group(replica, members, t, finishing)
        for i in finishing:
            sim.events.push(t, Event.FINISH, i, 1)
        replica.busy, replica.in_call = True, batch
        sim.events.push(t, Event.CALL_DONE, replica.id)

    def _adaptive_batch(self, replica: Replica) -> tuple[list[int], list[int]]:
        """As the worker does: earliest deadline first, the head's size and steps; each admitted
        alone (expired or hopeless ones answered now); as many as the rules' batch size. Returns
        the call and the refused."""
        sim = self.sim
        window = replica.waiting[: sim.spec.max_batch_size]
        views = [self.view(i) for i in window]
        ordered = [window[k] for k in earliest_deadline_first(views)]
        head = sim.requests[ordered[0]]
        same = [i for i in ordered if _call_shape(sim.requests[i]) == _call_shape(head)]
        admitted, refused = [], []
        for i in same:
            verdict = replica.rules.admit(self.view(i, replica), sim.now)
            if verdict.admission is Admission.RUN:
                admitted.append(i)
            else:
                self._refuse(i, verdict.admission, sim.now)
                refused.append(i)
        if not admitted:
            return [], refused
        k = replica.rules.batch_size([self.view(i) for i in admitted], sim.now)
        return admitted[:k], refused

    def _run_group(self, replica: Replica, members: list[int], t: float, finishing: list[int]) -> float:
        """Admit and run one (size, steps) group starting at ``t``; return when it ends."""
        sim, spec = self.sim, self.sim.spec
        first = sim.requests[members[0]]
        pixels, steps = first.pixels, first.steps
        call_pixels = sum(sim.requests[i].n for i in members) * pixels
        admitted = []
        for i in members:
            verdict = replica.rules.admit(self.view(i, replica), t, call_pixels) if not spec.adaptive else None
            if verdict is not None and verdict.admission is not Admission.RUN:
                self._refuse(i, verdict.admission, t)  # an expired one: the ingress answered already
            else:
                admitted.append(i)
        if not admitted:
            return t
        tier, lora_loads, loaded_s = None, 0, 0.0
        if spec.models_per_replica:  # its checkpoint first, if the replica does not hold it
            tier, loaded_s = replica.models.load(first.model, spec, t)
            replica.models.timed_load(tier, loaded_s, spec)
            for i in admitted if spec.tells_loads else ():  # where they went, and what the replica holds
                sim.policy.started(str(i), t, tier)
            if spec.loras_per_replica and first.loras:  # then its adapters
                lora_loads, lora_s = replica.models.load_loras(first.model, first.loras, spec)
                loaded_s += lora_s
            t += loaded_s
        images = sum(sim.requests[i].n for i in admitted)
        pipeline_s = sim.service(images, pixels, steps)
        # the measured per-request overhead (routing, hand-offs, serialization) holds the slot too
        duration = pipeline_s + spec.request_overhead_s
        step_s = duration / steps if steps else duration
        last_deadline = max(sim.deadline[i] for i in admitted)
        stopped = last_deadline < t + duration
        steps_done = max(0, min(steps, math.ceil((last_deadline - t) / step_s - 1e-9))) if stopped else steps
        end = t + (steps_done * step_s if stopped else duration)
        replica.calls += 1
        in_time = not stopped and all(sim.deadline[i] >= end for i in admitted)
        # learnt when the call ends, as the live replica does: the pipeline's own time
        replica.learning.append(CallLearning(images * pixels, steps_done, pipeline_s * steps_done / steps, in_time))
        capacity = self._capacity(replica, admitted, pixels, steps)
        for i in admitted:
            record = sim.records[i]
            record.start_s, record.replica = t, replica.id
            record.call_s, record.call_images = end - t, images
            record.model_load = DISK if record.waited_for_read and tier == HOST else tier
            record.lora_loads, record.load_s = lora_loads, loaded_s
            if sim.deadline[i] < end or stopped:
                record.outcome = Outcome.DEADLINE
                sim.events.push(min(sim.deadline[i], end), Event.FINISH, i, 0)
            else:
                record.outcome = Outcome.OK
                record.service_time_s, record.batch_images = duration, images
                sim.reports[i] = CallReport(pipeline_s, images, steps, pixels, self._reported_cold_start(replica),
                                            capacity, loaded_s, tier or "", len(adapter_ids(sim.requests[i].loras)))
                finishing.append(i)
        return end

    def _reported_cold_start(self, replica: Replica) -> float:
        spec = self.sim.spec
        if spec.reported_cold_starts_s:
            return spec.reported_cold_starts_s[replica.id % len(spec.reported_cold_starts_s)]
        return replica.cold_start_s if spec.reported_cold_start_s is None else spec.reported_cold_start_s

    def _capacity(self, replica: Replica, call: list[int], pixels: int, steps: int) -> int | None:
        """What the replica reports with each reply as its batch capacity (adaptive): for work like
        this call's, due within the time its members were given."""
        return replica.rules.effective_capacity(pixels, steps, [self.sim.requests[i].timeout_s for i in call])

    def call_done(self, rid: int) -> None:
        sim = self.sim
        replica = sim.pool.all[rid]
        replica.busy, replica.in_call = False, []
        for learned in replica.learning:
            replica.rules.after_call(learned.call_pixels, learned.steps_done, learned.seconds, learned.all_in_time)
        replica.learning = []
        if replica.state == "draining" and not replica.waiting:
            sim.pool.release(replica)
            return
        self.assigned(replica)
        sim.router.dispatch()
        sim.pool.warm(replica)
