"""Estimate how long a pipeline call will take, from this replica's own measurements.

A denoising step's cost grows with the pixels in the call (size × images), plus a fixed overhead.
We fit ``seconds_per_step = a + b × pixels`` by least squares over recent calls; with a single
distinct size measured, the time scales in proportion to pixels. No estimate until enough calls
have been seen: shedding on a guess would refuse work that could have finished.
"""

from __future__ import annotations

from collections import deque

import numpy as np


class StepTimeEstimator:
    def __init__(self, window: int = 64, min_samples: int = 2) -> None:
        self._samples: deque[tuple[int, float]] = deque(maxlen=window)
        self.min_samples = min_samples

    def observe(self, pixels: int, steps: int, seconds: float) -> None:
        """Record one call: ``pixels`` in the call (all images), ``steps`` run, wall seconds."""
        if steps > 0 and pixels > 0 and seconds > 0:
            self._samples.append((pixels, seconds / steps))

    def seconds_per_step(self, pixels: int) -> float | None:
        if len(self._samples) < self.min_samples:
            return None
        xs = np.array([p for p, _ in self._samples], dtype=float)
        ys = np.array([s for _, s in self._samples], dtype=float)
        if np.ptp(xs) == 0:
            return float(ys.mean() * pixels / xs[0])
        slope, intercept = np.polyfit(xs, ys, 1)
        estimate = intercept + slope * pixels
        return float(estimate) if estimate > 0 else float(ys.min())

    def estimate(self, pixels: int, steps: int) -> float | None:
        per_step = self.seconds_per_step(pixels)
        return None if per_step is None else per_step * steps
