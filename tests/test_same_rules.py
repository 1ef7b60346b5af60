"""What the simulator shows is what runs: one short trace through the fleet simulator and through the
worker's own job runner gives the same admission, shedding and deadline decisions — both call
:class:`scheduler.admission.ReplicaRules`, both learn the replica's speed from the calls it ran, and
both count the checkpoint and adapter loads a call would need first by the loads the replica timed."""

from __future__ import annotations

import pytest

from models.catalog import CatalogGenerator
from models.generator import CallCounter, GroupedGenerator, LatentsHook, StopCheck
from models.request import GenerationRequest, GenerationResult, GenerationStopped
from scheduler.admission import ReplicaRules
from scheduler.outcomes import Outcome
from scheduler.simulation.fleet import simulate
from scheduler.simulation.policies import FixedFleet
from scheduler.simulation.workload import FleetSpec, SimRequest
from serve.execution import JobRunner
from serve.protocol import WorkerJob

STEP_S = 0.2  # per image and step
SIDE = 64

#: (arrival, steps, images, timeout): what happens to each is in the test's expected list.
TRACE = [
    (0.0, 10, 1, 100.0),  # runs 0–2 s
    (0.5, 10, 1, 3.0),  # runs from 2 s, stopped at its deadline: one call seen, nothing to shed it by
    (1.0, 20, 1, 100.0),  # runs 3.6–7.6 s; now two step counts are known
    (2.0, 30, 1, 8.0),  # 2.4 s left at 7.6 s, 30 steps take ~6 s: shed
    (2.0, 10, 2, 100.0),  # two images: a size never seen, no estimate, runs 7.6–11.6 s
    (3.0, 10, 1, 9.0),  # 0.4 s left at 11.6 s for a 2 s call: shed
    (3.0, 5, 1, 8.5),  # its deadline passes while it waits in the queue: never reaches the replica
    (12.0, 10, 1, 100.0),  # runs
]
EXPECTED = [Outcome.OK, Outcome.DEADLINE, Outcome.OK, Outcome.SHED, Outcome.OK, Outcome.SHED, Outcome.DEADLINE,
            Outcome.OK]


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class SteppingBackend(GroupedGenerator):
    """A pipeline that takes ``STEP_S`` per image and step of a fake clock, stopping between steps
    when asked, as the real one does."""

    def __init__(self, clock: Clock) -> None:
        self.clock, self.model_name, self.device, self.counter = clock, "stepping", "cpu", CallCounter()

    def _generate_group(self, group: list[GenerationRequest], should_stop: StopCheck | None,
                        on_latents: LatentsHook | None = None) -> list[GenerationResult]:
        images = sum(r.n for r in group)
        steps = group[0].num_inference_steps
        for step in range(1, steps + 1):
            self.clock.now += STEP_S * images
            if should_stop is not None and (reason := should_stop(step)) is not None:
                raise GenerationStopped(step, reason)
        return [GenerationResult([b"png"] * r.n, steps, steps, images) for r in group]


def test_the_simulator_and_the_worker_decide_alike_on_one_trace() -> None:
    requests = [SimRequest(at, n=n, steps=steps, pixels=SIDE * SIDE, timeout_s=timeout)
                for at, steps, n, timeout in TRACE]
    spec = FleetSpec(initial_replicas=1, gpu_slots=1, router_initial_backoff_s=0, max_queued_requests=-1)
    simulated = simulate(requests, spec, lambda images, pixels, steps: STEP_S * images * steps, FixedFleet(1))
    assert [r.outcome for r in simulated.records] == EXPECTED

    # the worker, handed each request alone when the simulated replica was (in a call, or refused at it)
    clock = Clock()
    runner = JobRunner(SteppingBackend(clock), "r", ReplicaRules(shed_hopeless=True), clock=clock)
    handed = sorted((r for r in simulated.records if r.replica is not None),
                    key=lambda r: r.start_s if r.start_s is not None else r.done_s)
    assert len(handed) == len(TRACE) - 1  # all but the one that expired in the queue
    for record in handed:
        at, steps, n, timeout = TRACE[record.index]
        clock.now = record.start_s if record.start_s is not None else record.done_s
        job = WorkerJob(GenerationRequest(f"r{record.index}", SIDE, SIDE, steps, 7.5, seed=1, n=n), str(record.index),
                        accepted_at=at, deadline=at + timeout)
        [reply] = runner.run([job], lambda job: False)
        assert reply.outcome == record.outcome, (record.index, reply.message)
        if reply.outcome == Outcome.OK:
            assert clock.now == pytest.approx(record.done_s)  # and it ends when the simulator said


#: (arrival, checkpoint, LoRAs, steps, timeout) on a replica holding one checkpoint ("a" from its
#: start), a load from disk 5 s, an adapter load 3 s.
MODEL_TRACE = [
    (0.0, "a", (), 10, 100.0),  # runs 0–2 s
    (0.5, "a", (), 20, 100.0),  # runs 2–6 s: two step counts known
    (1.0, "b", (), 10, 100.0),  # loads b from disk (5 s), runs 6–13 s: a disk load measured
    (1.5, "a", (), 10, 14.0),  # 2.5 s left at 13 s: the call fits, not a's load from disk first: shed
    (2.0, "b", ("x:1",), 10, 100.0),  # loads adapter x (3 s), runs 13–18 s: an adapter load measured
    (2.5, "b", ("y:1",), 10, 18.0),  # 2.5 s left at 18 s: the call fits, not y's load first: shed
    (3.0, "b", ("x:1",), 10, 18.0),  # x loaded: runs 18–20 s, in time
]
MODEL_EXPECTED = [Outcome.OK, Outcome.OK, Outcome.OK, Outcome.SHED, Outcome.OK, Outcome.SHED, Outcome.OK]


def test_the_simulator_and_the_worker_count_checkpoint_and_adapter_loads_alike() -> None:
    from tests.test_adapters import LORA_S, AdapterStepping

    disk_s = 5.0
    requests = [SimRequest(at, steps=steps, pixels=SIDE * SIDE, timeout_s=timeout, model=model, loras=loras)
                for at, model, loras, steps, timeout in MODEL_TRACE]
    spec = FleetSpec(initial_replicas=1, gpu_slots=1, router_initial_backoff_s=0, max_queued_requests=-1,
                     models_per_replica=1, default_model="a", model_load_disk_s=disk_s, loras_per_replica=10,
                     lora_load_s=LORA_S)
    simulated = simulate(requests, spec, lambda images, pixels, steps: STEP_S * images * steps, FixedFleet(1))
    assert [r.outcome for r in simulated.records] == MODEL_EXPECTED

    clock = Clock()

    def loader() -> AdapterStepping:
        clock.now += disk_s
        return AdapterStepping(clock)

    catalog = CatalogGenerator({"a": loader, "b": loader}, "a", resident=1, clock=lambda: clock.now)
    runner = JobRunner(catalog, "r", ReplicaRules(shed_hopeless=True), clock=clock)
    handed_at = {r.index: r.done_s if r.start_s is None else r.start_s - r.load_s for r in simulated.records}
    for record in sorted(simulated.records, key=lambda r: handed_at[r.index]):  # the pipeline starts after the loads
        at, model, loras, steps, timeout = MODEL_TRACE[record.index]
        clock.now = handed_at[record.index]
        request = GenerationRequest(f"r{record.index}", SIDE, SIDE, steps, 7.5, seed=1, model=model,
                                    loras=tuple((lora.partition(":")[0], 1.0) for lora in loras))
        job = WorkerJob(request, str(record.index), accepted_at=at, deadline=at + timeout)
        [reply] = runner.run([job], lambda job: False)
        assert reply.outcome == record.outcome, (record.index, reply.message)
        if reply.outcome == Outcome.OK:
            assert clock.now == pytest.approx(record.done_s)
