"""The dispatcher's queue: fair across tenants (weighted), earliest deadline first within one."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scheduler.fair_queue import FairQueue, QueuedJob


def _job(tenant: str, k: int, deadline: float = 100.0) -> QueuedJob:
    return QueuedJob(f"{tenant}{k}", tenant, deadline)


def _drain(queue: FairQueue) -> list[str]:
    out = []
    while (job := queue.pop()) is not None:
        out.append(job.job_id)
    return out


def test_a_flood_does_not_delay_another_tenant_behind_it() -> None:
    queue = FairQueue()
    for k in range(48):
        queue.push(_job("a", k))
    queue.push(_job("b", 0))
    assert queue.position("b0") == 1  # after the flood's first request, not its 48th
    assert _drain(queue)[:3] == ["a0", "b0", "a1"]


def test_a_tight_deadline_overtakes_a_loose_one_of_the_same_tenant() -> None:
    queue = FairQueue()
    queue.push(_job("a", 0, deadline=600.0))
    queue.push(_job("a", 1, deadline=5.0))
    assert _drain(queue) == ["a1", "a0"]


@pytest.mark.parametrize(("weights", "expected"), [
    ({}, "abababab"),
    ({"a": 2.0}, "ababaabb"),  # a twice as often while both wait (ties: the earlier arrival); then b
    ({"b": 3.0}, "abbbabaa"),
])
def test_weights_share_dispatches(weights: dict[str, float], expected: str) -> None:
    queue = FairQueue(weights)
    for k in range(4):
        queue.push(_job("a", k))
        queue.push(_job("b", k))
    assert "".join(j[0] for j in _drain(queue)) == expected


def test_an_idle_tenant_banks_no_credit() -> None:
    queue = FairQueue()
    for k in range(50):
        queue.push(_job("a", k))
        assert queue.pop().job_id == f"a{k}"  # a alone for a long time
    for k in range(50, 60):
        queue.push(_job("a", k))
    for k in range(5):
        queue.push(_job("b", k))
    assert "".join(j[0] for j in _drain(queue))[:10] == "bababababa"  # b joins at the current virtual time


def test_removed_requests_never_come_out_and_accept_picks_a_shape() -> None:
    queue = FairQueue()
    queue.push(QueuedJob("x", "a", 10.0, shape=(512, 25)))
    queue.push(QueuedJob("y", "b", 20.0, shape=(256, 25)))
    queue.push(QueuedJob("z", "c", 30.0, shape=(512, 25)))
    assert queue.remove("x") and not queue.remove("x")
    assert "x" not in queue and len(queue) == 2
    assert queue.pop(accept=lambda j: j.shape == (512, 25)).job_id == "z"
    assert _drain(queue) == ["y"]
    with pytest.raises(ValueError):
        FairQueue({"a": 0.0})


jobs = st.lists(st.tuples(st.sampled_from("abcd"), st.integers(0, 5)), min_size=1, max_size=40)


@settings(max_examples=200, deadline=None)
@given(jobs, st.dictionaries(st.sampled_from("abcd"), st.sampled_from([0.5, 1.0, 2.0, 4.0])),
       st.lists(st.integers(0, 39), max_size=8), st.integers(0, 10))
def test_position_is_where_it_comes_out_and_nothing_is_lost(items, weights, removals, served_first) -> None:
    queue = FairQueue(weights)
    for k, (tenant, deadline) in enumerate(items):
        queue.push(QueuedJob(str(k), tenant, float(deadline)))
        if k == len(items) // 2:  # some dispatched while others arrive
            for _ in range(served_first):
                queue.pop()
    removed = {str(r) for r in removals if queue.remove(str(r))}
    waiting = {job.job_id for job in queue}
    positions = {job_id: queue.position(job_id) for job_id in waiting}
    order = _drain(queue)
    assert sorted(order) == sorted(waiting) and not removed & set(order)
    assert {job_id: order.index(job_id) for job_id in order} == positions


@settings(max_examples=100, deadline=None)
@given(st.sampled_from([0.5, 1.0, 2.0, 4.0]), st.sampled_from([0.5, 1.0, 2.0, 4.0]), st.integers(1, 60))
def test_backlogged_tenants_share_in_proportion_to_weight(wa: float, wb: float, prefix: int) -> None:
    queue = FairQueue({"a": wa, "b": wb})
    for k in range(100):
        queue.push(_job("a", k))
        queue.push(_job("b", k))
    served = [queue.pop().tenant for _ in range(prefix)]
    # start-time fair queuing's bound on the difference in normalised service
    assert abs(served.count("a") / wa - served.count("b") / wb) <= 1 / wa + 1 / wb + 1e-9


def test_take_finds_the_first_accepted_request_within_the_look_ahead_and_charges_its_tenant() -> None:
    queue = FairQueue()
    for k, model in enumerate(["B", "B", "A", "B", "A"]):
        queue.push(QueuedJob(f"j{k}", "t1", 100.0 + k, model=model))
    queue.push(QueuedJob("other", "t2", 50.0, model="B"))
    assert queue.take(lambda j: j.model == "A", look_ahead=2) is None  # j0 (t1) and other (t2) come first
    taken = queue.take(lambda j: j.model == "A", look_ahead=4)
    assert taken is not None and taken.job_id == "j2" and "j2" not in queue and len(queue) == 5
    # t1 was charged a dispatch: t2's request goes next, then t1's in deadline order
    assert [queue.pop().job_id for _ in range(5)] == ["other", "j0", "j1", "j3", "j4"]


# ---- urgency: a request near its due time goes first -----------------------------------------------

class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _urgent_queue(within: float | None) -> tuple[FairQueue, _Clock]:
    """Tenant a's three requests came at 0, tenant b's one at 8; each is due 30 s after it came."""
    clock = _Clock()
    queue = FairQueue(urgent_within_s=within, clock=clock)
    for k in range(3):
        queue.push(QueuedJob(f"a{k}", "a", 120.0, due=30.0))
    queue.push(QueuedJob("b0", "b", 128.0, due=38.0))
    return queue, clock


@pytest.mark.parametrize(("within", "now", "expected"), [
    (None, 12.0, ["a0", "b0", "a1", "a2"]),  # fair order: b's newcomer passes a's waiting requests
    (20.0, 5.0, ["a0", "b0", "a1", "a2"]),  # a's are 25 s from due: not yet urgent
    (20.0, 12.0, ["a0", "a1", "a2", "b0"]),  # 18 s from due: a's go first, earliest due first
    (5.0, 12.0, ["a0", "b0", "a1", "a2"]),
])
def test_urgent_requests_go_ahead_of_the_fair_order(within, now, expected) -> None:
    queue, clock = _urgent_queue(within)
    clock.now = now
    assert [job.job_id for job in queue.in_order()] == expected
    assert queue.peek().job_id == expected[0]
    assert _drain(queue) == expected


def test_without_a_due_time_the_deadline_counts_and_urgent_dispatches_are_charged() -> None:
    clock = _Clock()
    queue = FairQueue(urgent_within_s=10.0, clock=clock)
    queue.push(QueuedJob("a0", "a", 15.0))  # due: its deadline
    queue.push(QueuedJob("a1", "a", 100.0))
    queue.push(QueuedJob("b0", "b", 100.0))
    queue.push(QueuedJob("b1", "b", 100.0))
    clock.now = 6.0
    assert queue.pop().job_id == "a0"  # 9 s from its deadline
    # a0 was charged to tenant a: b goes next (uncharged, a1 would, having come first)
    assert _drain(queue) == ["b0", "a1", "b1"]


def test_turning_urgency_on_keeps_what_waits_and_a_requeued_request_comes_out_once() -> None:
    queue, clock = _urgent_queue(None)
    queue.urgent_within_s = 20.0
    clock.now = 12.0
    queue.remove("a1")
    queue.push(QueuedJob("a1", "a", 120.0, due=30.0))  # back in the queue (a retry)
    assert _drain(queue) == ["a0", "a2", "a1", "b0"]
    with pytest.raises(ValueError, match="urgent_within_s"):
        FairQueue(urgent_within_s=-1.0)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.sampled_from("abc"), st.floats(0, 60)), min_size=1, max_size=30),
       st.floats(0, 30), st.lists(st.floats(0, 5), min_size=30, max_size=30))
def test_with_urgency_every_request_comes_out_once_and_urgent_ones_by_due_time(items, within, steps) -> None:
    clock = _Clock()
    queue = FairQueue(urgent_within_s=within, clock=clock)
    for k, (tenant, due) in enumerate(items):
        queue.push(QueuedJob(f"{tenant}{k}", tenant, 200.0, due=due))
    out = []
    for step in steps:
        clock.now += step
        urgent = [job.due for job in queue if job.due <= clock.now + within]
        job = queue.pop()
        if job is None:
            break
        if urgent:
            assert job.due == min(urgent)  # the most urgent one, whatever its tenant
        out.append(job.job_id)
    out += _drain(queue)
    assert sorted(out) == sorted(f"{tenant}{k}" for k, (tenant, _) in enumerate(items))


def test_urgent_dispatches_of_one_tenant_do_not_push_a_newcomer_behind_the_others() -> None:
    clock = _Clock()
    queue = FairQueue(urgent_within_s=10.0, clock=clock)
    for k in range(5):
        queue.push(QueuedJob(f"b{k}", "b", 200.0))
    for k in range(5):
        queue.push(QueuedJob(f"a{k}", "a", 100.0))
    clock.now = 95.0
    assert [queue.pop().job_id for _ in range(5)] == ["a0", "a1", "a2", "a3", "a4"]  # all urgent
    queue.push(QueuedJob("c0", "c", 300.0))
    # c joins where the fair order is (b's first tag), not at a's tag after its urgent run
    assert _drain(queue) == ["b0", "c0", "b1", "b2", "b3", "b4"]
