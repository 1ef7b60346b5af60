"""The adaptive batch-size rule: tables of inputs → batch sizes, and properties."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scheduler.adaptive_batching import AdaptiveBatcher, AdaptiveConfig, Waiting
from scheduler.call_time import CallTimeModel

PIXELS, STEPS = 64 * 64, 10


def observe(batcher: AdaptiveBatcher, images: int, seconds: float, all_in_time: bool = True) -> None:
    """A call ended, as the replica's rules report it: the model learns it, AIMD moves."""
    batcher.model.observe(images * PIXELS, STEPS, seconds)
    batcher.after_call(all_in_time)


def trained(per_image_s: float = 0.5, fixed_s: float = 1.0, max_batch_size: int = 8) -> AdaptiveBatcher:
    """A batcher whose model has seen calls of t = fixed + per_image × images (exactly)."""
    batcher = AdaptiveBatcher(AdaptiveConfig(max_batch_size=max_batch_size, margin=1.0))
    for images in (1, 2, 4, 8, 3):
        observe(batcher, images, fixed_s + per_image_s * images)
    return batcher


def test_the_model_learns_a_linear_cost() -> None:
    model = CallTimeModel()
    assert model.predict(PIXELS, STEPS) is None
    model.observe(PIXELS, STEPS, 1.5)
    model.observe(PIXELS, STEPS, 1.5)
    assert model.predict(2 * PIXELS, STEPS) is None  # one batch size seen: growth unknown
    model.observe(4 * PIXELS, STEPS, 3.0)
    assert model.predict(2 * PIXELS, STEPS) == pytest.approx(2.0)
    assert model.predict(16 * PIXELS, STEPS) is None  # 4× the largest call seen: no guess ...
    assert model.predict(16 * PIXELS, STEPS, extrapolate=True) == pytest.approx(9.0)  # ... unless asked


NOW = 100.0


@pytest.mark.parametrize(
    ("deadlines", "max_images", "expected"),
    [
        ([None] * 10, None, 8),  # no deadlines: as many as allowed
        ([NOW + 60] * 5, None, 5),  # loose deadlines: everyone waiting
        ([NOW + 2.6] + [NOW + 60] * 7, None, 3),  # head has 2.6 s: 3 images (2.5 s) meet it, 4 (3.0 s) not
        ([NOW + 1.2] + [NOW + 60] * 7, None, 1),  # even 1 (1.5 s) misses: the head still runs, alone
        ([NOW + 60] * 8, 3, 3),  # memory: at most 3 images per call
        ([NOW + 60] * 8, 0, 1),  # the head always runs (its own fit was checked at admission)
    ],
)
def test_deadline_and_memory_bound_choice(deadlines: list, max_images: int | None, expected: int) -> None:
    batcher = trained()
    waiting = [Waiting(d) for d in deadlines]
    assert batcher.choose(waiting, NOW, PIXELS, STEPS, max_images) == expected


def test_multi_image_requests_count_their_images() -> None:
    batcher = trained()
    waiting = [Waiting(NOW + 3.1, images=2), Waiting(NOW + 60, images=2), Waiting(NOW + 60)]
    # 4 images take 3.0 s, within the head's 3.1 s: the second request joins; 5 images (3.5 s) not
    assert batcher.choose(waiting, NOW, PIXELS, STEPS) == 2


@pytest.mark.parametrize(
    ("outcomes", "limit"),
    [
        ([], 1),  # model cold: start at one
        ([True], 2), ([True, True], 3),  # additive increase while calls finish in time
        ([True, True, False], 2),  # ×0.9 on a miss: 3 → 2.7 → floor 2
        ([False], 1),  # never below one
    ],
)
def test_aimd_while_the_model_is_cold(outcomes: list[bool], limit: int) -> None:
    batcher = AdaptiveBatcher(AdaptiveConfig(min_calls=100))
    for ok in outcomes:
        observe(batcher, 1, 1.0, all_in_time=ok)
    assert batcher.choose([Waiting(None)] * 8, NOW, PIXELS, STEPS) == limit
    assert batcher.effective_capacity(PIXELS, STEPS, 10.0) == limit


def test_effective_capacity_follows_the_time_budget() -> None:
    batcher = trained()
    assert batcher.effective_capacity(PIXELS, STEPS, 60.0) == 8
    assert batcher.effective_capacity(PIXELS, STEPS, 2.6) == 3
    assert batcher.effective_capacity(PIXELS, STEPS, 0.1) == 1


@settings(deadline=None)
@given(st.integers(1, 20), st.floats(0, 30), st.floats(0, 30))
def test_choice_is_bounded_and_monotone_in_time_left(n: int, left: float, more: float) -> None:
    batcher = trained()
    tight = batcher.choose([Waiting(NOW + left)] * n, NOW, PIXELS, STEPS)
    loose = batcher.choose([Waiting(NOW + left + more)] * n, NOW, PIXELS, STEPS)
    assert 1 <= tight <= loose <= min(n, 8)


def test_a_request_that_cannot_make_it_even_alone_is_hopeless() -> None:
    batcher = trained()  # 1.5 s alone
    assert batcher.hopeless(Waiting(NOW + 1.0), NOW, PIXELS, STEPS) == pytest.approx(1.5)
    assert batcher.hopeless(Waiting(NOW + 2.0), NOW, PIXELS, STEPS) is None
    assert batcher.hopeless(Waiting(None), NOW, PIXELS, STEPS) is None
    cold = AdaptiveBatcher()
    assert cold.hopeless(Waiting(NOW + 0.001), NOW, PIXELS, STEPS) is None  # no model: no verdict
