"""Adapter warming, the what-if (SIMULATION): an idle replica loads its checkpoints' most used
adapters; what it saves a later request, and what a request sent to it mid-load waits."""

from __future__ import annotations

import pytest

from scheduler.simulation.fleet import simulate
from scheduler.simulation.lora_warming import AdapterUses, next_to_warm
from scheduler.simulation.policies import FixedFleet
from scheduler.simulation.workload import FleetSpec, SimRequest


@pytest.mark.parametrize(("uses", "now", "k", "expected"), [
    ([], 10.0, 3, []),
    ([(0.0, ("L1:1",)), (1.0, ("L1:0.8",))], 10.0, 3, ["L1"]),  # the scale does not matter
    ([(0.0, ("L1:1",))], 10.0, 3, []),  # used once: not warmed
    ([(0.0, ("L1:1", "L1:1"))], 10.0, 3, []),  # one request naming it twice is one use
    ([(0.0, ("L1:1",)), (1.0, ("L2:1",)), (2.0, ("L1:1",)), (3.0, ("L2:1",)), (4.0, ("L2:1",))], 10.0, 3,
     ["L2", "L1"]),  # the most used first
    ([(0.0, ("L1:1",)), (1.0, ("L2:1",)), (2.0, ("L2:1",)), (3.0, ("L1:1",))], 10.0, 3,
     ["L1", "L2"]),  # equals: the most recently used first
    ([(0.0, ("L1:1",)), (1.0, ("L2:1",)), (2.0, ("L2:1",)), (3.0, ("L1:1",))], 10.0, 1, ["L1"]),  # k of them
    ([(0.0, ("L1:1",)), (1.0, ("L1:1",)), (90_000.0, ("L1:1",))], 90_001.0, 3, []),  # older than a day: gone
])
def test_a_checkpoints_adapters_ranked_by_use_in_the_last_day(
        uses: list[tuple[float, tuple[str, ...]]], now: float, k: int, expected: list[str]) -> None:
    history = AdapterUses()
    for t, loras in uses:
        history.add(t, "A", loras)
    assert history.top("A", now, k) == expected and history.top("B", now, k) == []


@pytest.mark.parametrize(("device", "loaded", "expected"), [
    (["A"], set(), ("A", "L1")),
    (["A"], {("A", "L1")}, ("A", "L2")),
    (["A"], {("A", "L1"), ("A", "L2")}, None),
    (["A", "B"], set(), ("B", "L3")),  # the most recently used checkpoint first
    (["A", "B"], {("B", "L3")}, ("A", "L1")),
    (["C"], set(), None),  # no adapter used with it
])
def test_an_idle_replica_warms_its_most_recent_checkpoints_top_adapter_not_loaded_yet(
        device: list[str], loaded: set[tuple[str, str]], expected: tuple[str, str] | None) -> None:
    top = {"A": ["L1", "L2"], "B": ["L3"]}
    assert next_to_warm(device, loaded, lambda model: top.get(model, [])) == expected


@pytest.mark.parametrize("warming", [0, 1])
def test_a_warmed_adapter_saves_a_later_load_and_a_request_sent_mid_load_waits_for_it(warming: int) -> None:
    """One replica, one checkpoint on its GPU. L1 is used twice with A, then B pushes A (and L1) off
    the GPU; A comes back at 30 and its call ends at 33. Warming loads L1 for A from 33 to 37: the
    request at 34 waits until 37, and the one at 50 with L1 loads nothing; without warming the
    request at 34 starts at once and the one at 50 loads L1 first."""
    spec = FleetSpec(initial_replicas=1, gpu_slots=1, max_queued_requests=-1, dispatch=True, shed_hopeless=False,
                     models_per_replica=1, loras_per_replica=4, lora_load_s=4, default_model="A",
                     model_load_disk_s=2, lora_warming=warming)
    requests = [SimRequest(0.0, timeout_s=600, model="A", loras=("L1:1",)),
                SimRequest(10.0, timeout_s=600, model="A", loras=("L1:1",)),
                SimRequest(20.0, timeout_s=600, model="B"),
                SimRequest(30.0, timeout_s=600, model="A"),
                SimRequest(34.0, timeout_s=600, model="A"),
                SimRequest(50.0, timeout_s=600, model="A", loras=("L1:1",))]
    result = simulate(requests, spec, lambda images, pixels, steps: 1.0, FixedFleet(1))
    assert [r.outcome for r in result.records] == ["ok"] * 6
    assert [r.lora_loads for r in result.records] == [1, 0, 0, 0, 0, 0 if warming else 1]
    assert result.records[3].done_s == 33.0 and result.records[4].start_s == (37.0 if warming else 34.0)
    assert sum(r.warm_loads for r in result.replicas) == warming
