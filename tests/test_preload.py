"""The checkpoint a new replica preloads: a table of queues and fleets, and properties."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scheduler.preload import (
    IDLE,
    TOOK,
    held_elsewhere,
    pass_over_head,
    pass_over_reads,
    preload_choice,
    waits_for_read,
    waits_for_start,
)

D = "default"


@pytest.mark.parametrize(("queued", "held", "expected"), [
    ([], [[D]], D),  # nothing queued: the default
    (["a", "b", "b"], [[D]], "b"),  # the most queued
    (["a", "b", "b"], [[D], ["b"]], "a"),  # b has a holder: 2/2 = 1 per replica, a 1/1: tie, a queued first
    (["b", "b", "b", "a"], [[D], ["b"]], "b"),  # 3/2 against 1/1
    (["", "", "a"], [[D], [D]], "a"),  # "" is the default: 2/3 against 1/1
    (["a", "b"], [], "a"),  # a tie: the first queued
    (["b", "a"], [], "b"),
])
def test_a_new_replica_loads_what_the_queue_needs_most_per_holder(queued: list[str], held: list[list[str]],
                                                                   expected: str) -> None:
    assert preload_choice(queued, held, D) == expected


MODELS = st.sampled_from(["", "a", "b", "c"])


@settings(max_examples=200, deadline=None)
@given(st.lists(MODELS, max_size=30), st.lists(st.lists(MODELS.filter(bool), max_size=2), max_size=4))
def test_the_choice_is_queued_or_the_default_and_more_demand_never_loses_it(queued: list[str],
                                                                            held: list[list[str]]) -> None:
    choice = preload_choice(queued, held, D)
    assert choice in {m or D for m in queued} or (not queued and choice == D)
    assert preload_choice(queued + [choice], held, D) == choice  # one more request for it keeps it chosen


@pytest.mark.parametrize(("head", "free", "others", "expected"), [
    ("a", [["b"]], [["a"]], True),  # a's holder is busy or starting: the free b replica takes a b request
    ("a", [["b"], ["a"]], [["a"]], False),  # a free replica holds a: it goes there
    ("a", [["b"]], [["c"]], False),  # nobody holds a: a free replica loads it
    ("a", [["b"]], [], False),
    ("", [["b"]], [["a"]], False),  # unnamed: never held back
])
def test_the_head_waits_for_its_holder_only_when_a_busy_or_starting_replica_holds_it(
        head: str, free: list[list[str]], others: list[list[str]], expected: bool) -> None:
    assert held_elsewhere(head, free, others) is expected


def _takes(head: str, free: list[list[str]], busy: list[list[str]], starting: list[list[str]], own: list[str],
           queued: list[str]) -> str | None:
    """What a free replica holding ``own`` takes from ``queued`` past the head (None: the head goes first)."""
    tests = pass_over_head(head, free, busy, starting, own)
    if tests is None:
        return None
    taken = next((m for test in tests for m in queued if test(m)), None)
    if taken is None:  # as the dispatchers do: the head waits only for a starting holder
        return "nothing: it stays free" if waits_for_start(head, free, starting) else None
    return taken


@pytest.mark.parametrize(("head", "busy", "starting", "queued", "expected"), [
    ("a", [], [], ["b", "c"], None),  # nobody holds a: it loads here
    ("a", [["a"]], [], ["c", "b"], "b"),  # a's holder is busy: a request for b (held here) goes first
    ("a", [["a"]], [], ["c"], None),  # ... none for b: a spreads here
    ("a", [], [["a"]], ["c", "b"], "b"),  # a's holder is starting: b first,
    ("a", [], [["a"]], ["a", "c"], "c"),  # else one nobody brings (c loads here),
    ("a", [], [["a", "c"]], ["a", "c"], "nothing: it stays free"),  # else nothing: a waits for its holder
])
def test_what_a_free_replica_holding_b_takes_past_the_head(head: str, busy: list[list[str]],
                                                          starting: list[list[str]], queued: list[str],
                                                          expected: str | None) -> None:
    assert _takes(head, [["b"]], busy, starting, ["b"], queued) == expected


def test_the_head_does_not_wait_for_a_start_when_a_free_replica_has_its_checkpoint_in_host_memory() -> None:
    assert waits_for_start("a", [["b"]], [["a"]]) is True
    assert waits_for_start("a", [["b"]], [["a"]], free_host=[["a"]]) is False  # a copy beats a cold start
    # the free replica takes its own checkpoint's requests first, else the head goes (and is copied in)
    tests = pass_over_head("a", [["b"]], [], [["a"]], ["b"], free_host=[["a"]])
    assert tests is not None and [t("b") for t in tests] == [True] and [t("c") for t in tests] == [False]


def _past_reads(head: str, reading: set[str], free: list[list[str]], queued: list[str]) -> tuple[str, str | None]:
    """What pass_over_reads does with ``queued`` behind the head (within the look-ahead, in order)."""
    def take(test: Callable[[str], bool]) -> str | None:
        return next((model for model in queued if test(model)), None)
    return pass_over_reads(head, reading, free, take)


@pytest.mark.parametrize(("head", "reading", "free", "queued", "expected"), [
    ("a", set(), [["b"]], ["b"], ("", None)),  # a's read is done (or never began): a goes first
    ("a", {"a"}, [["a"]], ["b"], ("", None)),  # a free replica holds a (device or own host memory): it goes there
    ("a", {"a"}, [["b"]], ["b", "c"], (TOOK, "b")),  # a waits for its read: b goes first
    ("a", {"a"}, [["b"]], ["c"], (TOOK, "c")),  # ... or any that can start now (c loads from disk)
    ("a", {"a", "c"}, [["b"]], ["a", "c", "b"], (TOOK, "b")),  # the first that waits for no read
    ("a", {"a", "c"}, [["b"]], ["a", "c"], (IDLE, None)),  # all wait for reads: nothing goes
    ("", {"a"}, [["b"]], ["b"], ("", None)),  # a request naming no checkpoint never waits
])
def test_a_free_replica_takes_a_request_past_a_head_whose_checkpoint_is_still_being_read(
        head: str, reading: set[str], free: list[list[str]], queued: list[str],
        expected: tuple[str, str | None]) -> None:
    assert _past_reads(head, reading, free, queued) == expected


@settings(max_examples=200, deadline=None)
@given(MODELS, st.sets(MODELS.filter(bool)), st.lists(st.lists(MODELS.filter(bool), max_size=2), min_size=1, max_size=3),
       st.lists(MODELS, max_size=8))
def test_what_goes_past_a_reading_head_never_waits_for_a_read_itself(head: str, reading: set[str],
                                                                    free: list[list[str]], queued: list[str]) -> None:
    passed, job = _past_reads(head, reading, free, queued)
    assert (passed == "") == (not waits_for_read(head, reading, free))
    if passed == TOOK:
        assert job is not None and not waits_for_read(job, reading, free)
    if passed == IDLE:
        assert all(waits_for_read(model, reading, free) for model in queued)
