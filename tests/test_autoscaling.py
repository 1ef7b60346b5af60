"""The autoscaling decision, table-driven and by hypothesis properties."""

from __future__ import annotations

import dataclasses
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scheduler.autoscaling import (
    AutoscalerConfig,
    AutoscalerInputs,
    AutoscalerState,
    decide,
)

CONFIG = AutoscalerConfig(
    min_replicas=0, max_replicas=4, capacity_per_replica=1, stable_window_s=10,
    scale_down_interval_s=5, scale_to_zero_after_s=30, default_service_time_s=1.0,
    default_cold_start_s=2.0,
)


def _inputs(now=100.0, queued=0, in_flight=0, running=0, starting=0, service=None, cold=None):
    return AutoscalerInputs(now, queued, in_flight, running, starting, service, cold)


# (description, inputs, previous state, expected desired)
TABLE = [
    ("idle at zero stays at zero", _inputs(), AutoscalerState(), 0),
    ("first request from zero starts one", _inputs(queued=1), AutoscalerState(), 1),
    ("burst from zero sizes to the backlog, capped at max", _inputs(queued=12), AutoscalerState(), 4),
    ("burst of 3 from zero starts 3", _inputs(queued=3), AutoscalerState(), 3),
    ("starting replicas count as capacity to come",
     _inputs(queued=2, starting=2), AutoscalerState(target=2), 2),
    ("backlog over running capacity scales up at once",
     _inputs(queued=5, in_flight=1, running=1), AutoscalerState(target=1), 4),
    ("cold start longer than the drain: no new replica",
     _inputs(queued=2, in_flight=1, running=1, service=1.0, cold=30.0), AutoscalerState(target=1), 1),
    ("cold start shorter than the drain: start only what is left then",
     _inputs(queued=5, in_flight=1, running=1, service=1.0, cold=3.0), AutoscalerState(target=1), 4),
    ("long service time makes new replicas worth it",
     _inputs(queued=2, in_flight=1, running=1, service=30.0, cold=3.0), AutoscalerState(target=1), 3),
    ("batched capacity divides the need",
     _inputs(queued=7, in_flight=1), AutoscalerState(), None),  # checked below with capacity 4
    # need_history: (when a need began, the need); a need stays in the window until it ended a window ago
    ("a recent burst in the window holds capacity",
     _inputs(now=105.0, running=3), AutoscalerState(target=3, need_history=((90.0, 3), (100.0, 0))), 3),
    ("low need after the window steps down by one",
     _inputs(now=120.0, in_flight=1, running=3), AutoscalerState(target=3, need_history=((90.0, 3), (100.0, 1))), 2),
    ("no second step inside the scale-down interval",
     _inputs(now=122.0, in_flight=1, running=2),
     AutoscalerState(target=2, last_scale_down_at=120.0, need_history=((90.0, 3), (100.0, 1))), 2),
    ("a replica still starting is kept while the need for it is younger than a cold start",
     _inputs(now=120.0, in_flight=1, running=1, starting=1, cold=30.0),
     AutoscalerState(target=2, need_history=((90.0, 2), (100.0, 1))), 2),
    ("... and stopped once that need is a cold start old",
     _inputs(now=131.0, in_flight=1, running=1, starting=1, cold=30.0),
     AutoscalerState(target=2, need_history=((90.0, 2), (100.0, 1))), 1),
    ("never below in-flight need",
     _inputs(now=200.0, in_flight=2, running=3), AutoscalerState(target=3), 2),
    ("idle inside the keep-alive keeps one",
     _inputs(now=120.0, running=1), AutoscalerState(target=1, idle_since=100.0), 1),
    ("idle past the keep-alive scales to zero",
     _inputs(now=131.0, running=1), AutoscalerState(target=1, idle_since=100.0), 0),
]


@pytest.mark.parametrize(("inputs", "state", "expected"),
                         [(i, s, e) for _, i, s, e in TABLE if e is not None],
                         ids=[d for d, *_, e in TABLE if e is not None])
def test_decision_table(inputs: AutoscalerInputs, state: AutoscalerState, expected: int) -> None:
    decision = decide(inputs, state, CONFIG)
    assert decision.desired == expected, decision.reason
    assert decision.reason


# a stable window (60 s) longer than the keep-alive (30 s): the request ended at 100 s
LONG_WINDOW = [
    ("the window holds the last replica past the keep-alive", True,
     _inputs(now=131.0, running=1), AutoscalerState(target=1, idle_since=100.0, need_history=((90.0, 1), (100.0, 0))), 1),
    ("... unless the keep-alive alone is to stop it", False,
     _inputs(now=131.0, running=1), AutoscalerState(target=1, idle_since=100.0, need_history=((90.0, 1), (100.0, 0))), 0),
    ("inside the keep-alive it stays either way", False,
     _inputs(now=129.0, running=1), AutoscalerState(target=1, idle_since=100.0, need_history=((90.0, 1), (100.0, 0))), 1),
    ("the window still holds a second replica", False,
     _inputs(now=131.0, running=2), AutoscalerState(target=2, idle_since=100.0, need_history=((90.0, 2), (100.0, 0))), 2),
    ("... and steps down from it one at a time after the window", False,
     _inputs(now=171.0, running=2), AutoscalerState(target=2, idle_since=100.0, need_history=((90.0, 2), (100.0, 0))), 1),
]


@pytest.mark.parametrize(("holds_last", "inputs", "state", "expected"), [row[1:] for row in LONG_WINDOW],
                         ids=[row[0] for row in LONG_WINDOW])
def test_the_window_holds_the_last_replica_only_when_configured_to(
        holds_last: bool, inputs: AutoscalerInputs, state: AutoscalerState, expected: int) -> None:
    config = AutoscalerConfig(**{**CONFIG.__dict__, "stable_window_s": 60.0, "window_holds_last": holds_last})
    decision = decide(inputs, state, config)
    assert decision.desired == expected, decision.reason


def test_batched_capacity_divides_the_need() -> None:
    batched = AutoscalerConfig(max_replicas=4, capacity_per_replica=4, default_cold_start_s=2.0)
    assert decide(_inputs(queued=7, in_flight=1), AutoscalerState(), batched).desired == 2
    assert decide(_inputs(queued=9), AutoscalerState(), batched).desired == 3


def test_burst_reason_names_the_backlog() -> None:
    decision = decide(_inputs(queued=12, starting=2), AutoscalerState(target=2), CONFIG)
    assert decision.reason == "burst: 12 queued, 0 running, 2 starting"


def test_keep_alive_clock_starts_when_the_last_request_ends() -> None:
    state = AutoscalerState(target=1)
    for now, in_flight in [(0, 1), (10, 1), (20, 0), (45, 0), (49.9, 0)]:
        decision = decide(_inputs(now=now, in_flight=in_flight, running=1), state, CONFIG)
        state = decision.state
        assert decision.desired == 1, (now, decision.reason)
    assert decide(_inputs(now=50.0, running=1), state, CONFIG).desired == 0


def test_scale_down_walks_one_step_per_interval() -> None:
    state = AutoscalerState(target=4, need_history=((0.0, 4),))
    seen = []
    now = 0.0
    while now <= 80:
        decision = decide(_inputs(now=now, running=state.target), state, CONFIG)
        if not seen or decision.desired != seen[-1][1]:
            seen.append((now, decision.desired))
        state = decision.state
        now += 0.5
    assert [count for _, count in seen] == [4, 3, 2, 1, 0]
    gaps = [b[0] - a[0] for a, b in zip(seen[1:], seen[2:])]
    assert all(gap >= CONFIG.scale_down_interval_s for gap in gaps[:-1])


def test_config_rejects_nonsense() -> None:
    with pytest.raises(ValueError, match="min_replicas"):
        AutoscalerConfig(min_replicas=5, max_replicas=4)
    with pytest.raises(ValueError, match="capacity"):
        AutoscalerConfig(capacity_per_replica=0)


# ---- properties -------------------------------------------------------------------------------

configs = st.builds(
    AutoscalerConfig,
    min_replicas=st.integers(0, 2),
    max_replicas=st.integers(2, 8),
    capacity_per_replica=st.integers(1, 8),
    stable_window_s=st.floats(0, 60),
    scale_down_interval_s=st.floats(0, 30),
    scale_to_zero_after_s=st.floats(0, 300),
    default_service_time_s=st.floats(0.1, 60),
    default_cold_start_s=st.floats(0, 60),
    window_holds_last=st.booleans(),
)
states = st.builds(
    AutoscalerState,
    target=st.integers(0, 8),
    idle_since=st.none() | st.floats(0, 1000),
    last_scale_down_at=st.none() | st.floats(0, 1000),
    need_history=st.lists(st.tuples(st.floats(900, 1000), st.integers(0, 8)), max_size=5).map(tuple),
)
inputs = st.builds(
    AutoscalerInputs,
    now=st.just(1000.0),
    queued=st.integers(0, 100),
    in_flight=st.integers(0, 32),
    running_replicas=st.integers(0, 8),
    starting_replicas=st.integers(0, 4),
    service_time_s=st.none() | st.floats(0.05, 120),
    cold_start_s=st.none() | st.floats(0, 120),
)


@settings(max_examples=400, deadline=None)
@given(inputs, states, configs)
def test_desired_is_always_within_bounds(i: AutoscalerInputs, s: AutoscalerState, c: AutoscalerConfig) -> None:
    assert c.min_replicas <= decide(i, s, c).desired <= c.max_replicas


@settings(max_examples=400, deadline=None)
@given(inputs, states, configs, st.integers(1, 50))
def test_monotone_in_queued_depth(
    i: AutoscalerInputs, s: AutoscalerState, c: AutoscalerConfig, extra: int
) -> None:
    more = AutoscalerInputs(i.now, i.queued + extra, i.in_flight, i.running_replicas,
                            i.starting_replicas, i.service_time_s, i.cold_start_s)
    assert decide(more, s, c).desired >= decide(i, s, c).desired


@settings(max_examples=400, deadline=None)
@given(inputs, states, configs)
def test_never_below_in_flight_need(i: AutoscalerInputs, s: AutoscalerState, c: AutoscalerConfig) -> None:
    need = math.ceil(i.in_flight / c.capacity_per_replica)
    assert decide(i, s, c).desired >= min(need, c.max_replicas)


@settings(max_examples=400, deadline=None)
@given(inputs, states, configs)
def test_no_scale_down_while_a_burst_is_absorbed(
    i: AutoscalerInputs, s: AutoscalerState, c: AutoscalerConfig
) -> None:
    provisioned = i.running_replicas + i.starting_replicas
    if math.ceil(i.queued + i.in_flight) > provisioned * c.capacity_per_replica:
        current = min(max(s.target, provisioned), c.max_replicas)
        assert decide(i, s, c).desired >= current


@settings(max_examples=400, deadline=None)
@given(inputs, states, configs)
def test_zero_only_after_the_keep_alive(i: AutoscalerInputs, s: AutoscalerState, c: AutoscalerConfig) -> None:
    decision = decide(i, s, c)
    if decision.desired == 0 and max(s.target, i.running_replicas + i.starting_replicas) > 0:
        assert i.queued + i.in_flight == 0
        assert decision.state.idle_since is not None
        assert i.now - decision.state.idle_since >= c.scale_to_zero_after_s


def test_a_need_leaving_the_window_a_float_sum_from_now_is_reviewed_at_the_next_step() -> None:
    """From the whole trace: need 4 ended at 1,174,871.1 and, with a replica starting, the window
    is a cold start (22.7 s) long. At 1,174,893.8 it still counts (22.69999999995 s ago), although
    1,174,871.1 + 22.7 sums to 1,174,893.8 exactly; 0.1 s later it has left and one replica goes. The
    review must fall before that step, or the simulator scales down late."""
    config = AutoscalerConfig(min_replicas=0, max_replicas=4, stable_window_s=20, scale_down_interval_s=5)
    state = AutoscalerState(target=4, need_history=((1174862.0, 3), (1174871.0, 4), (1174871.1, 3),
                                                    (1174875.9000000001, 2), (1174882.8, 1)))
    now = AutoscalerInputs(now=1174893.8, queued=0, in_flight=1, running_replicas=3, starting_replicas=1,
                           cold_start_s=22.7)
    held = decide(now, state, config)
    assert held.desired == 4 and held.review_at is not None and held.review_at <= 1174893.9
    assert decide(dataclasses.replace(now, now=1174893.9), held.state, config).desired == 3
