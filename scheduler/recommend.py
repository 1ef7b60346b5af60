"""Config search: the cheapest setting that meets an SLO target, and the Pareto front of the rest.

Serverless platforms offer "auto-config" by probing live; here each candidate is scored by the
fleet simulator instead (the caller passes ``evaluate``), so the search is pure and repeatable.
A candidate is the handful of knobs that move cost and latency most: the mode (single, or batched
with a batch size), the keep-alive before scale-to-zero, the stable window, and max replicas.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Protocol, TypeVar


class Scored(Protocol):
    """Anything with a cost and an SLO attainment (a :class:`Score`, a sweep's point)."""

    @property
    def slo_attainment(self) -> float: ...

    @property
    def replica_seconds(self) -> float: ...


S = TypeVar("S", bound=Scored)


@dataclass(frozen=True, order=True)
class Candidate:
    max_replicas: int
    batch_size: int  # 1: single (the FaaS setting); >1: batched
    keep_alive_s: float  # scale_to_zero_after_s (the fallback, with a learned keep-alive)
    stable_window_s: float
    penalty_s: float = -1.0  # >= 0: keep-alive learned per load regime with this cold-start penalty

    @property
    def mode(self) -> str:
        return "single" if self.batch_size == 1 else f"batched-{self.batch_size}"

    @property
    def label(self) -> str:
        keep = (f"keep-alive {self.keep_alive_s:g}s" if self.penalty_s < 0
                else f"learned keep-alive (penalty {self.penalty_s:g}s)")
        return f"{self.mode}, max {self.max_replicas}, {keep}, window {self.stable_window_s:g}s"


@dataclass(frozen=True)
class Score:
    candidate: Candidate
    slo_attainment: float  # fraction of requests answered ok within the SLO
    replica_seconds: float
    p99_latency_s: float | None = None


def grid(batch_sizes: Iterable[int], keep_alives_s: Iterable[float], stable_windows_s: Iterable[float],
         max_replicas: Iterable[int], penalties_s: Iterable[float] = ()) -> list[Candidate]:
    """Every combination; each penalty adds learned keep-alive candidates (fallback: the first
    fixed keep-alive) beside the fixed ones."""
    keep_alives_s = list(keep_alives_s)
    keeps = [(k, -1.0) for k in keep_alives_s] + [(keep_alives_s[0], p) for p in penalties_s]
    return [Candidate(m, b, k, w, p) for b, (k, p), w, m in
            itertools.product(batch_sizes, keeps, stable_windows_s, max_replicas)]


def pareto_front(scores: Iterable[S]) -> list[S]:
    """Scores no other beats on both cost and attainment, cheapest first."""
    front: list[S] = []
    for score in sorted(scores, key=lambda s: (s.replica_seconds, -s.slo_attainment)):
        if not front or score.slo_attainment > front[-1].slo_attainment:
            front.append(score)
    return front


#: Costs within this fraction of the cheapest count as a tie.
TIE = 0.001


def choose(scores: Iterable[Score], target: float) -> Score | None:
    """The cheapest score meeting ``target`` attainment, or None if no candidate does. Among ties
    (within 0.1 %): single before batched (isolation), then fewer replicas, the shorter keep-alive
    and the shorter window."""
    meeting = [s for s in scores if s.slo_attainment >= target]
    if not meeting:
        return None
    cheapest = min(s.replica_seconds for s in meeting)
    tied = [s for s in meeting if s.replica_seconds <= cheapest * (1 + TIE)]
    return min(tied, key=lambda s: (s.candidate.batch_size, s.candidate.max_replicas,
                                    s.candidate.penalty_s, s.candidate.keep_alive_s, s.candidate.stable_window_s))


def recommend(candidates: list[Candidate], evaluate: Callable[[Candidate], Score], target: float,
              progress: Callable[[int, int], None] | None = None) -> tuple[Score | None, list[Score]]:
    """Score every candidate; return the choice and all scores."""
    scores = []
    for done, candidate in enumerate(candidates, 1):
        scores.append(evaluate(candidate))
        if progress:
            progress(done, len(candidates))
    return choose(scores, target), scores
