"""Deadline sources, admission, call-time estimation and Retry-After: tables of inputs → outputs."""

from __future__ import annotations

import pytest

from scheduler.admission import Admission, admit
from scheduler.call_time import CallTimeModel
from scheduler.deadlines import (
    DeadlinePolicy,
    TimeoutError422,
    absolute_deadline,
    resolve_timeout,
)
from scheduler.drain import DrainRate, retry_after_s

POLICY = DeadlinePolicy(default_timeout_s=60, max_timeout_s=300, proxy_guard_s=0.5)


@pytest.mark.parametrize(
    ("body", "header", "expected"),
    [
        (None, None, (60, "default")),
        (5.0, None, (5.0, "timeout_s")),
        (None, "7.5", (7.5, "X-Request-Timeout-Seconds")),
        (5.0, "7.5", (5.0, "timeout_s")),  # the body wins
        (300.0, None, (300.0, "timeout_s")),
    ],
)
def test_timeout_sources(body, header, expected) -> None:
    assert resolve_timeout(body, header, POLICY) == expected


@pytest.mark.parametrize(
    ("body", "header", "param"),
    [
        (301.0, None, "timeout_s"),
        (0.0, None, "timeout_s"),
        (-1.0, None, "timeout_s"),
        (float("nan"), None, "timeout_s"),
        (None, "999", "X-Request-Timeout-Seconds"),
        (None, "soon", "X-Request-Timeout-Seconds"),
    ],
)
def test_bad_timeouts_name_their_source(body, header, param) -> None:
    with pytest.raises(TimeoutError422) as error:
        resolve_timeout(body, header, POLICY)
    assert error.value.param == param


def test_header_deadlines_end_early_to_beat_the_proxy() -> None:
    assert absolute_deadline(100.0, 10.0, "timeout_s", POLICY) == 110.0
    assert absolute_deadline(100.0, 10.0, "X-Request-Timeout-Seconds", POLICY) == 109.5
    assert absolute_deadline(100.0, 0.2, "X-Request-Timeout-Seconds", POLICY) == 100.0


@pytest.mark.parametrize(
    ("now", "deadline", "estimate", "verdict"),
    [
        (100.0, None, 50.0, Admission.RUN),
        (100.0, 110.0, None, Admission.RUN),
        (100.0, 110.0, 9.9, Admission.RUN),
        (100.0, 110.0, 10.1, Admission.HOPELESS),
        (110.0, 110.0, None, Admission.EXPIRED),
        (111.0, 110.0, 0.1, Admission.EXPIRED),
    ],
)
def test_admission(now, deadline, estimate, verdict) -> None:
    assert admit(now, deadline, estimate) is verdict


def test_step_time_needs_samples_then_scales_with_pixels() -> None:
    est = CallTimeModel(min_samples=2)
    est.observe(4096, 10, 1.0)
    assert est.predict(4096, 10) is None
    est.observe(4096, 20, 2.0)
    assert est.predict(4096, 10) == pytest.approx(1.0)
    assert est.predict(4096, 30) == pytest.approx(3.0)
    assert est.predict(8192, 10) is None  # one size seen: how cost grows with pixels is unknown


def test_step_time_fits_overhead_plus_per_pixel_cost() -> None:
    est = CallTimeModel()
    for pixels in (1000, 2000, 4000):
        for steps in (10, 20):
            est.observe(pixels, steps, steps * (0.01 + pixels * 1e-5))
    assert est.predict(3000, 10) == pytest.approx(10 * (0.01 + 0.03))


# A call: fixed 0.5 s (text encoder, VAE, PNG) + 0.02 s per step, at 64×64 (4096 pixels).
SMALL_CALLS = [(4096, 2, 0.54), (4096, 10, 0.70), (4096, 4, 0.58)]


@pytest.mark.parametrize(
    ("calls", "pixels", "steps", "expected"),
    [
        (SMALL_CALLS, 4096, 25, 1.0),  # fixed part counted once, not per step
        (SMALL_CALLS, 4096, 50, 1.5),
        (SMALL_CALLS, 512 * 512, 25, None),  # 64× the pixels ever seen: no guess, no shedding
        (SMALL_CALLS[:1], 4096, 25, None),  # one call: not enough to estimate
        ([(4096, 10, 0.70), (4096, 10, 0.71)], 4096, 25, None),  # one step count: parts inseparable
        # two sizes and two step counts: both parts and their growth with pixels are separated
        ([(4096, 10, 0.70), (4096, 20, 0.90), (16384, 10, 1.10), (16384, 20, 1.50)], 16384, 30, 1.90),
    ],
)
def test_call_time_separates_fixed_from_per_step_cost(calls, pixels, steps, expected) -> None:
    est = CallTimeModel()
    for call in calls:
        est.observe(*call)
    got = est.predict(pixels, steps)
    assert got == (None if expected is None else pytest.approx(expected, rel=1e-6))


def test_small_requests_do_not_get_a_512_request_shed() -> None:
    """After only 64×64 calls, a 512×512 request with a minute left runs: no estimate, no shedding."""
    est = CallTimeModel()
    for call in SMALL_CALLS:
        est.observe(*call)
    assert admit(100.0, 160.0, est.predict(512 * 512, 25)) is Admission.RUN


def test_drain_rate_counts_recent_completions() -> None:
    rate = DrainRate(window_s=10)
    assert rate.per_second(0.0) == 0.0
    for t in range(10):
        rate.completed(float(t))
    assert rate.per_second(10.0) == pytest.approx(1.0)
    assert rate.per_second(100.0) == 0.0


@pytest.mark.parametrize(
    ("queued", "rate", "service", "expected"),
    [(10, 2.0, None, 5), (3, 2.0, None, 2), (0, 2.0, None, 1), (4, 0.0, 2.5, 10), (4, 0.0, None, 4)],
)
def test_retry_after_from_drain_rate(queued, rate, service, expected) -> None:
    assert retry_after_s(queued, rate, service) == expected
