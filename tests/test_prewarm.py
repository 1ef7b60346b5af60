"""The pre-warm (scheduler/prewarm.py): a table of histories → what is kept and read, properties,
and the simulator reading a predicted checkpoint into the node's memory before its request."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scheduler.prewarm import DAY_S, PrewarmConfig, days_used, prewarm_plan

H = 3600.0
NOW = 10 * DAY_S  # midnight of day 10; "at 9:00 on day d" is d * DAY_S + 9 * H
CONFIG = PrewarmConfig(days=7, min_days=2, horizon_s=H)  # the tables' (the defaults may move)


def at(day: int, hour: float) -> float:
    return day * DAY_S + hour * H


@pytest.mark.parametrize(("uses", "expected"), [
    ([], 0),
    ([at(9, 0.5)], 1),  # yesterday, within the coming hour's window
    ([at(9, 0.5), at(8, 0.2), at(3, 0.9)], 3),  # three different days back (7 at most)
    ([at(9, 0.5), at(9, 0.6)], 1),  # two uses on one day count once
    ([at(9, 1.5), at(8, 23.5)], 0),  # outside the window: after it, and before it
    ([at(2, 0.5)], 0),  # 8 days back: beyond the 7 looked at
    ([at(9, 23.9), at(10, 0.0) - 1], 0),  # within the last hour, but the window is the coming one
])
def test_days_used_counts_past_days_with_a_use_in_the_coming_window(uses: list[float], expected: int) -> None:
    assert days_used(sorted(uses), NOW, CONFIG) == expected


DAILY = [at(day, 0.5) for day in range(3, 10)]  # used every day around 00:30
TWICE = [at(8, 0.5), at(9, 0.5)]
ONCE = [at(9, 0.5)]
NIGHT = [at(day, 12) for day in range(3, 10)]  # every day, twelve hours off
RECENT = [NOW - 60.0]  # "anew": 30 s after it


@pytest.mark.parametrize(("cached", "capacity", "on_device", "keep", "read"), [
    ([], 4, [], [], ["daily", "twice"]),  # predicted (2+ days), most days first; once: not predicted
    (["night", "recent"], 3, [], ["recent"], ["daily", "twice"]),  # an empty slot and night's; recent stays
    (["night", "recent"], 2, [], ["recent"], ["daily"]),  # night's slot is the one read into
    (["recent", "daily"], 2, [], ["recent", "daily"], []),  # nothing evictable: no read
    ([], 4, ["daily"], [], ["twice"]),  # a replica holds it on its GPU: not read
    (["twice", "daily"], 4, [], ["twice", "daily"], []),  # kept, least wanted first (so LRU keeps daily longest)
    (["anew", "recent"], 4, [], ["recent", "anew"], ["daily", "twice"]),  # equals: least recently used first
])
def test_the_plan_keeps_the_predicted_and_recent_and_reads_into_the_others_slots(
        cached: list[str], capacity: int, on_device: list[str], keep: list[str], read: list[str]) -> None:
    uses = {"daily": DAILY, "twice": TWICE, "once": ONCE, "night": NIGHT, "recent": RECENT, "anew": [NOW - 30.0]}
    plan = prewarm_plan(uses, NOW, cached, capacity, on_device, CONFIG)
    assert (plan.keep, plan.read) == (keep, read)


def test_off_or_without_memory_the_plan_is_empty() -> None:
    uses = {"daily": DAILY}
    assert prewarm_plan(uses, NOW, [], 4, config=PrewarmConfig(days=0)).read == []
    assert prewarm_plan(uses, NOW, [], 0).read == []


@settings(max_examples=200, deadline=None)
@given(uses=st.dictionaries(st.sampled_from("abcdefgh"), st.lists(st.floats(0, NOW), max_size=20), max_size=8),
       cached=st.lists(st.sampled_from("abcdefgh"), unique=True, max_size=6), capacity=st.integers(0, 6))
def test_a_plan_never_evicts_what_it_keeps_nor_reads_beyond_its_limit(uses: dict, cached: list[str],
                                                                      capacity: int) -> None:
    cached = cached[:capacity]
    plan = prewarm_plan({m: sorted(t) for m, t in uses.items()}, NOW, cached, capacity, config=CONFIG)
    assert set(plan.keep) <= set(cached) and not set(plan.read) & set(cached)
    assert len(plan.keep) + len(plan.read) <= max(capacity, len(plan.keep))
    assert len(plan.read) <= PrewarmConfig().max_reads


@pytest.mark.parametrize(("prewarm_days", "k", "prewarm_k", "load"), [
    (0, 1, 1, "disk"), (7, 1, 1, "host"),
    (7, 15, 15, "host"),  # the whole day compressed 15×, the pre-warm's day too (validate's live runs)
    (7, 15, 1, "disk"),  # compressed arrivals, a pre-warm that still waits whole days: too late
])
def test_the_simulator_reads_a_daily_checkpoint_before_its_request(prewarm_days: int, k: float, prewarm_k: float,
                                                                   load: str) -> None:
    """SIMULATION. A is asked for at 00:30 on three days, while B and C are asked for from 06:00 to
    20:00; the node's memory holds two checkpoints, the GPU one. With the pre-warm, the fourth day's request
    for A finds it in memory (a host load); without, B and C pushed it out: a disk load."""
    from scheduler.simulation.fleet import simulate
    from scheduler.simulation.policies import FixedFleet
    from scheduler.simulation.workload import FleetSpec, SimRequest

    spec = FleetSpec(initial_replicas=1, gpu_slots=1, max_queued_requests=-1, dispatch=True, shed_hopeless=False,
                     models_per_replica=1, host_models_per_node=2, default_model="B", model_preload=True,
                     host_prefetch=True, prewarm_days=prewarm_days, model_load_host_s=3 / k, model_load_disk_s=30 / k,
                     prewarm_time_scale=prewarm_k)
    requests = [SimRequest(at(day, 0.5) / k, timeout_s=600 / k, model="A") for day in range(4)]
    requests += [SimRequest(at(day, hour) / k, timeout_s=600 / k, model=model)
                 for day in range(4) for hour in range(6, 21, 2) for model in "BC"]
    result = simulate(requests, spec, lambda images, pixels, steps: 1.0 / k, FixedFleet(1))
    last_a = next(r for r in result.records if r.arrival_s == at(3, 0.5) / k)
    assert last_a.model_load == load
