"""The dispatcher in the simulator: fair across tenants, deadline-ordered, no polling gaps — and
Ray's router, run the same way, shows each of the faults the dispatcher removes."""

from __future__ import annotations

import pytest

from scheduler.outcomes import Outcome
from scheduler.simulation.fleet import simulate
from scheduler.simulation.policies import FixedFleet
from scheduler.simulation.workload import FleetSpec, SimRequest


def constant(seconds: float):
    return lambda images, pixels, steps: seconds


def _run(requests: list[SimRequest], dispatch: bool, service: float, **spec):
    fleet = FleetSpec(initial_replicas=1, gpu_slots=1, max_queued_requests=-1, dispatch=dispatch,
                      shed_hopeless=False, **spec)
    return simulate(requests, fleet, constant(service), FixedFleet(1))


@pytest.mark.parametrize("dispatch", [True, False])
def test_a_flood_by_one_tenant_does_not_delay_another(dispatch: bool) -> None:
    """60 requests of tenant A at t=0, one of B at t=3: with the dispatcher B goes next after the
    request in service (within 2 service times); behind Ray's queue it waits for the flood."""
    flood = [SimRequest(0.0, timeout_s=600, tenant="A") for _ in range(60)]
    other = SimRequest(3.0, timeout_s=600, tenant="B")
    result = _run(flood + [other], dispatch, service=1.0)
    b = result.records[-1]
    assert b.outcome == Outcome.OK
    latency = b.done_s - b.arrival_s
    if dispatch:
        assert latency <= 2.0
    else:
        assert latency > 50.0


@pytest.mark.parametrize("dispatch", [True, False])
def test_a_tight_deadline_overtakes_a_loose_one_of_the_same_tenant(dispatch: bool) -> None:
    busy = SimRequest(0.0, timeout_s=600, tenant="A")
    loose = [SimRequest(0.1, timeout_s=600, tenant="A") for _ in range(3)]
    tight = SimRequest(0.2, timeout_s=2.5, tenant="A")
    result = _run([busy, *loose, tight], dispatch, service=1.0)
    assert result.records[-1].outcome == (Outcome.OK if dispatch else Outcome.DEADLINE)


@pytest.mark.parametrize("dispatch", [True, False])
def test_a_freed_slot_is_filled_at_once_only_by_the_dispatcher(dispatch: bool) -> None:
    """A closed queue of 0.3 s requests on one single-slot replica: the dispatcher keeps it busy
    (throughput = 1/service); Ray's router polls with backoff and leaves it idle between requests."""
    requests = [SimRequest(0.0, timeout_s=600, tenant=f"t{i % 4}") for i in range(40)]
    result = _run(requests, dispatch, service=0.3)
    makespan = max(r.done_s for r in result.records)
    throughput = len(requests) / makespan
    if dispatch:
        assert throughput == pytest.approx(1 / 0.3, rel=1e-6)
    else:
        assert throughput < 0.8 / 0.3


@pytest.mark.parametrize("dispatch", [True, False])
def test_the_dispatcher_hands_a_freed_batch_requests_that_batch_together(dispatch: bool) -> None:
    """A batch of 4 frees its slots: the dispatcher fills them with the next request in fair order
    and the next ones of its shape (one call of 4); Ray's router sends the oldest four, one of
    another size, so the replica splits them into two calls."""
    busy = [SimRequest(0.0, timeout_s=600, tenant="Z", pixels=32 * 32) for _ in range(4)]
    waiting = [SimRequest(0.1, timeout_s=600, tenant="A", pixels=64 * 64),
               SimRequest(0.2, timeout_s=600, tenant="B", pixels=128 * 128)] + [
        SimRequest(0.3, timeout_s=600, tenant="C", pixels=64 * 64) for _ in range(3)]
    result = _run(busy + waiting, dispatch, service=1.0, max_batch_size=4, max_ongoing_requests=4,
                  batch_wait_timeout_s=0.0, router_initial_backoff_s=0.0)
    calls = {r.index: r.call_images for r in result.records}
    assert calls[4] == (4 if dispatch else 3)
