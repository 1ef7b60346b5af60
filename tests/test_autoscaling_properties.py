"""Properties of ``decide()`` with every rule the shipped configs turn on: a backlog with deadlines
(the deadline rule), the learned keep-alive per load regime with its cost-based choice, pre-warm.
The properties: bounded, monotone in load, the deadline rule starts no replica that saves nothing,
zero only after the keep-alive the decision itself planned, and that keep-alive the cheapest."""

from __future__ import annotations

import dataclasses
import math

from hypothesis import assume, given, settings
from hypothesis import strategies as st

from scheduler.autoscaling import (
    AutoscalerConfig,
    AutoscalerInputs,
    AutoscalerState,
    DecisionKind,
    decide,
)
from scheduler.deadline_scaling import Backlog, misses
from scheduler.keepalive import _BIN_MIDDLES_S, BIN_EDGES_S, cost_optimal_keep_alive

BINS = len(BIN_EDGES_S) + 1

configs = st.builds(
    AutoscalerConfig,
    min_replicas=st.integers(0, 1),
    max_replicas=st.integers(1, 6),
    capacity_per_replica=st.integers(1, 4),
    stable_window_s=st.floats(0, 120),
    scale_down_interval_s=st.floats(0, 30),
    scale_to_zero_after_s=st.floats(0, 600),
    default_service_time_s=st.floats(0.5, 30),
    default_cold_start_s=st.floats(0, 60),
    deadline_aware=st.booleans(),
    latency_objective_s=st.none() | st.floats(5, 60),
    keep_alive=st.sampled_from(["fixed", "histogram"]),
    cold_start_penalty_s=st.none() | st.floats(0, 1000),
    keep_alive_min_samples=st.integers(0, 5),
)
histograms = st.lists(st.integers(0, 6), min_size=BINS, max_size=BINS).map(tuple)
states = st.builds(
    AutoscalerState,
    target=st.integers(0, 6),
    idle_since=st.none() | st.floats(0, 1000),
    last_scale_down_at=st.none() | st.floats(0, 1000),
    need_history=st.lists(st.tuples(st.floats(800, 1000), st.integers(0, 6)), max_size=4).map(
        lambda h: tuple(sorted(h))),
    idle_histograms=st.lists(histograms, max_size=5).map(tuple),
    idle_regime=st.integers(0, 4),
)


@st.composite
def loaded_inputs(draw, queued: int | None = None) -> AutoscalerInputs:
    """The world at one decision, with each queued request's slack and service, and when each
    running or starting slot frees."""
    queued = draw(st.integers(0, 12)) if queued is None else queued
    running, starting = draw(st.integers(0, 4)), draw(st.integers(0, 2))
    slots = draw(st.lists(st.floats(0, 60), min_size=running + starting, max_size=running + starting))
    backlog = Backlog(tuple(draw(st.lists(st.floats(-5, 120), min_size=queued, max_size=queued))),
                      tuple(draw(st.lists(st.floats(0.5, 20), min_size=queued, max_size=queued))))
    return AutoscalerInputs(
        now=1000.0, queued=queued, in_flight=draw(st.integers(0, running * 4)), running_replicas=running,
        starting_replicas=starting, service_time_s=draw(st.none() | st.floats(0.5, 30)),
        cold_start_s=draw(st.none() | st.floats(0, 60)), backlog=backlog, slot_free_in_s=tuple(slots),
        recent_arrivals=draw(st.none() | st.integers(0, 60)))


def _with_one_more(inputs: AutoscalerInputs, slack: float, service: float) -> AutoscalerInputs:
    """The same world with one more request queued behind the others."""
    backlog = Backlog(inputs.backlog.slack_s + (slack,), inputs.backlog.service_s + (service,))
    return AutoscalerInputs(inputs.now, inputs.queued + 1, inputs.in_flight, inputs.running_replicas,
                            inputs.starting_replicas, inputs.service_time_s, inputs.cold_start_s, backlog,
                            inputs.slot_free_in_s, inputs.recent_arrivals)


@settings(max_examples=200, deadline=None)
@given(loaded_inputs(), states, configs)
def test_bounded_with_every_rule_on(i: AutoscalerInputs, s: AutoscalerState, c: AutoscalerConfig) -> None:
    decision = decide(i, s, c)
    assert c.min_replicas <= decision.desired <= c.max_replicas
    assert decision.review_at is None or decision.review_at >= i.now


@settings(max_examples=200, deadline=None)
@given(loaded_inputs(), states, configs, st.floats(-5, 120), st.floats(0.5, 20))
def test_one_more_queued_request_never_lowers_the_target(
        i: AutoscalerInputs, s: AutoscalerState, c: AutoscalerConfig, slack: float, service: float) -> None:
    assert decide(_with_one_more(i, slack, service), s, c).desired >= decide(i, s, c).desired


@settings(max_examples=200, deadline=None)
@given(loaded_inputs(), states, configs)
def test_the_deadline_rule_starts_only_replicas_that_save_a_request(
        i: AutoscalerInputs, s: AutoscalerState, c: AutoscalerConfig) -> None:
    decision = decide(i, s, c)
    if decision.kind is not DecisionKind.DEADLINE:
        return
    assert c.deadline_aware and i.queued > 0
    provisioned = i.running_replicas + i.starting_replicas
    extra = decision.desired - provisioned
    cold = c.default_cold_start_s if i.cold_start_s is None else i.cold_start_s
    new_slots = [cold] * c.capacity_per_replica
    with_all = misses(i.backlog, list(i.slot_free_in_s) + new_slots * extra)
    with_one_fewer = misses(i.backlog, list(i.slot_free_in_s) + new_slots * (extra - 1))
    assert with_all < with_one_fewer  # the last replica started saves at least one request


def _later(inputs: AutoscalerInputs, counts_down: tuple[bool, ...], dt: float) -> AutoscalerInputs:
    """The same world ``dt`` seconds on with nothing happening: every slack ``dt`` less, the slots
    that count down ``dt`` nearer (not below zero), the others as they were."""
    backlog = Backlog(tuple(slack - dt for slack in inputs.backlog.slack_s), inputs.backlog.service_s)
    slots = tuple(max(0.0, t - dt) if falls else t for t, falls in zip(inputs.slot_free_in_s, counts_down))
    return dataclasses.replace(inputs, now=inputs.now + dt, backlog=backlog, slot_free_in_s=slots,
                               slot_counts_down=tuple(falls and t > 0 for t, falls in zip(slots, counts_down)))


@settings(max_examples=400, deadline=None)
@given(loaded_inputs(), states, configs, st.data(), st.floats(0, 0.999))
def test_the_decision_holds_until_its_review(i: AutoscalerInputs, s: AutoscalerState, c: AutoscalerConfig,
                                            data: st.DataObject, share: float) -> None:
    """With nothing happening, a decision that keeps the fleet as it is (the target it has) is the
    same at every time before its ``review_at``: the simulator calls the decider only then (after a
    change of target or of the fleet it calls it again at once). Slack shrinks, busy and starting
    slots count down."""
    counts_down = tuple(t > 0 and data.draw(st.booleans()) for t in i.slot_free_in_s)
    i = dataclasses.replace(i, slot_counts_down=counts_down)
    s = dataclasses.replace(s, target=i.running_replicas + i.starting_replicas)
    decision = decide(i, s, c)
    assume(decision.desired == s.target)
    dt = share * ((decision.review_at if decision.review_at is not None else i.now + 3600) - i.now)
    if decision.review_at is not None and i.now + dt >= decision.review_at:
        dt = 0.0  # a review a float's width away: no time before it but now
    assert decide(_later(i, counts_down, dt), decision.state, c).desired == decision.desired


@settings(max_examples=200, deadline=None)
@given(loaded_inputs(), states, configs)
def test_without_the_deadline_rule_the_backlog_changes_nothing(
        i: AutoscalerInputs, s: AutoscalerState, c: AutoscalerConfig) -> None:
    off = dataclasses.replace(c, deadline_aware=False)
    counts_only = dataclasses.replace(i, backlog=None, slot_free_in_s=None)
    assert decide(i, s, off).desired == decide(counts_only, s, off).desired


@settings(max_examples=300, deadline=None)
@given(st.lists(histograms, max_size=5).map(tuple), st.none() | st.integers(0, 60), configs, st.floats(0, 1500))
def test_zero_only_after_the_planned_keep_alive(learned, recent, c: AutoscalerConfig, later: float) -> None:
    """One replica running, the last request just ended: the first idle decision plans the
    keep-alive (learned per regime, cost-based with a penalty); a later one goes to zero only
    once the plan's keep-alive has passed."""
    state = AutoscalerState(target=1, idle_histograms=learned)
    idle = AutoscalerInputs(now=1000.0, queued=0, in_flight=0, running_replicas=1, starting_replicas=0,
                            recent_arrivals=recent)
    first = decide(idle, state, c)
    keep_alive, prewarm_after, source = first.state.idle_plan
    assert keep_alive <= max(c.keep_alive_max_s, c.scale_to_zero_after_s)
    if c.keep_alive == "histogram" and c.cold_start_penalty_s is not None and source != "fixed":
        assert source == "cost"
    then = decide(AutoscalerInputs(1000.0 + later, 0, 0, first.desired, 0, recent_arrivals=recent), first.state, c)
    for decision, idle_for in ((first, 0.0), (then, later)):
        if decision.desired == 0:  # past the keep-alive, or stopped until the pre-warm is due
            assert c.min_replicas == 0
            prewarm_due = None if prewarm_after is None else prewarm_after - c.default_cold_start_s
            assert idle_for >= keep_alive or (prewarm_due is not None and idle_for < prewarm_due)


@settings(max_examples=300, deadline=None)
@given(histograms, st.floats(0, 60), st.floats(0, 1000), st.floats(0, 14400))
def test_the_cost_based_keep_alive_is_the_cheapest_edge(histogram, cold: float, penalty: float, max_s: float) -> None:
    """Against the cost of every candidate keep-alive computed from scratch."""
    def cost(k: float) -> float:
        total = 0.0
        for count, gap, edge in zip(histogram, _BIN_MIDDLES_S, (*BIN_EDGES_S, math.inf)):
            total += count * (gap if edge <= k else k + cold + penalty)
        return total

    chosen = cost_optimal_keep_alive(histogram, cold, penalty, max_s)
    candidates = [0.0] + [k for k in BIN_EDGES_S if k <= max_s]
    assert chosen in candidates
    assert cost(chosen) <= min(cost(k) for k in candidates) * (1 + 1e-9) + 1e-9
