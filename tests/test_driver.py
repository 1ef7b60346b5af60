"""The one driver of the decider (live loop and simulator alike): what it hands the decider, when it
reads the fleet, and what it does with knobs changed live."""

from __future__ import annotations

import pytest

from scheduler.autoscaling import AutoscalerConfig, AutoscalerState, DecisionKind
from scheduler.collector import CallReport, PendingJob
from scheduler.driver import ScalingDriver

CONFIG = AutoscalerConfig(max_replicas=8, default_cold_start_s=20.0, default_service_time_s=10.0,
                          scale_to_zero_after_s=60.0, deadline_aware=False)


def queued(driver: ScalingDriver, count: int, at: float = 0.0) -> None:
    for i in range(count):
        driver.collector.accepted(f"j{at}-{i}", PendingJob(accepted_at=at, deadline=at + 600, images=1, steps=25))


def test_the_first_step_takes_over_the_fleet_as_deployed() -> None:
    driver = ScalingDriver(CONFIG)
    driver.fleet_seen(0.0, running=2, starting=1)
    decision = driver.step(0.0)
    assert driver.target == 3  # idle, so one step down from what it found, not from nothing
    assert (decision.desired, decision.kind) == (2, DecisionKind.LOW_DEMAND)


def test_the_fleet_is_read_every_poll_and_again_after_a_change() -> None:
    driver = ScalingDriver(CONFIG, fleet_poll_s=0.5)
    assert driver.fleet_due(0.0)
    driver.fleet_seen(0.0, 1, 0)
    assert not driver.fleet_due(0.4) and driver.fleet_due(0.5)
    driver.applied(3)
    assert driver.fleet_due(0.1)  # asked for more: read Serve's view next
    driver.fleet_seen(0.1, 1, 0)
    driver.applied(3)  # the same target again changes nothing
    assert not driver.fleet_due(0.2)


def test_replicas_asked_for_count_as_starting_before_serve_shows_them() -> None:
    driver = ScalingDriver(CONFIG)
    driver.fleet_seen(0.0, 1, 0)
    queued(driver, 6)
    first = driver.step(0.0)
    assert first.kind == DecisionKind.BURST and first.desired > 1
    driver.applied(first.desired)
    driver.fleet_seen(0.1, 1, 0)  # Serve has not shown the new replicas yet
    driver.step(0.1)
    assert driver.last_inputs is not None and driver.last_inputs.starting_replicas == first.desired - 1


@pytest.mark.parametrize(("reported", "wanted"), [(None, 2), (4, 2), (1, 8)])
def test_the_batch_capacity_replicas_report_sizes_the_fleet(reported: int | None, wanted: int) -> None:
    """Eight queued at zero with batches of up to 4: two replicas — unless the replicas say they
    take only one request per call now (adaptive), then eight."""
    driver = ScalingDriver(AutoscalerConfig(max_replicas=8, capacity_per_replica=4, default_cold_start_s=1.0,
                                            deadline_aware=False))
    if reported is not None:
        driver.collector.replied(CallReport(seconds=10.0, images=1, steps=25, pixels=512 * 512, capacity=reported))
    driver.fleet_seen(0.0, 0, 0)
    queued(driver, 8)
    assert driver.step(0.0).desired == wanted


@pytest.mark.parametrize(("cap", "wanted"), [(None, 8), (0, 8), (3, 3), (20, 8)])
def test_the_gpu_cap_bounds_the_fleet_and_no_gpus_means_no_cap(cap: int | None, wanted: int) -> None:
    driver = ScalingDriver(CONFIG)
    driver.fleet_seen(0.0, 0, 0)
    queued(driver, 12)
    assert driver.step(0.0, max_replicas=cap).desired == wanted


def test_the_last_reported_cold_start_is_kept_across_zero() -> None:
    driver = ScalingDriver(CONFIG)
    driver.collector.replied(CallReport(seconds=1.0, images=1, steps=25, pixels=512 * 512, cold_start_s=3.0))
    driver.fleet_seen(0.0, 0, 0)
    driver.step(0.0)
    assert driver.last_inputs is not None and driver.last_inputs.cold_start_s == 3.0


def test_knobs_changed_live_choose_the_keep_alive_again() -> None:
    driver = ScalingDriver(AutoscalerConfig(scale_to_zero_after_s=300.0))
    driver.fleet_seen(0.0, 1, 0)
    assert driver.step(0.0).desired == 1  # idle: keep-alive 300 s chosen now
    assert driver.step(10.0).desired == 1
    driver.reconfigure(AutoscalerConfig(scale_to_zero_after_s=5.0), fleet_poll_s=0.5)
    decision = driver.step(11.0)  # idle 11 s > the new 5 s keep-alive
    assert (decision.desired, decision.kind) == (0, DecisionKind.TO_ZERO)


def test_checkpoint_loads_count_in_each_queued_requests_service() -> None:
    """Calls that paid loads: the queued requests' service includes the mean load per call, so
    the decider sees more work than the pipeline time alone (a mix that loads often needs more)."""
    from scheduler.collector import Collector

    def queued_service(load_s: float) -> tuple[float, ...]:
        collector = Collector()
        collector.replied(CallReport(seconds=2.0, images=1, steps=25, pixels=512 * 512, load_s=load_s))
        for k in range(3):
            collector.accepted(str(k), PendingJob(0.0, 100.0, 1, 25, 512 * 512))
        return collector.inputs(1.0, running=1, starting=0, config=AutoscalerConfig()).backlog.service_s

    assert queued_service(0.0) == (2.0, 2.0)  # one in flight, two queued
    assert queued_service(3.0) == (5.0, 5.0)


@pytest.mark.parametrize(("sent_tier", "queued_tier", "busy_frees_in", "queued_service"), [
    (None, None, (2.0 + 6.0) / 2, 2.0 + 6.0),  # no word from the dispatcher: half a call, the mean load
    ("disk", "none", 2.0 + 30.0 - 5.0, 2.0 + 1.0),  # sent at 0 to load from disk: 27 s more; queued: resident
    ("host", "disk", 0.0, 2.0 + 30.0),  # its host copy and call are over (ends at 5, the decision at 5)
    ("none", "host", 0.0, 2.0 + 3.0),
    ("disk", "", 2.0 + 30.0 - 5.0, 2.0 + 6.0),  # a tier not said: the mean over all calls
])
def test_each_requests_load_counts_by_where_its_checkpoint_comes_from(sent_tier, queued_tier, busy_frees_in,
                                                                     queued_service) -> None:
    """Load seconds per tier are learned from the replies (none 1 s, host 3 s, disk 30 s; the mean
    over all calls set to 6 s). A request the dispatcher sent to a replica holds its slot until its
    expected load and call end; a queued one counts its own tier's load."""
    from scheduler.collector import Collector

    collector = Collector()
    for tier, load in (("none", 1.0), ("host", 3.0), ("disk", 30.0)):
        collector.replied(CallReport(2.0, 1, 25, 512 * 512, load_s=load, load_tier=tier))
    collector.load.value = 6.0  # the mean over all calls, set outright for the table
    collector.accepted("a", PendingJob(0.0, 100.0, 1, 25, 512 * 512))
    collector.accepted("b", PendingJob(0.0, 100.0, 1, 25, 512 * 512))
    if sent_tier is not None:
        collector.started("a", 0.0, sent_tier)
        collector.expect({"b": queued_tier, "a": "disk"})  # "a" is on a replica: not queued any more
    inputs = collector.inputs(5.0, running=1, starting=0, config=AutoscalerConfig())
    assert inputs.slot_free_in_s == (pytest.approx(busy_frees_in),)
    assert inputs.backlog.service_s == (pytest.approx(queued_service),)
    collector.answered("a")
    assert "a" not in collector.sent and "a" not in collector.expected


def test_a_replica_busy_loading_from_disk_gets_a_second_started_for_the_request_behind_it() -> None:
    """One replica, its request loading a checkpoint from disk (30 s); one request queued behind it
    with a 30 s objective. Told of the load, the decider starts a replica for it; counting half an
    average call, it sees the queue drain in time and starts none."""
    from scheduler.autoscaling import decide
    from scheduler.collector import Collector

    def decision(told: bool) -> int:
        collector = Collector()
        for tier, load in (("none", 0.0), ("disk", 30.0), ("none", 0.0), ("none", 0.0)):
            collector.replied(CallReport(2.0, 1, 25, 512 * 512, load_s=load, load_tier=tier))
        collector.cold_start_s = 20.0
        collector.accepted("a", PendingJob(0.0, 600.0, 1, 25, 512 * 512))
        collector.accepted("b", PendingJob(1.0, 600.0, 1, 25, 512 * 512))
        if told:
            collector.started("a", 0.0, "disk")
            collector.expect({"b": "none"})
        config = AutoscalerConfig(latency_objective_s=30.0)
        return decide(collector.inputs(1.0, running=1, starting=0, config=config), AutoscalerState(target=1),
                      config).desired

    assert decision(told=True) == 2
    assert decision(told=False) == 1


@pytest.mark.parametrize(("adapters", "tier", "queued_service"), [
    (None, "host", 2.0 + 4.0),  # not counted: the tier's mean over its calls, with and without adapters
    (0, "host", 2.0 + 2.8),  # counted: the mean over calls from host memory that named none
    (2, "host", 2.0 + 2.8 + 2 * 4.4),  # ... or two
    (5, "host", 2.0 + 2.8 + 3 * 4.4),  # more than three share the mean of three
    (1, "none", 2.0 + 4.0),  # no call resident with one adapter measured yet: the tier's mean
    (2, "", 2.0 + 6.0),  # a tier not said: the mean over all calls, whatever the adapters
])
def test_a_requests_adapters_count_in_its_load_when_told(adapters, tier, queued_service) -> None:
    """Calls from host memory loaded 2.8 s with no adapter, 11.6 s with two, 16.0 s with three; a
    resident call loaded 4 s (the tier means set to 4 s, the mean over all calls to 6 s)."""
    from scheduler.collector import Collector

    collector = Collector()
    for load, count in ((2.8, 0), (2.8 + 2 * 4.4, 2), (2.8 + 3 * 4.4, 3)):
        collector.replied(CallReport(2.0, 1, 25, 512 * 512, load_s=load, load_tier="host", adapters=count))
    collector.replied(CallReport(2.0, 1, 25, 512 * 512, load_s=4.0, load_tier="none"))
    collector.tier_load["host"].value = collector.tier_load["none"].value = 4.0
    collector.load.value = 6.0
    collector.accepted("a", PendingJob(0.0, 100.0, 1, 25, 512 * 512, adapters))
    collector.expect({"a": tier})
    inputs = collector.inputs(0.0, running=0, starting=0, config=AutoscalerConfig())
    assert inputs.backlog.service_s == (pytest.approx(queued_service),)
