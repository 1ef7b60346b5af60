"""The scaling policy's newer rules: deadline-aware scale-up, learned keep-alive, the collector —
tables of inputs → expected outputs, and hypothesis properties."""

from __future__ import annotations

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
from scheduler.collector import (
    ArrivalWindow,
    CallReport,
    Collector,
    PendingJob,
    ServiceRate,
    StartTracker,
)
from scheduler.deadline_scaling import Backlog, misses, replicas_to_save_deadlines, steady_for
from scheduler.keepalive import (
    BIN_EDGES_S,
    cost_optimal_keep_alive,
    idle_percentile,
    keep_alive_plan,
    keep_one,
    record_idle,
    regime_of,
)

CONFIG = AutoscalerConfig(max_replicas=4, default_cold_start_s=20.0, default_service_time_s=5.0,
                          scale_to_zero_after_s=60, stable_window_s=10, scale_down_interval_s=5)


# ---- deadline rule -----------------------------------------------------------------------------

@pytest.mark.parametrize(
    "slack, service, free_at, room, expected",
    [
        # nobody waits: nothing to do
        ((), (), (0.0,), 3, (0, 0, 0)),
        # one busy replica frees at 10 s; two 10 s requests with 100 s of slack: both make it
        ((100.0, 100.0), (10.0, 10.0), (10.0,), 3, (0, 0, 0)),
        # same, but 25 s of slack each: the second would start at 20 s... in time; a third at 30 s misses;
        # a new replica ready at 20 s (the cold start) takes it at 20 s: saved
        ((25.0, 25.0, 25.0), (10.0, 10.0, 10.0), (10.0,), 3, (1, 1, 0)),
        # slack shorter than a cold start: a new replica cannot save anyone — start none
        ((5.0, 5.0), (10.0, 10.0), (10.0,), 3, (0, 2, 2)),
        # a backlog of five behind one slot: two would miss; one more replica (at 20 s) saves both
        ((15.0, 25.0, 30.0, 30.0, 30.0), (10.0,) * 5, (5.0,), 4, (1, 2, 0)),
        # ... and when the last three are tight, it takes three
        ((15.0, 25.0, 20.0, 20.0, 20.0), (10.0,) * 5, (5.0,), 4, (3, 3, 0)),
        # no room left under max_replicas: none
        ((25.0, 25.0, 25.0), (10.0, 10.0, 10.0), (10.0,), 0, (0, 1, 1)),
    ],
)
def test_deadline_rule_table(slack, service, free_at, room, expected) -> None:
    assert replicas_to_save_deadlines(Backlog(slack, service), free_at, 20.0, 1, room) == expected


@pytest.mark.parametrize(
    "slack, free_at, counting_down, expected, tight",
    [
        # nobody waits: the answer holds whatever the time
        ((), (0.0,), (False,), math.inf, False),
        # a busy slot without word of its end (fixed at 30 s), slack 35 s: in time for 5 s more,
        # then a replica ready in 20 s saves the request
        ((35.0,), (30.0,), (False,), 5.0, True),
        # the same slot counting down (its end is known): slack and slot fall together, until the
        # slot reaches zero in 30 s (a bound: the answer changes only when the slack does, 5 s later)
        ((35.0,), (30.0,), (True,), 30.0, False),
        # a replica starting, ready in 10 s, slack 35 s: the slot reaches zero in 10 s
        ((35.0,), (10.0,), (True,), 10.0, False),
        # slack 25 s behind a fixed 30 s slot: missed now; the new replica (20 s) saves it until the
        # slack falls to its 20 s, 5 s on
        ((25.0,), (30.0,), (False,), 5.0, True),
    ],
)
def test_deadline_rule_steady_for_table(slack, free_at, counting_down, expected, tight) -> None:
    backlog = Backlog(slack, (2.0,) * len(slack))
    steady = steady_for(backlog, free_at, counting_down, 20.0, 1, 1)
    assert steady == pytest.approx(expected)
    if steady < math.inf:  # the answer holds until then (and where the bound is tight, changes right after)
        def later(dt: float) -> tuple[int, int, int]:
            moved = Backlog(tuple(x - dt for x in slack), backlog.service_s)
            slots = [max(0.0, t - dt) if down else t for t, down in zip(free_at, counting_down)]
            return replicas_to_save_deadlines(moved, slots, 20.0, 1, 1)

        assert later(0.0) == later(steady - 0.01)
        assert (later(steady + 0.01) != later(0.0)) == tight


def test_misses_replays_fifo_over_free_slots() -> None:
    backlog = Backlog((0.0, 5.0, 5.0), (5.0, 5.0, 5.0))
    assert misses(backlog, [0.0]) == 1  # starts at 0, 5 (ok: slack 5), 10 (late)
    assert misses(backlog, [0.0, 0.0]) == 0
    assert misses(backlog, []) == 3


def test_decide_starts_replicas_for_deadlines_the_count_rule_would_not() -> None:
    # one replica busy for ~2.5 s more; mean call 5 s, so in a 20 s cold start it drains 4 requests
    # and the count rule starts nothing for 3 queued. But these 3 are heavy (20 s each) with 30 s to
    # start: the third would start at 42.5 s. A replica ready at 20 s saves it.
    inputs = AutoscalerInputs(now=100.0, queued=3, in_flight=1, running_replicas=1, starting_replicas=0,
                              service_time_s=5.0, cold_start_s=20.0,
                              backlog=Backlog((30.0, 30.0, 30.0), (20.0, 20.0, 20.0)), slot_free_in_s=(2.5,))
    decision = decide(inputs, AutoscalerState(target=1), CONFIG)
    assert decision.desired == 2 and decision.kind == "deadline", decision.reason
    no_deadlines = AutoscalerConfig(**{**CONFIG.__dict__, "deadline_aware": False})
    assert decide(inputs, AutoscalerState(target=1), no_deadlines).desired == 1


# ---- keep-alive ----------------------------------------------------------------------------------

def _histogram(idles: list[float]) -> tuple[int, ...]:
    histogram: tuple[int, ...] = ()
    for idle in idles:
        histogram = record_idle(histogram, idle)
    return histogram


def test_histogram_bins_and_percentiles() -> None:
    histogram = _histogram([0.5] * 90 + [1000.0] * 10)
    assert len(histogram) == len(BIN_EDGES_S) + 1 and sum(histogram) == 100
    assert idle_percentile(histogram, 0.5) == 1.0  # the first bin's upper edge
    assert 1000.0 <= idle_percentile(histogram, 0.99) < 1300.0
    assert idle_percentile(_histogram([99999.0]), 0.5) == math.inf  # beyond the last edge


@pytest.mark.parametrize(
    "idles, penalty, low, high",
    [
        # every gap is 100 s: with no penalty a 20 s cold start is cheaper than 100 s warm → K = 0
        ([100.0] * 50, 0.0, 0.0, 0.0),
        # ... but avoiding a cold start worth 500 s: keep it through the gap
        ([100.0] * 50, 500.0, 100.0, 130.0),
        # short gaps (5 s) are always worth bridging
        ([5.0] * 50, 0.0, 5.0, 7.0),
    ],
)
def test_cost_optimal_keep_alive_table(idles, penalty, low, high) -> None:
    assert low <= cost_optimal_keep_alive(_histogram(idles), 20.0, penalty, 3600.0) <= high


def test_plan_falls_back_to_fixed_until_enough_samples_and_prewarms_long_gaps() -> None:
    common = dict(mode="histogram", fixed_s=300.0, keep_percentile=0.99, prewarm_percentile=0.05,
                  min_samples=20, max_s=3600.0, cold_start_s=20.0)
    assert keep_alive_plan(_histogram([100.0] * 5), **common).source == "fixed"
    plan = keep_alive_plan(_histogram([600.0] * 30), **common)  # gaps always ~600 s
    assert plan.source == "histogram" and plan.prewarm_after_s is not None and plan.prewarm_after_s > 20.0
    assert not keep_one(0.0, plan, 20.0)  # stop at once after the work...
    assert keep_one(plan.prewarm_after_s - 10.0, plan, 20.0)  # ...pre-warm a cold start before the gap ends
    assert not keep_one(plan.keep_alive_s + 1, plan, 20.0)
    assert keep_alive_plan(_histogram([100.0] * 5), **{**common, "mode": "fixed"}).keep_alive_s == 300.0


def test_regimes() -> None:
    assert [regime_of(n) for n in (None, 1, 2, 3, 4, 9, 10, 29, 30, 500)] == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]


def test_idle_periods_are_learned_per_regime_and_state_survives_zero() -> None:
    config = AutoscalerConfig(max_replicas=4, keep_alive="histogram", keep_alive_min_samples=3,
                              cold_start_penalty_s=0.0, scale_to_zero_after_s=300.0, default_cold_start_s=20.0)
    state = AutoscalerState()
    t = 0.0
    for _ in range(4):  # four busy/idle cycles with 100 s gaps after quiet periods (regime 0)
        busy = AutoscalerInputs(t, queued=1, in_flight=0, running_replicas=0, starting_replicas=0, recent_arrivals=1)
        state = decide(busy, state, config).state
        idle = AutoscalerInputs(t + 1, 0, 0, 1, 0, recent_arrivals=1)
        state = decide(idle, state, config).state
        t += 101.0
    assert sum(state.idle_histograms[0]) == 3
    # learned: a 20 s cold start beats 100 s of idling → the next idle period scales to zero at once
    decision = decide(AutoscalerInputs(t + 2, 0, 0, 1, 0, recent_arrivals=1), state, config)
    assert decision.desired == 0 and "(cost)" in decision.reason
    # ... and a burst arriving at zero after a long idle time is sized at once, not from stale state
    burst = decide(AutoscalerInputs(t + 5000, queued=6, in_flight=0, running_replicas=0, starting_replicas=0),
                   decision.state, config)
    assert burst.desired == 4 and burst.kind == "burst"


# ---- collector ----------------------------------------------------------------------------------

def test_collector_infers_queued_requests_and_their_slack() -> None:
    rate = ServiceRate()
    rate.observe(seconds=10.0, images=2, steps=50)  # 0.1 s per image-step
    assert rate.estimate(images=1, steps=30) == pytest.approx(3.0)
    assert rate.estimate(images=1, steps=30, pixels=256 * 256) == pytest.approx(0.75)
    collector = Collector()
    collector.replied(CallReport(seconds=10.0, images=2, steps=50, pixels=512 * 512, cold_start_s=20.0))
    for key in "abc":
        collector.accepted(key, PendingJob(accepted_at=0.0, deadline=100.0, images=1, steps=30))
    config = AutoscalerConfig(default_service_time_s=1.0, default_cold_start_s=25.0, latency_objective_s=30.0)
    inputs = collector.inputs(now=10.0, running=1, starting=1, config=config)
    assert (inputs.queued, inputs.in_flight, inputs.recent_arrivals) == (2, 1, 3)
    assert inputs.backlog is not None and inputs.backlog.slack_s == pytest.approx((17.0, 17.0))  # 30 − 10 − 3
    assert inputs.slot_free_in_s == pytest.approx((5.0, 20.0))  # half a call; a replica asked for just now
    assert inputs.slot_counts_down == (False, True)  # a call's expected residual stays; a start counts down
    collector.started("a", at=8.0, tier="none")  # word of its call: it ends at 8 + 3 s
    inputs = collector.inputs(now=10.0, running=1, starting=1, config=config)
    assert inputs.slot_free_in_s == pytest.approx((1.0, 20.0)) and inputs.slot_counts_down == (True, True)
    collector.answered("a")
    assert collector.inputs(now=10.0, running=1, starting=1, config=config).queued == 1
    starts = StartTracker()
    starts.update(10.0, 1)
    starts.update(15.0, 1)
    assert starts.ready_in(15.0, 20.0) == [pytest.approx(15.0)]
    window = ArrivalWindow(600.0)
    for at in (0.0, 150.0, 700.0):
        window.arrived(at)
    assert window.count(700.0) == 2


# ---- properties ----------------------------------------------------------------------------------

backlogs = st.lists(st.tuples(st.floats(-10, 200), st.floats(0.5, 30)), max_size=20)


@settings(max_examples=300, deadline=None)
@given(backlogs, st.integers(0, 4), st.integers(0, 3), st.floats(0, 60), st.integers(1, 8))
def test_deadline_rule_properties(queued, running, starting, cold, max_replicas) -> None:
    backlog = Backlog(tuple(s for s, _ in queued), tuple(d for _, d in queued))
    free = (2.0,) * running + (cold / 2,) * starting
    room = max(0, max_replicas - running - starting)
    extra, before, after = replicas_to_save_deadlines(backlog, free, cold, 1, room)
    assert 0 <= extra <= room
    if extra:
        assert after < before  # only started when it saves someone
        # never for work gone before it is ready: someone with slack ≥ the cold start is saved
        assert any(s >= cold - 1e-9 for s in backlog.slack_s)
    inputs = AutoscalerInputs(0.0, len(queued), running, running, starting, 5.0, cold, backlog, free)
    config = AutoscalerConfig(max_replicas=max_replicas, default_cold_start_s=cold or 1.0)
    desired = decide(inputs, AutoscalerState(target=running + starting), config).desired
    assert min(running, max_replicas) <= desired <= max_replicas
