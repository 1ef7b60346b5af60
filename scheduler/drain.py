"""Retry-After from the measured drain rate: how long until the queue ahead of a client empties.

``Retry-After = ceil(queue length / recent completions per second)``. Before any completion has been
seen, the queue length × the mean measured service time stands in; never a constant.
"""

from __future__ import annotations

import math
from collections import deque


class DrainRate:
    """Completions per second over a sliding window of completion times (seconds, any clock)."""

    def __init__(self, window_s: float = 30.0) -> None:
        self.window_s = window_s
        self._done: deque[float] = deque()

    def completed(self, now: float) -> None:
        self._done.append(now)
        self._trim(now)

    def per_second(self, now: float) -> float:
        self._trim(now)
        if not self._done:
            return 0.0
        span = max(now - self._done[0], 1.0)
        return len(self._done) / min(span, self.window_s)

    def _trim(self, now: float) -> None:
        while self._done and now - self._done[0] > self.window_s:
            self._done.popleft()


def retry_after_s(queue_length: int, completions_per_s: float, mean_service_s: float | None) -> int:
    """Whole seconds until the queue ahead is expected to drain; at least 1."""
    if completions_per_s > 0:
        seconds = queue_length / completions_per_s
    elif mean_service_s is not None:
        seconds = queue_length * mean_service_s
    else:
        seconds = float(queue_length)
    return max(1, math.ceil(seconds))
