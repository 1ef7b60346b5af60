"""Adaptive batching: each pipeline call takes the largest batch that its latency model says will
meet every member's deadline — the "dynamic concurrency" setting (issue #14).

Diffusion batches are not free: on an A10 a batch of 4 takes ~3.4× one image, and a batch that runs
past the tightest deadline in it wastes every image of the request that misses. So per call, from
the jobs waiting (same size and steps, earliest deadline first), the replica takes the longest
prefix whose *predicted* call time ends before the earliest deadline in it, within the memory cap
and ``max_batch_size``; the rest wait for the next call. The head of the queue always runs (alone
if need be: whether it can finish at all is the shedding rule's business).

The model is refitted online from the replica's own calls: ``t = a + b·steps + c·images·pixels·steps
+ d·images·pixels`` (a fixed cost, a per-step cost, and the parts that grow with the pixels in the
call, per step and once, e.g. the VAE) by least squares (Bentoml refits a linear cost model the same
way). Until it has ``min_calls`` calls, Clipper's fallback: AIMD on the batch size — one more after a
call whose members all met their deadlines, ×0.9 after a miss.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np


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


class CallTimeModel:
    """Pipeline-call seconds from (images, pixels per image, steps), refitted on recent calls."""

    def __init__(self, window: int = 64) -> None:
        self._calls: deque[tuple[int, int, int, float]] = deque(maxlen=window)
        self._fit: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self._calls)

    @staticmethod
    def _features(images: np.ndarray, pixels: np.ndarray, steps: np.ndarray) -> np.ndarray:
        megapixels = images * pixels * 1e-6
        return np.column_stack([np.ones_like(steps), steps, megapixels * steps, megapixels])

    def observe(self, images: int, pixels: int, steps: int, seconds: float) -> None:
        if images > 0 and steps > 0 and seconds > 0:
            self._calls.append((images, pixels, steps, seconds))
            self._fit = None

    def predict(self, images: int, pixels: int, steps: int) -> float | None:
        """Seconds for such a call; None before two different batch sizes have been seen (the
        growth with images is then unknown) or when the fit is not usable."""
        if len(self._calls) < 2:
            return None
        data = np.array(self._calls, dtype=float)
        if len(np.unique(data[:, 0] * data[:, 1])) < 2:
            return None
        if self._fit is None:
            features = self._features(data[:, 0], data[:, 1], data[:, 2])
            self._fit = np.linalg.lstsq(features, data[:, 3], rcond=None)[0]
        x = self._features(np.array([float(images)]), np.array([float(pixels)]), np.array([float(steps)]))
        value = float((x @ self._fit)[0])
        return value if value > 0 else None


@dataclass
class AdaptiveBatcher:
    """A replica's batch-size choice: the model when trusted, AIMD before."""

    config: AdaptiveConfig = field(default_factory=AdaptiveConfig)
    model: CallTimeModel = field(init=False)
    limit: float = 1.0  # AIMD's batch size (requests)

    def __post_init__(self) -> None:
        self.model = CallTimeModel(self.config.window)

    @property
    def model_ready(self) -> bool:
        return len(self.model) >= self.config.min_calls

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
            if self.model_ready:
                predicted = self.model.predict(images, pixels, steps)
                if predicted is not None and now + self.config.margin * predicted > earliest and k > 1:
                    break  # this one would make the call miss someone's deadline: it waits
            best = k
        return best

    def hopeless(self, job: Waiting, now: float, pixels: int, steps: int) -> float | None:
        """The predicted call time if ``job`` cannot meet its deadline even alone (else None):
        running it would only take a call from requests that can still make theirs."""
        if not self.model_ready or job.deadline is None:
            return None
        predicted = self.model.predict(job.images, pixels, steps)
        if predicted is None or now + self.config.margin * predicted <= job.deadline:
            return None
        return predicted

    def observe(self, images: int, pixels: int, steps: int, seconds: float, all_in_time: bool) -> None:
        """A finished call: refit the model, and move AIMD's limit."""
        self.model.observe(images, pixels, steps, seconds)
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
            predicted = self.model.predict(n, pixels, steps)
            if predicted is None or self.config.margin * predicted > budget_s:
                break
            k = n
        return k
