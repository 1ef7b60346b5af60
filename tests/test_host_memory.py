"""Requests read from disk for a host memory of N checkpoints: LRU against the fewest any rule can."""

from __future__ import annotations

import functools
import json
from itertools import combinations
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scheduler.simulation.host_memory import (
    ONLINE_RULES,
    HostMisses,
    fewest_misses,
    host_memory_misses,
    lru_k,
    lru_misses,
    rule_misses,
    tenant_returns,
    uses_within,
)
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


def _timed(models: str) -> list[tuple[float, str]]:
    return [(float(at), model) for at, model in enumerate(models)]


@pytest.mark.parametrize(("models", "capacity", "rule", "expected"), [
    # B was used twice before C comes: LRU evicts it (its last use is oldest), LRU-2 evicts A (used once).
    ("BBACB", 2, lru_k(1), 4),
    ("BBACB", 2, lru_k(2), 3),
    # the same choice by uses in a window long enough to see both of B's uses, and LRU's in one too short
    ("BBACB", 2, uses_within(10.0), 3),
    ("BBACB", 2, uses_within(0.5), 4),
    # LRU-3 has seen no checkpoint three times: it falls back to LRU
    ("BBACB", 2, lru_k(3), 4),
])
def test_online_rules_table(models: str, capacity: int, rule, expected: int) -> None:
    assert rule_misses(_timed(models), capacity, rule) == expected


@settings(max_examples=150, deadline=None)
@given(sequences, st.integers(1, 4), st.integers(0, 9))
def test_lru_1_is_lru_and_no_online_rule_reads_less_than_the_fewest(models: list[str], capacity: int,
                                                                     count_from: int) -> None:
    count_from = min(count_from, len(models))
    assert rule_misses(_timed(models), capacity, lru_k(1), count_from) == lru_misses(models, capacity, count_from)
    for score in ONLINE_RULES.values():
        assert fewest_misses(models, capacity, count_from) <= rule_misses(_timed(models), capacity, score, count_from)


@pytest.mark.parametrize(("models", "tenants", "capacity", "count_from", "expected"), [
    ("ABA", "xyx", 1, 0, 1),  # x reads A again after y's B evicted it: x had asked for A
    ("ABA", "xyz", 1, 0, 0),  # z never asked for A
    ("ABA", "xyx", 2, 0, 0),  # A stayed: no read from disk
    ("ABA", "xyx", 1, 3, 0),  # nothing counted
])
def test_tenant_returns_table(models: str, tenants: str, capacity: int, count_from: int, expected: int) -> None:
    assert tenant_returns(list(models), list(tenants), capacity, count_from) == expected


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
    timed = [(a.at, a.model) for a in read_trace(trace)]
    assert written["results"]["online_rules"]["2"]["LRU-3"] == rule_misses(timed, 2, ONLINE_RULES["LRU-3"])
