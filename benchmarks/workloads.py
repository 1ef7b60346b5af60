"""Arrival schedules for open-loop workloads: a burst, Poisson arrivals, or a trace."""

from __future__ import annotations

import numpy as np

from benchmarks.traces import Arrival


def burst(requests: int) -> list[Arrival]:
    """``requests`` arrivals at the same instant (after the warm-up and an idle gap)."""
    return [Arrival(0.0) for _ in range(requests)]


def poisson(rate: float, duration_s: float, seed: int = 0) -> list[Arrival]:
    """Exponential inter-arrival times at ``rate`` per second for ``duration_s`` seconds."""
    if rate <= 0 or duration_s <= 0:
        raise ValueError("rate and duration must be > 0")
    rng = np.random.default_rng(seed)
    gaps = rng.exponential(1.0 / rate, size=int(rate * duration_s * 2) + 16)
    times = np.cumsum(gaps)
    return [Arrival(float(t)) for t in times[times < duration_s]]
