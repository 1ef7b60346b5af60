"""Requests read from disk for a host memory of N checkpoints: LRU against the fewest any rule can."""

from __future__ import annotations

import functools
import json
from itertools import combinations
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scheduler.simulation.host_memory import HostMisses, fewest_misses, host_memory_misses, lru_misses
from tests.conftest import ROOT


@pytest.mark.parametrize(("models", "capacity", "count_from", "expected"), [
    # LRU thrashes on a cycle one longer than the memory; MIN keeps one of the two and loses one per round.
    ("ABCABC", 2, 0, HostMisses(2, 6, lru=6, fewest=2, first_uses=3)),
    ("ABCABC", 3, 0, HostMisses(3, 6, lru=3, fewest=0, first_uses=3)),  # the best start holds all three
    ("ABCABCD", 2, 3, HostMisses(2, 4, lru=4, fewest=2, first_uses=1)),  # the first three only fill LRU
    ("AAAA", 1, 0, HostMisses(1, 4, lru=1, fewest=0, first_uses=1)),
    ("ABAB", 1, 2, HostMisses(1, 2, lru=2, fewest=1, first_uses=0)),
])
def test_table(models: str, capacity: int, count_from: int, expected: HostMisses) -> None:
    assert host_memory_misses(list(models), capacity, count_from) == expected


def test_a_memory_of_nothing_is_refused() -> None:
    with pytest.raises(ValueError, match="at least one"):
        host_memory_misses(["A"], 0)


def _cheapest_by_search(models: tuple[str, ...], capacity: int) -> int:
    """Every start of the memory and every choice of what to evict, searched exhaustively."""
    @functools.cache
    def cost(index: int, held: frozenset[str]) -> int:
        if index == len(models):
            return 0
        model = models[index]
        if model in held:
            return cost(index + 1, held)
        if len(held) < capacity:
            return 1 + cost(index + 1, held | {model})
        return 1 + min(cost(index + 1, (held - {out}) | {model}) for out in held)

    alphabet = sorted(set(models))
    return min(cost(0, frozenset(start)) for size in range(min(capacity, len(alphabet)) + 1)
               for start in combinations(alphabet, size))


sequences = st.lists(st.sampled_from("ABCDE"), min_size=0, max_size=9)


@settings(max_examples=150, deadline=None)
@given(sequences, st.integers(1, 4))
def test_fewest_is_the_exact_optimum_from_the_best_start(models: list[str], capacity: int) -> None:
    assert fewest_misses(models, capacity) == _cheapest_by_search(tuple(models), capacity)


@settings(max_examples=200, deadline=None)
@given(sequences, st.integers(1, 4), st.integers(0, 9))
def test_fewest_never_above_lru_and_both_fall_as_memory_grows(models: list[str], capacity: int, count_from: int) -> None:
    count_from = min(count_from, len(models))
    lru, fewest = lru_misses(models, capacity, count_from), fewest_misses(models, capacity, count_from)
    assert 0 <= fewest <= lru <= len(models) - count_from
    assert lru_misses(models, capacity + 1, count_from) <= lru  # LRU is a stack algorithm
    assert fewest_misses(models, capacity + 1, count_from) <= fewest


def test_the_command_writes_both_counts_per_size_with_its_provenance(tmp_path: Path) -> None:
    from benchmarks import cli
    from benchmarks.traces import read_trace

    trace = ROOT / "benchmarks" / "traces" / "synthetic-models.csv"
    assert cli.main(["host-memory", "--trace", str(trace), "--sizes", "4,2", "--out-dir", str(tmp_path),
                     "--name", "sizing"]) == 0
    written = json.loads((tmp_path / "sizing.json").read_text())
    models = [a.model for a in read_trace(trace)]
    assert written["results"]["rows"] == [host_memory_misses(models, size).__dict__ for size in (2, 4)]
    assert {"command", "when", "commit"} <= set(written["meta"])
    assert "fewest any eviction rule can" in (tmp_path / "sizing.md").read_text()
