"""LoRA adapters kept in a pipeline, and their loads counted before a call starts: the deadline
rules shed a request whose adapter load would make it late, by the loads this replica measured."""

from __future__ import annotations

import functools

import pytest

from models.adapters import LoadedAdapters
from models.catalog import CatalogGenerator
from models.request import GenerationRequest
from scheduler.admission import ReplicaRules
from scheduler.load_timing import LoadTiming
from scheduler.outcomes import Outcome
from serve.execution import JobRunner
from serve.protocol import WorkerJob
from tests.test_same_rules import STEP_S, Clock, SteppingBackend

LORA_S = 3.0  # one adapter load on the fake clock


def lora(*names: str) -> tuple[tuple[str, float], ...]:
    return tuple((name, 1.0) for name in names)


@pytest.mark.parametrize(("resident", "calls", "kept", "loads"), [
    (0, [("a",), ("b",), ("a",)], ["b", "a"], 2),  # unbounded: each loaded once, a used last
    (1, [("a",), ("b",), ("a",)], ["a"], 3),  # one kept: a deleted for b, loaded again
    (1, [("a", "b")], ["a", "b"], 2),  # a call's own adapters all stay, whatever the bound
    (2, [("a",), ("b",), ("a",), ("c",)], ["a", "c"], 3),  # b least recently used
    (2, [("a", "a")], ["a"], 1),  # named twice, loaded once
])
def test_adapters_are_loaded_once_kept_by_recency_and_timed(
        resident: int, calls: list[tuple[str, ...]], kept: list[str], loads: int) -> None:
    clock, deleted = Clock(), []

    def load_one(name: str) -> None:
        clock.now += LORA_S

    adapters = LoadedAdapters(resident, clock=lambda: clock.now)
    for names in calls:
        adapters.load(lora(*names), load_one, deleted.append)
    assert list(adapters) == kept and adapters.timing == LoadTiming(loads, loads * LORA_S)
    assert len(deleted) == loads - len(kept)
    assert adapters.expected_load_s(lora(*kept)) == 0.0  # loaded: nothing to wait for
    assert adapters.expected_load_s(lora(*kept, "new", "newer")) == 2 * LORA_S


def test_nothing_is_expected_before_a_load_was_measured() -> None:
    assert LoadedAdapters().expected_load_s(lora("a", "b")) == 0.0


class AdapterStepping(SteppingBackend):
    """A stepping pipeline whose adapters take ``LORA_S`` of the fake clock each to load."""

    def __init__(self, clock: Clock) -> None:
        super().__init__(clock)
        self.loaded_adapters = LoadedAdapters(clock=lambda: clock.now)

    def prepare(self, request: GenerationRequest) -> tuple[str, float]:
        def load_one(name: str) -> None:
            self.clock.now += LORA_S

        return "none", self.loaded_adapters.load(request.loras, load_one)


def test_a_worker_sheds_a_job_its_adapter_loads_would_make_late_and_runs_one_whose_adapters_are_loaded() -> None:
    clock = Clock()
    catalog = CatalogGenerator({name: functools.partial(AdapterStepping, clock) for name in ("a", "b")}, "a",
                               resident=1, clock=lambda: clock.now)
    runner = JobRunner(catalog, "r", ReplicaRules(shed_hopeless=True), clock=lambda: clock.now)

    def run(job_id: str, model: str, loras: tuple[tuple[str, float], ...], time_left: float | None = None):
        request = GenerationRequest(job_id, 64, 64, 4, 1.0, 0, model=model, loras=loras)
        deadline = None if time_left is None else clock.now + time_left
        [reply] = runner.run([WorkerJob(request, job_id, clock.now, deadline, job_id=job_id)], lambda j: False,
                             lambda jid, event: None)
        return reply

    for k in range(4):  # the replica learns its speed
        assert run(f"warm{k}", "a", ()).outcome == Outcome.OK
    tight = 4 * STEP_S + 1.0  # enough for the call, not for an adapter load as well
    first = run("x", "a", lora("x"), tight)  # no adapter load measured yet: nothing to shed it by
    assert first.outcome == Outcome.DEADLINE and catalog.adapter_timing.loads == 1
    assert catalog.expected_load_s(GenerationRequest("p", 64, 64, 4, 1.0, 0, model="a", loras=lora("x", "y"))) == (
        pytest.approx(LORA_S))
    shed = run("y", "a", lora("y"), tight)  # now it knows an adapter load takes 3 s
    assert shed.outcome == Outcome.SHED and "LoRA adapters" in shed.message
    assert run("x-again", "a", lora("x"), tight).outcome == Outcome.OK  # loaded: nothing to wait for
    # another checkpoint: none of its adapters loaded, priced by the mean the first one measured
    other = GenerationRequest("p", 64, 64, 4, 1.0, 0, model="b", loras=lora("x", "y"))
    assert catalog.expected_load_s(other) == pytest.approx(2 * LORA_S)  # no checkpoint load measured yet: only the adapters
    assert run("b-loose", "b", lora("x")).outcome == Outcome.OK
    assert catalog.loaded["b"].loaded_adapters.timing is catalog.adapter_timing  # one mean for the catalog
