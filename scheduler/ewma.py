"""The exponentially weighted mean every running estimate in sdserve uses (service time, seconds per
image-step, a replica's reported call time), so one weight means the same thing everywhere."""

from __future__ import annotations

from dataclasses import dataclass

#: Weight of the newest sample: about the last 3 samples carry two thirds of the mean.
DEFAULT_ALPHA = 0.3


@dataclass
class Ewma:
    alpha: float = DEFAULT_ALPHA
    value: float | None = None  # None until the first sample

    def __post_init__(self) -> None:
        if not 0 < self.alpha <= 1:
            raise ValueError(f"alpha must be in (0, 1], got {self.alpha}")

    def add(self, sample: float) -> float:
        self.value = sample if self.value is None else self.alpha * sample + (1 - self.alpha) * self.value
        return self.value
