"""How long a pipeline call takes on this replica, learnt from the replica's own calls.

A call costs a fixed part (text encoding, VAE decode, PNG encoding: once per call, growing with the
pixels) plus one denoising step's cost per step (also growing with the pixels):

    seconds = a + b × pixels + steps × (c + d × pixels)

with ``pixels`` all the pixels of the call (images × width × height), fitted by least squares over
the last ``window`` calls. One model serves both of its users on a replica — shedding (will this
request make its deadline?) and the adaptive batch size (how many fit before the earliest
deadline?) — fed once per call.

It answers only where the data says something:

- nothing before ``min_samples`` calls, nor from calls all of one size *and* one step count;
- calls of one step count only: the per-step and fixed parts cannot be told apart, so it answers
  for that step count alone (any size: the cost's growth with pixels is known);
- calls of one size only: it answers for that size alone (how cost grows with pixels is unknown);
- ``max_extrapolation`` × the largest call seen bounds the sizes it answers for (a GPU's cost per
  pixel is far from constant across sizes), unless the caller asks to extrapolate.

The two users want opposite mistakes avoided, hence the switch: a wrong "too slow" sheds work that
would have finished (so shedding never extrapolates), while a batch that grows past what was ever
measured is exactly what a linear extrapolation should price (so batching does).
"""

from __future__ import annotations

from collections import deque

import numpy as np

#: Pixels are fed to the solver in megapixels, so the columns stay comparable.
_MEGA = 1e-6


class CallTimeModel:
    def __init__(self, window: int = 64, min_samples: int = 2, max_extrapolation: float = 2.0) -> None:
        self._calls: deque[tuple[float, float, float]] = deque(maxlen=window)
        self.min_samples = min_samples
        self.max_extrapolation = max_extrapolation
        self._fit: tuple[np.ndarray, list[int]] | None = None

    def __len__(self) -> int:
        return len(self._calls)

    def observe(self, pixels: int, steps: int, seconds: float) -> None:
        """One call: ``pixels`` of all its images, ``steps`` it ran, wall seconds it took."""
        if pixels > 0 and steps > 0 and seconds > 0:
            self._calls.append((float(pixels), float(steps), seconds))
            self._fit = None

    @staticmethod
    def _features(pixels: np.ndarray, steps: np.ndarray) -> np.ndarray:
        p = pixels * _MEGA
        return np.column_stack([np.ones_like(p), p, steps, steps * p])

    def predict(self, pixels: int, steps: int, extrapolate: bool = False) -> float | None:
        """Seconds for a call of ``pixels`` (all images) and ``steps``; None where it would guess."""
        if len(self._calls) < self.min_samples:
            return None
        data = np.array(self._calls)
        sizes, step_counts = np.unique(data[:, 0]), np.unique(data[:, 1])
        if len(sizes) == 1 and len(step_counts) == 1:
            return None
        if len(step_counts) == 1 and steps != step_counts[0]:
            return None  # fixed and per-step cost inseparable: only that step count is known
        if len(sizes) == 1 and pixels != sizes[0]:
            return None  # nothing says how the cost grows with pixels
        if not extrapolate and pixels > self.max_extrapolation * sizes[-1]:
            return None
        if self._fit is None:
            # the columns the data can tell apart: with one size, a + c × steps; with one step
            # count, a + b × pixels; else all four
            columns = [0, 2] if len(sizes) == 1 else [0, 1] if len(step_counts) == 1 else [0, 1, 2, 3]
            features = self._features(data[:, 0], data[:, 1])[:, columns]
            self._fit = (np.linalg.lstsq(features, data[:, 2], rcond=None)[0], columns)
        coefficients, columns = self._fit
        x = self._features(np.array([float(pixels)]), np.array([float(steps)]))[:, columns]
        value = float((x @ coefficients)[0])
        # a fit can go negative far from its data; the cheapest call seen is then the safe floor
        return value if value > 0 else float(data[:, 2].min())
