"""Just-in-time starts (``AutoscalerConfig.just_in_time_margin_s``): a replica the queue needs starts
only when its first request's slack is down to a cold start plus the margin, and one the queue can
do without does not start — tables of inputs → expected outputs, and the simulator's counts."""

from __future__ import annotations

import math

import pytest

from scheduler.autoscaling import AutoscalerConfig, AutoscalerInputs, AutoscalerState, decide
from scheduler.deadline_scaling import Backlog, misses, starts_that_can_wait
from scheduler.simulation.fleet import simulate
from scheduler.simulation.policies import SdserveLoop
from scheduler.simulation.workload import FleetSpec, SimRequest

COLD = 10.0


@pytest.mark.parametrize(("slack", "service", "free_at", "new", "margin", "expected"), [
    # an idle fleet, one request with 25 s to its latest start: its replica can wait until 15 s
    # before that (a cold start plus the margin), 10 s from now
    ((25.0,), (2.0,), (), 1, 5.0, (1, 10.0)),
    ((25.0,), (2.0,), (), 1, 0.0, (1, 15.0)),
    # 12 s of slack: a start 15 s away is too late, so it starts now
    ((12.0,), (2.0,), (), 1, 5.0, (0, math.inf)),
    # a request that misses even with a replica now: nothing waits (the estimates are off somewhere)
    ((5.0,), (2.0,), (), 1, 5.0, (0, math.inf)),
    # two requests, two starts asked for: both can wait until the first one's slack is down to 15 s
    ((25.0, 27.0), (2.0, 2.0), (), 2, 5.0, (2, 10.0)),
    # later: one replica serves both in time (the second at 12 s, slack 17 s); the other is not needed
    ((15.0, 17.0), (2.0, 2.0), (), 2, 5.0, (1, math.inf)),
    # a running slot free in 3 s serves the request; a start asked for by the count rule waits for good
    ((8.0,), (2.0,), (3.0,), 1, 5.0, (1, math.inf)),
    # nothing asked for, nothing queued
    ((25.0,), (2.0,), (), 0, 5.0, (0, math.inf)),
    ((), (), (), 1, 5.0, (0, math.inf)),
])
def test_starts_that_can_wait_table(slack, service, free_at, new, margin, expected) -> None:
    assert starts_that_can_wait(Backlog(slack, service), free_at, COLD, margin, 1, new) == expected


def test_a_waiting_start_never_costs_a_request_its_slack_if_nothing_else_happens() -> None:
    """At the review time the answer changes, and the replica then started still serves in time."""
    backlog = Backlog((25.0, 27.0), (2.0, 2.0))
    waits, for_s = starts_that_can_wait(backlog, (), COLD, 5.0, 1, 2)
    later = Backlog(tuple(s - for_s for s in backlog.slack_s), backlog.service_s)
    assert starts_that_can_wait(later, (), COLD, 5.0, 1, 2) == (1, math.inf)  # one starts now, one never
    assert misses(later, [COLD]) == 0


CONFIG = AutoscalerConfig(min_replicas=0, max_replicas=4, default_cold_start_s=COLD, latency_objective_s=30.0,
                          scale_to_zero_after_s=0.0, stable_window_s=0.0, just_in_time_margin_s=5.0)


def _idle_fleet_with(slack: tuple[float, ...]) -> AutoscalerInputs:
    return AutoscalerInputs(now=100.0, queued=len(slack), in_flight=0, running_replicas=0, starting_replicas=0,
                            service_time_s=2.0, cold_start_s=COLD, backlog=Backlog(slack, (2.0,) * len(slack)),
                            slot_free_in_s=(), slot_counts_down=())


def test_decide_puts_a_start_off_and_asks_again_when_it_is_due() -> None:
    decision = decide(_idle_fleet_with((25.0,)), AutoscalerState(), CONFIG)
    assert (decision.desired, decision.kind) == (0, "just in time"), decision.reason
    assert decision.review_at == pytest.approx(110.0)
    off = AutoscalerConfig(**{**CONFIG.__dict__, "just_in_time_margin_s": None})
    assert decide(_idle_fleet_with((25.0,)), AutoscalerState(), off).desired == 1  # the burst rule: now
    assert decide(_idle_fleet_with((12.0,)), AutoscalerState(), CONFIG).desired == 1  # no slack to wait


def test_the_margin_must_not_be_negative() -> None:
    with pytest.raises(ValueError, match="just_in_time_margin_s"):
        AutoscalerConfig(just_in_time_margin_s=-1.0)


def _run(margin: float | None, arrivals: list[float]):
    requests = [SimRequest(arrival_s=t, n=1, steps=30, pixels=512 * 512, timeout_s=120.0) for t in arrivals]
    spec = FleetSpec(max_ongoing_requests=1, cold_start_s=COLD, gpu_slots=4, dispatch=True, due_within_s=30.0)
    config = AutoscalerConfig(**{**CONFIG.__dict__, "just_in_time_margin_s": margin})
    return simulate(requests, spec, lambda images, pixels, steps: 2.0, SdserveLoop("jit", config))


def test_requests_arriving_while_a_start_waits_share_it_in_the_simulator() -> None:
    """Three requests 3 s apart at a fleet at zero: the burst rule starts a replica for each; just in
    time starts one, which answers all three within 30 s."""
    arrivals = [0.0, 3.0, 6.0]
    burst, just_in_time = _run(None, arrivals), _run(5.0, arrivals)
    assert len(burst.replicas) == 3
    assert len(just_in_time.replicas) == 1
    assert all(r.latency_s <= 30.0 for r in just_in_time.records)
    assert just_in_time.replica_seconds() < burst.replica_seconds()
