"""Memory admission: will a pipeline call fit in the replica's budget?

A call's peak extra memory (beyond the loaded weights) is modelled as
``fixed + images × (a × pixels + b × pixels²)`` per image of ``pixels`` = width × height: activations
grow with the latent area, attention maps with its square. The coefficients are fitted (least
squares, non-negative) to probe runs each replica measures at load time, so the formula follows the
model and hardware actually in use rather than a table.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class MemoryProbe:
    """One measured call: images of width × height, and its peak extra bytes."""

    width: int
    height: int
    images: int
    peak_bytes: float


@dataclass(frozen=True)
class MemoryModel:
    fixed_bytes: float
    per_pixel_bytes: float
    per_pixel_sq_bytes: float
    budget_bytes: float  # what one call may use on this replica
    safety_factor: float = 1.0  # estimates are multiplied by this before comparing

    @classmethod
    def fit(
        cls, probes: list[MemoryProbe], budget_bytes: float, safety_factor: float = 1.0
    ) -> "MemoryModel":
        if len(probes) < 3:
            raise ValueError("need at least 3 probes to fit the memory model")
        rows = np.array(
            [[1.0, p.images * p.width * p.height, p.images * float(p.width * p.height) ** 2] for p in probes]
        )
        peaks = np.array([p.peak_bytes for p in probes], dtype=float)
        coef = _nonnegative_lstsq(rows, peaks)
        return cls(float(coef[0]), float(coef[1]), float(coef[2]), float(budget_bytes), safety_factor)

    def estimate(self, width: int, height: int, images: int) -> float:
        return self.estimate_pixels(width * height, images)

    def estimate_pixels(self, pixels: int, images: int) -> float:
        """Peak extra bytes of a call of ``images`` images of ``pixels`` each."""
        p = float(pixels)
        return self.fixed_bytes + images * (self.per_pixel_bytes * p + self.per_pixel_sq_bytes * p**2)

    def fits(self, width: int, height: int, images: int) -> bool:
        return self.fits_pixels(width * height, images)

    def fits_pixels(self, pixels: int, images: int) -> bool:
        return self.estimate_pixels(pixels, images) * self.safety_factor <= self.budget_bytes

    def max_images(self, width: int, height: int, limit: int = 64) -> int:
        """Most images of this size one call can hold (0: not even one)."""
        return self.max_images_pixels(width * height, limit)

    def max_images_pixels(self, pixels: int, limit: int = 64) -> int:
        return next((n for n in range(limit, 0, -1) if self.fits_pixels(pixels, n)), 0)

    def max_square_side(self, images: int, limit: int = 4096) -> int:
        """Largest multiple-of-8 square side for ``images`` images that fits (0: none)."""
        return next((s for s in range(limit - limit % 8, 0, -8) if self.fits(s, s, images)), 0)


def _nonnegative_lstsq(rows: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Least squares with every coefficient >= 0: drop negative terms and refit (3 unknowns)."""
    active = [0, 1, 2]
    while True:
        coef = np.zeros(3)
        coef[active] = np.linalg.lstsq(rows[:, active], target, rcond=None)[0]
        negative = [i for i in active if coef[i] < 0]
        if not negative:
            return coef
        active.remove(min(negative, key=lambda i: coef[i]))
        if not active:
            return np.zeros(3)


def split_to_fit(
    images_per_job: list[int], width: int, height: int, model: MemoryModel | None
) -> list[list[int]]:
    """Split a same-size group (job indices) into consecutive calls whose estimate fits.

    A single job that does not fit alone still gets its own call (admission should have refused
    it; if not, the runtime OOM path answers for it alone).
    """
    if model is None:
        return [list(range(len(images_per_job)))] if images_per_job else []
    calls: list[list[int]] = []
    current: list[int] = []
    images = 0
    for index, n in enumerate(images_per_job):
        if current and not model.fits(width, height, images + n):
            calls.append(current)
            current, images = [], 0
        current.append(index)
        images += n
    if current:
        calls.append(current)
    return calls


def largest_that_fits(model: MemoryModel, width: int, height: int, images: int) -> str:
    """A message for a refused request: what would fit instead."""
    most_images = model.max_images(width, height)
    side = model.max_square_side(images)
    options = []
    if most_images:
        options.append(f"n <= {most_images} at {width}x{height}")
    if side:
        options.append(f"up to {side}x{side} with n={images}")
    fits = " or ".join(options) if options else "nothing at this size"
    return (
        f"{width}x{height} x {images} image(s) needs ~{model.estimate(width, height, images) / 2**20:.0f} MiB, "
        f"over this replica's budget of {model.budget_bytes / 2**20:.0f} MiB; largest that fits: {fits}"
    )
