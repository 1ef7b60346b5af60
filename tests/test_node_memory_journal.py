"""The node memory's journal, live and simulated: what each records, and where two first part —
the tool that lines a live replay's page cache up against the simulator's (SIMULATION). No Ray."""

from __future__ import annotations

from pathlib import Path

import pytest

from models.page_cache import SimulatedPageCache
from scheduler.simulation.fleet import simulate
from scheduler.simulation.journal import JournaledMemory, first_difference
from scheduler.simulation.policies import FixedFleet
from scheduler.simulation.workload import FleetSpec, SimRequest


def test_the_simulators_node_memory_notes_arrivals_uses_and_evictions_with_their_times() -> None:
    now = [0.0]
    memory = JournaledMemory(lambda: now[0])
    memory["A"] = 5.0
    now[0] = 1.0
    memory["B"] = 6.0
    memory["A"] = 7.0  # already there: a new read time, not an arrival
    now[0] = 2.0
    memory.move_to_end("A")
    assert memory.popitem(last=False) == ("B", 6.0)
    assert memory.events == [(0.0, "in", "A"), (1.0, "in", "B"), (2.0, "use", "A"), (2.0, "out", "B")]


def test_the_live_simulated_page_cache_writes_the_same_journal(tmp_path: Path) -> None:
    now = [100.0]
    journal = tmp_path / "journal"
    cache = SimulatedPageCache(tmp_path / "cache", capacity=1, read_s=2.0, clock=lambda: now[0], journal=journal)
    cache.read("simulated:A")
    now[0] = 101.0
    cache.ready_at("simulated:A")
    cache.ready_at("simulated:A", use=False)  # a look, not a use
    cache.read("simulated:B", 0.0)
    assert journal.read_text().splitlines() == [
        "100.000000 in simulated_A", "101.000000 use simulated_A", "101.000000 in simulated_B",
        "101.000000 out simulated_A"]
    silent = SimulatedPageCache(tmp_path / "other", capacity=1, read_s=2.0)
    silent.read("simulated:A")
    assert journal.read_text().count("\n") == 4  # no journal given: nothing written


def test_the_live_journal_is_read_in_replay_seconds_under_the_simulators_names(tmp_path: Path) -> None:
    from benchmarks.validate import read_journal

    journal = tmp_path / "run" / "journal"
    journal.parent.mkdir()
    journal.write_text("1000.500000 in simulated_M0016\n1001.250000 out simulated_M0016\n")
    assert read_journal(journal, 1000.0) == [[0.5, "in", "M0016"], [1.25, "out", "M0016"]]
    assert not journal.parent.exists()  # the run's temporary directory, removed once read
    assert read_journal(tmp_path / "none", 1000.0) == [] and read_journal(None, 1000.0) == []


@pytest.mark.parametrize("live, simulated, expected", [
    ([(1, "in", "A"), (2, "use", "A"), (3, "out", "A")], [(1.5, "in", "A"), (3.5, "out", "A")], None),
    ([(1, "in", "A"), (3, "out", "A")], [(1, "in", "A"), (3, "out", "B")],
     {"index": 1, "live": [3, "out", "A"], "simulated": [3, "out", "B"]}),
    ([(1, "in", "A")], [(1, "in", "A"), (2, "in", "B")], None),  # the same as far as both go
])
def test_the_journals_first_part_where_their_arrivals_or_evictions_differ(live, simulated, expected) -> None:
    """Uses are left aside: their order follows the calls' timing, which the tolerances judge."""
    assert first_difference(live, simulated) == expected


@pytest.mark.parametrize("journal", [False, True])
def test_a_simulation_keeps_the_node_memorys_journal_only_when_asked(journal: bool) -> None:
    """Two requests for B on one replica holding D, the node memory holding 1: B is read in (its
    load from disk), then used by the second call; with the journal on, exactly that."""
    spec = FleetSpec(initial_replicas=1, gpu_slots=1, max_queued_requests=-1, dispatch=True, shed_hopeless=False,
                     models_per_replica=1, host_models_per_node=1, model_load_host_s=3, model_load_disk_s=30,
                     default_model="D", journal_node_memory=journal)
    requests = [SimRequest(0.0, timeout_s=600, model="B"), SimRequest(100.0, timeout_s=600, model="B")]
    result = simulate(requests, spec, lambda images, pixels, steps: 1.0, FixedFleet(1))
    moves = [(event, model) for _, event, model in result.node_memory_events if event != "use"]
    assert moves == ([("in", "D"), ("in", "B"), ("out", "D")] if journal else [])


def test_a_replicas_page_cache_writes_where_the_settings_say(tmp_path: Path) -> None:
    from serve.settings import AppSettings
    from serve.worker_setup import simulation_profile

    settings = AppSettings.model_validate({
        "model": {"id": "a", "backend": "simulated", "catalog": {"b": "simulated"}, "resident_models": 1},
        "simulation": {"page_cache_checkpoints": 2, "page_cache_journal": str(tmp_path / "journal")}})
    cache = simulation_profile(settings, str(tmp_path / "cache")).page_cache()
    assert cache is not None and cache.journal == tmp_path / "journal"
