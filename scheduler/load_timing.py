"""Loads timed so far, and what more of them are expected to take (the mean so far).

A replica's deadline rule counts the loads a call needs before its first step (a checkpoint from
host memory or disk, LoRA adapters) by what this replica measured: the worker's catalog and
pipelines (``models/``) and the simulator's replicas keep one of these per kind of load.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class LoadTiming:
    """Loads measured so far: how many, and the seconds they took."""

    loads: int = 0
    seconds: float = 0.0

    def add(self, loads: int, seconds: float) -> None:
        self.loads += loads
        self.seconds += seconds

    def expected_s(self, loads: int = 1) -> float:
        """Seconds ``loads`` more would take by the mean so far (0 before any was measured)."""
        return loads * self.seconds / self.loads if self.loads else 0.0
