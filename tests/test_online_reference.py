"""The online reference: traffic classes, the per-class keep-alive tuning, and the command on a
small many-model trace."""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import pytest

from benchmarks import online_reference
from benchmarks.online_reference import (
    popularity_classes,
    recurrence_classes,
    request_kinds,
    scored,
    session_classes,
    traffic_classes,
    tune_keep_alives,
)
from benchmarks.sim_bounds import shared_replica_run
from scheduler.simulation.bounds import BoundJob, LoadTimes
from tests.conftest import ROOT

SLO, COLD, SERVICE = 30.0, 22.7, 10.0


def _job(arrival: float, service: float = SERVICE) -> BoundJob:
    return BoundJob(arrival, service, arrival + SLO - service, arrival + SLO, arrival + service)


@pytest.mark.parametrize("arrivals, expected", [
    ([0.0, 100.0, 200.0, 700.0], [(0, 1), (0, 2), (0, 3), (0, 3)]),  # 0 left the 10 minutes before 700
    ([10_799.0, 10_801.0], [(0, 1), (1, 2)]),  # 3 h in: the next slot, the load carried over
    ([float(i) for i in range(7)], [(0, 1), (0, 2), (0, 3), (0, 4), (0, 5), (0, 5), (0, 5)]),  # capped at 5
    ([86_400.0 + 5.0], [(0, 1)]),  # the next day's first slot
])
def test_traffic_classes(arrivals: list[float], expected: list[tuple[int, int]]) -> None:
    assert traffic_classes([_job(t) for t in arrivals]) == expected


def test_request_kinds() -> None:
    """A 10 s call cannot follow a 22.7 s cold start within 30 s; a 5 s one can, unless its LoRA
    (4.4 s) comes first; the recent requests as in the traffic classes."""
    loads = LoadTimes(2.8, 35.0, 4.4, 4, 8)
    jobs = [_job(0.0), _job(100.0, 5.0), dataclasses.replace(_job(200.0, 5.0), adapters=("L1",))]
    assert request_kinds(jobs, COLD, loads) == [(0, 1), (1, 2), (0, 3)]
    assert request_kinds(jobs, COLD, None) == [(0, 1), (1, 2), (1, 3)]  # no loads charged


@pytest.mark.parametrize("requests, expected", [
    ([(0.0, "A")], [(0, 900, 3600)]),  # the first request: both gaps endless
    ([(0.0, "A"), (30.0, "B"), (100.0, "A"), (500.0, "A"), (2000.0, "B")],
     [(0, 900, 3600), (0, 0, 3600), (1, 60, 0), (0, 300, 300), (0, 900, 300)]),
    ([(0.0, "A"), (59.0, "A"), (60.0, "A"), (3660.0, "A")], [(0, 900, 3600), (0, 0, 0), (0, 0, 0), (0, 900, 3600)]),
])
def test_session_classes(requests: list[tuple[float, str]], expected: list[tuple[int, int, int]]) -> None:
    """(kind, the gap since the request before, the gap since its tenant's before), each gap at the
    largest edge it reaches; the request at 100 s is a 2 s call, which fits a cold start."""
    jobs = [_job(t, 2.0 if t == 100.0 else SERVICE) for t, _ in requests]
    assert session_classes(jobs, [tenant for _, tenant in requests], COLD, None) == expected


DAY = 86_400.0


@pytest.mark.parametrize("earlier, arrivals, expected", [
    ([], [0.0, DAY + 100.0], [(0, 1, 0), (0, 1, 0)]),  # 100 s after the first: before this time yesterday
    ([], [0.0, DAY - 300.0], [(0, 1, 0), (0, 1, 1)]),  # 300 s before it: in the 10 minutes after
    ([], [0.0, 10.0, 20.0, DAY - 500.0], [(0, 1, 0), (0, 2, 0), (0, 3, 0), (0, 1, 3)]),  # three: the top edge
    ([], [0.0, DAY - 600.0], [(0, 1, 0), (0, 1, 0)]),  # the window ends 600 s after (excluded)
    ([-DAY + 50.0, -DAY + 60.0], [0.0], [(0, 1, 1)]),  # the part's first day sees the day before it
    ([-DAY - 50.0], [0.0], [(0, 1, 0)]),  # ... only in the 10 minutes after
])
def test_recurrence_classes(earlier: list[float], arrivals: list[float], expected: list[tuple[int, ...]]) -> None:
    """(kind, recent requests, the requests in the 10 minutes after the same time a day before: 0,
    1 for 1-2, 3 for 3 or more)."""
    assert recurrence_classes([_job(t) for t in arrivals], earlier, COLD, None) == expected


def test_recurrence_keeps_a_replica_only_where_the_day_before_had_traffic() -> None:
    """Each day a lone request at 09:00 and a burst of three 100 s apart from 15:00 (10 s calls:
    each misses from a cold start). The kind and the recent requests see both first requests alike;
    from the second day on the recurrence class does not (one request in the 10 minutes after 09:00
    the day before, three after 15:00), so it keeps a replica after 15:00 only."""
    offsets = (9 * 3600.0, 15 * 3600.0, 15 * 3600.0 + 100.0, 15 * 3600.0 + 200.0)
    jobs = [_job(DAY * d + offset) for d in range(6) for offset in offsets]
    classes = recurrence_classes(jobs, [], COLD, None)
    assert classes[4:8] == [(0, 1, 1), (0, 1, 3), (0, 2, 1), (0, 3, 1)]
    choice = tune_keep_alives(jobs, classes, COLD, SLO, None, price_s=1000.0)
    assert choice[(0, 1, 1)] == 0.0 and choice[(0, 1, 3)] >= 90.0
    run = scored(jobs, classes, choice, 0.0, COLD, SLO, None)
    assert run["slo_attainment"] == 0.5  # each day's 09:00 and 15:00 miss, the burst's others are in time
    kinds = request_kinds(jobs, COLD, None)
    plain = scored(jobs, kinds, tune_keep_alives(jobs, kinds, COLD, SLO, None, price_s=1000.0), 0.0, COLD, SLO, None)
    assert plain["slo_attainment"] == 0.5 and plain["replica_seconds"] > run["replica_seconds"]


def _model_job(arrival: float, model: str) -> BoundJob:
    return dataclasses.replace(_job(arrival), model=model)


@pytest.mark.parametrize("earlier, requests, expected", [
    # none before: unseen (6); A once before (1st); B once, A twice (2nd); A and B twice each (1st: none above)
    ([], [(0.0, "A"), (10.0, "A"), (20.0, "B"), (30.0, "B"), (40.0, "A")],
     [(0, 1, 6), (0, 2, 1), (0, 3, 6), (0, 4, 2), (0, 5, 1)]),
    ([], [(0.0, "A"), (DAY + 1.0, "A")], [(0, 1, 6), (0, 1, 6)]),  # over a day before: not counted
    ([(-DAY + 100.0, "A")], [(0.0, "A")], [(0, 1, 1)]),  # the part before counts
    ([(-DAY - 1.0, "A")], [(0.0, "A")], [(0, 1, 6)]),  # ... within the day before only
    ([(-10.0, "A"), (-5.0, "B"), (-4.0, "C"), (-3.0, "D"), (-2.0, "E"), (-1.0, "E")], [(0.0, "A")],
     [(0, 1, 2)]),  # E above, A tied with B, C, D: 2nd
])
def test_popularity_classes(earlier: list[tuple[float, str]], requests: list[tuple[float, str]],
                            expected: list[tuple[int, ...]]) -> None:
    """(kind, recent requests, its checkpoint's rank by requests in the day before: 1 for the
    most used, 2 for the 2nd to 5th, 6 for the 6th on or none before)."""
    jobs = [_model_job(t, model) for t, model in requests]
    assert popularity_classes(jobs, earlier, COLD, None) == expected


def test_popularity_keeps_a_replica_only_after_the_hot_checkpoints_requests() -> None:
    """Each hour a request for the hot H, another for H 100 s later, and a lone one for C half an
    hour on: the kind and the recent requests see H's first and C's alike, its popularity class does
    not once a day of history ranks H above C."""
    jobs = [_model_job(3600.0 * k + offset, model) for k in range(6)
            for offset, model in ((0.0, "H"), (100.0, "H"), (1800.0, "C"))]
    classes = popularity_classes(jobs, [], COLD, None)
    assert classes[3:6] == [(0, 1, 1), (0, 2, 1), (0, 1, 2)]  # the second hour: H, H, C
    choice = tune_keep_alives(jobs, classes, COLD, SLO, None, price_s=1000.0)
    assert choice[(0, 1, 1)] >= 90.0 and choice[(0, 1, 2)] == 0.0
    run = scored(jobs, classes, choice, 0.0, COLD, SLO, None)
    kinds = request_kinds(jobs, COLD, None)
    plain = scored(jobs, kinds, tune_keep_alives(jobs, kinds, COLD, SLO, None, price_s=1000.0), 0.0, COLD, SLO, None)
    assert run["slo_attainment"] >= plain["slo_attainment"] and run["replica_seconds"] < plain["replica_seconds"]


def test_kinds_keep_a_replica_only_after_requests_whose_sessions_need_one() -> None:
    """Sessions of two like requests 100 s apart, an hour between sessions: long calls (10 s, which
    miss from a cold start) alternate with short ones (2 s, which do not). The kind tells them
    apart; the traffic class (all in one slot, the same load) cannot."""
    jobs = [_job(3600.0 * k + offset, SERVICE if k % 2 == 0 else 2.0) for k in range(4) for offset in (0.0, 100.0)]
    kinds = request_kinds(jobs, COLD, None)
    choice = tune_keep_alives(jobs, kinds, COLD, SLO, None, price_s=1000.0)
    assert choice == {(0, 1): 90.0, (0, 2): 0.0, (1, 1): 0.0, (1, 2): 0.0}
    run = scored(jobs, kinds, choice, 0.0, COLD, SLO, None)
    assert run["slo_attainment"] == 0.75  # only each long session's first misses
    classes = traffic_classes(jobs)
    by_class = scored(jobs, classes, tune_keep_alives(jobs, classes, COLD, SLO, None, price_s=1000.0), 0.0,
                      COLD, SLO, None)
    assert by_class["slo_attainment"] == 0.75 and by_class["replica_seconds"] > run["replica_seconds"]


def _pairs(count: int) -> list[BoundJob]:
    """Pairs 100 s apart, an hour between pairs: the second of a pair misses from a cold start."""
    return [_job(3600.0 * k + offset) for k in range(count) for offset in (0.0, 100.0)]


def test_tuning_keeps_a_replica_only_where_the_next_request_comes_soon() -> None:
    jobs = _pairs(2)
    classes = traffic_classes(jobs)
    assert set(classes) == {(0, 1), (0, 2)}  # a pair's first, its second
    choice = tune_keep_alives(jobs, classes, COLD, SLO, None, price_s=1000.0)
    # the first's call ends 32.7 s in (its cold start, then 10 s): 67.3 s to keep for the second;
    # after the second, an hour: cheaper to let it miss
    assert choice == {(0, 1): 90.0, (0, 2): 0.0}
    run = scored(jobs, classes, choice, 0.0, COLD, SLO, None)
    assert run["slo_attainment"] == 0.5 and run["cold_starts"] == 2  # each pair's first misses
    assert run["replica_seconds"] == pytest.approx(2 * (COLD + SERVICE + 90.0))  # the second ends inside the 90 s


def test_tuning_is_never_worse_than_the_best_single_keep_alive_and_a_low_price_keeps_nothing() -> None:
    jobs = _pairs(3)
    classes = traffic_classes(jobs)
    for price in (10.0, 1000.0, 100_000.0):
        choice = tune_keep_alives(jobs, classes, COLD, SLO, None, price)
        tuned = shared_replica_run(jobs, [choice[c] for c in classes], COLD, SLO, None)
        for keep in online_reference.KEEP_ALIVES_S:
            single = shared_replica_run(jobs, [keep] * len(jobs), COLD, SLO, None)
            assert (tuned["replica_seconds"] + price * (1 - tuned["slo_attainment"]) * len(jobs)
                    <= single["replica_seconds"] + price * (1 - single["slo_attainment"]) * len(jobs) + 1e-6)
    assert set(tune_keep_alives(jobs, classes, COLD, SLO, None, price_s=10.0).values()) == {0.0}


def test_the_command_on_a_many_model_trace(tmp_path: Path) -> None:
    parser = argparse.ArgumentParser()
    online_reference.add_arguments(parser)
    args = parser.parse_args(["--trace", str(ROOT / "benchmarks" / "traces" / "synthetic-models.csv"),
                              "--split-s", str(3 * 3600), "--cold-start-s", "10", "--out-dir", str(tmp_path),
                              "--name", "r", "--set", "model.resident_models=1"])
    assert online_reference.main(args) == 0
    data = json.loads((tmp_path / "r.json").read_text())
    assert data["meta"]["commit"] and data["meta"]["loads"]["lora_s"] > 0
    assert [(d["tune"], d["score"]) for d in data["directions"]] == [("first", "last"), ("last", "first")]
    for d in data["directions"]:
        assert len(d["fixed"]) == len(online_reference.KEEP_ALIVES_S)
        assert len(d["per_class"]) == len(d["per_kind"]) == len(d["per_session"]) == len(online_reference.MISS_PRICES_S)
        lower = data["bounds"][d["score"]]["lower_bound_replica_seconds"]
        share = data["bounds"][d["score"]]["share_lower_bound"]  # serving 98 % of the part in time
        assert 0 < share <= lower
        assert set(d["cheapest_meeting_target"]) == {"fixed", *online_reference.FAMILIES}
        assert len(d["per_recurrence"]) == len(online_reference.MISS_PRICES_S)
        for row in d["fixed"] + [row for family in online_reference.FAMILIES for row in d[family]]:
            assert row["held_out"]["cold_starts"] >= 1 and 0 < row["held_out"]["slo_attainment"] <= 1
            assert row["held_out"]["over_lower_bound"] == pytest.approx(row["held_out"]["replica_seconds"] / lower)
            assert row["held_out"]["over_share_bound"] >= row["held_out"]["over_lower_bound"]
    assert "SIMULATION" in (tmp_path / "r.md").read_text()
