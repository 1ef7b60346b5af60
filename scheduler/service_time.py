"""Estimate how long a pipeline call will take, from this replica's own measurements.

A call costs a fixed part (text encoding, VAE decode, PNG encoding: once per call, growing with the
pixels) plus one denoising step's cost per step (also growing with the pixels):

    seconds = a0 + a1 × pixels + steps × (b0 + b1 × pixels)

fitted by least squares over recent calls. It needs calls with at least two step counts, or the
fixed part cannot be told from the per-step part; with one pixel count seen it fits
``a + b × steps`` at that count and answers for that count only. Folding the fixed part into the per-step cost, as an earlier version
did, makes a few small, short calls look expensive per step; scaled up by pixels, a 512×512
request then looks hopeless and is shed although it would finish.

The estimate is used to shed requests that cannot finish in time, and a wrong "too slow" refuses
work that would have finished. So it answers only near what was measured: no estimate before
``min_samples`` calls, none from one step count, none for another pixel count when only one was
seen, and none beyond ``max_extrapolation`` × the largest pixel count seen (the cost per pixel of a
GPU is far from constant across sizes).
"""

from __future__ import annotations

from collections import deque

import numpy as np


class StepTimeEstimator:
    def __init__(self, window: int = 64, min_samples: int = 2, max_extrapolation: float = 2.0) -> None:
        self._samples: deque[tuple[int, int, float]] = deque(maxlen=window)
        self.min_samples = min_samples
        self.max_extrapolation = max_extrapolation
        self._fit: np.ndarray | None = None

    def observe(self, pixels: int, steps: int, seconds: float) -> None:
        """Record one call: ``pixels`` in the call (all images), ``steps`` run, wall seconds."""
        if steps > 0 and pixels > 0 and seconds > 0:
            self._samples.append((pixels, steps, seconds))
            self._fit = None

    @staticmethod
    def _features(pixels: np.ndarray, steps: np.ndarray) -> np.ndarray:
        scale = 1e-6  # pixels in megapixels: keeps the columns comparable for the solver
        p = pixels * scale
        return np.column_stack([np.ones_like(p), p, steps, steps * p])

    def estimate(self, pixels: int, steps: int) -> float | None:
        """Seconds for a call of ``pixels`` and ``steps``; None when it would be a guess."""
        if len(self._samples) < self.min_samples:
            return None
        data = np.array(self._samples, dtype=float)
        sizes = np.unique(data[:, 0])
        if len(np.unique(data[:, 1])) < 2:
            return None  # one step count: fixed and per-step cost cannot be told apart
        if len(sizes) == 1 and pixels != sizes[0]:
            return None  # nothing says how the cost grows with pixels
        if pixels > self.max_extrapolation * sizes[-1]:
            return None
        if self._fit is None:
            features = self._features(data[:, 0], data[:, 1])
            if len(sizes) == 1:
                features = features[:, [0, 2]]  # a + b × steps at the one size seen
            self._fit = np.linalg.lstsq(features, data[:, 2], rcond=None)[0]
        x = self._features(np.array([float(pixels)]), np.array([float(steps)]))
        if len(self._fit) == 2:
            x = x[:, [0, 2]]
        value = float((x @ self._fit)[0])
        # a fit can go negative far from its data; the cheapest call seen is then the safe floor
        return value if value > 0 else float(data[:, 2].min())
