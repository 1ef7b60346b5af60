"""Adaptive batching: each pipeline call takes the largest batch that its latency model says will
meet every member's deadline — the "dynamic concurrency" setting.

Diffusion batches are not free: on an A10 a batch of 4 takes ~3.4× one image, and a batch that runs
past the tightest deadline in it wastes every image of the request that misses. So per call, from
the jobs waiting (same size and steps, earliest deadline first), the replica takes the longest
prefix whose *predicted* call time ends before the earliest deadline in it, within the memory cap
and ``max_batch_size``; the rest wait for the next call. The head of the queue always runs (alone
if need be: whether it can finish at all is the shedding rule's business).

The prediction is the replica's :class:`~scheduler.call_time.CallTimeModel` (the same one shedding
uses), refitted from its own calls; here it may extrapolate to batches larger than any seen, since a
linear price on a bigger batch is what keeps it from being taken. Until the model has ``min_calls``
calls, Clipper's fallback: AIMD on the batch size — one more after a call whose members all met
their deadlines, ×0.9 after a miss.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from scheduler.call_time import CallTimeModel


@dataclass(frozen=True)
class Waiting:
    """One job waiting for a call: its deadline (None: none) and its images."""

    deadline: float | None
    images: int = 1


@dataclass(frozen=True)
class AdaptiveConfig:
    max_batch_size: int = 8  # never more requests in one call (and Ray's max_ongoing_requests ≥ this)
    min_calls: int = 4  # calls before the model is trusted; AIMD until then
    aimd_decrease: float = 0.9  # multiplicative decrease after a call with a miss
    margin: float = 1.1  # predicted time × this must end before the earliest deadline
    window: int = 64  # calls the model is fitted on

    def __post_init__(self) -> None:
        if self.max_batch_size < 1 or self.min_calls < 1 or not 0 < self.aimd_decrease < 1 or self.margin < 1:
            raise ValueError("need max_batch_size >= 1, min_calls >= 1, 0 < aimd_decrease < 1, margin >= 1")


@dataclass
class AdaptiveBatcher:
    """A replica's batch-size choice: its call-time model when trusted, AIMD before."""

    config: AdaptiveConfig = field(default_factory=AdaptiveConfig)
    model: CallTimeModel = field(default_factory=CallTimeModel)  # shared with the shedding rule
    limit: float = 1.0  # AIMD's batch size (requests)

    @property
    def model_ready(self) -> bool:
        return len(self.model) >= self.config.min_calls

    def predict(self, images: int, pixels: int, steps: int) -> float | None:
        """Seconds for a call of ``images`` images of ``pixels`` each (None: no trusted model)."""
        if not self.model_ready:
            return None
        return self.model.predict(images * pixels, steps, extrapolate=True)

    def choose(self, waiting: Sequence[Waiting], now: float, pixels: int, steps: int,
               max_images: int | None = None) -> int:
        """How many of ``waiting`` (earliest deadline first) the next call takes: at least 1."""
        cap = min(len(waiting), self.config.max_batch_size)
        if cap == 0:
            return 0
        if not self.model_ready:
            cap = min(cap, max(1, math.floor(self.limit)))
        best, images, earliest = 1, 0, math.inf
        for k, job in enumerate(waiting[:cap], start=1):
            images += job.images
            if max_images is not None and images > max_images and k > 1:
                break
            if job.deadline is not None:
                earliest = min(earliest, job.deadline)
            predicted = self.predict(images, pixels, steps)
            if predicted is not None and now + self.config.margin * predicted > earliest and k > 1:
                break  # this one would make the call miss someone's deadline: it waits
            best = k
        return best

    def hopeless(self, job: Waiting, now: float, pixels: int, steps: int) -> float | None:
        """The predicted call time if ``job`` cannot meet its deadline even alone (else None):
        running it would only take a call from requests that can still make theirs. Never on an
        extrapolation: a wrong "too slow" refuses work that would have finished."""
        if not self.model_ready or job.deadline is None:
            return None
        predicted = self.model.predict(job.images * pixels, steps)
        if predicted is None or now + self.config.margin * predicted <= job.deadline:
            return None
        return predicted

    def after_call(self, all_in_time: bool) -> None:
        """A call ended: move AIMD's limit (the model learns from the call elsewhere, once)."""
        if all_in_time:
            self.limit = min(self.config.max_batch_size, self.limit + 1)
        else:
            self.limit = max(1.0, self.limit * self.config.aimd_decrease)

    def effective_capacity(self, pixels: int, steps: int, budget_s: float) -> int:
        """Requests per call this replica would take now for work due within ``budget_s``: what
        the autoscaler should count a replica as (instead of the static maximum)."""
        if not self.model_ready:
            return max(1, math.floor(self.limit))
        k = 1
        for n in range(2, self.config.max_batch_size + 1):
            predicted = self.predict(n, pixels, steps)
            if predicted is None or self.config.margin * predicted > budget_s:
                break
            k = n
        return k
