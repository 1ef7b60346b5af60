"""Keep-alive and pre-warm learned from the idle times the fleet itself observed.

The hybrid histogram policy of Shahrad et al., "Serverless in the Wild" (USENIX ATC 2020): keep a
histogram of idle times (fleet idle → next request); keep the last replica alive up to a high
percentile of them and, when even a low percentile is longer than a cold start, stop at once and
pre-warm one replica a cold start before that low percentile. Until the histogram has enough
samples, or when most idle times fall beyond its range, a fixed keep-alive stands in.

Two refinements, both measured on the production trace (README, "Autoscaling"):

- **Per load regime.** Idle times depend strongly on how busy the last 10 minutes were (after 30+
  requests, a gap over 60 s is rare; after one lone request, 30 % of gaps exceed 5 minutes), so
  there is one histogram per regime of recent arrivals, chosen when the idle period starts.
- **Cost-aware choice** (when ``cold_start_penalty_s`` is set): instead of a fixed percentile, the
  keep-alive K minimises, over the regime's histogram, Σ min(gap, K) + Σ_{gap > K} (cold start +
  penalty): the replica-seconds kept idle plus those of the cold starts it causes, each cold start
  also charged the penalty (what avoiding one is worth to you, in replica-seconds). Penalty 0 is
  the classic ski-rental break-even; larger trades cost for fewer cold starts.

Only what the fleet saw is used (no peeking at a trace): the histograms live in the decider's state.
Bins are log-spaced from 1 s to 4 h, so both burst gaps and overnight idling are resolved.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

#: Upper edges of the histogram's bins, seconds: 0–1 s, then 48 log-spaced bins up to 4 h.
BIN_EDGES_S: tuple[float, ...] = (1.0,) + tuple(1.0 * (14400.0 ** (k / 48)) for k in range(1, 49))


#: Load regimes: arrivals in the last ``REGIME_WINDOW_S`` below 2, 4, 10, 30, and 30 or more.
REGIME_EDGES: tuple[int, ...] = (2, 4, 10, 30)
REGIME_WINDOW_S = 600.0


def regime_of(recent_arrivals: int | None) -> int:
    """The load regime index for ``recent_arrivals`` (None, when unknown: the busiest regime's
    neighbour is as good a guess as any, so one shared regime 0 is used)."""
    if recent_arrivals is None:
        return 0
    return sum(recent_arrivals >= edge for edge in REGIME_EDGES)


#: A representative idle time per bin (geometric middle; the overflow bin lasts for ever).
_BIN_MIDDLES_S: tuple[float, ...] = (
    (0.5,) + tuple(math.sqrt(lo * hi) for lo, hi in zip(BIN_EDGES_S, BIN_EDGES_S[1:])) + (math.inf,)
)


@dataclass(frozen=True)
class KeepAlivePlan:
    keep_alive_s: float  # idle this long with one replica, then zero
    prewarm_after_s: float | None  # None: keep the replica from the start of the idle period
    source: str  # "fixed" or "histogram": what decided it (for the decision's reason)


def record_idle(histogram: tuple[int, ...], idle_s: float) -> tuple[int, ...]:
    """The histogram with one more idle period (the last bin also takes anything longer)."""
    counts = list(histogram) or [0] * (len(BIN_EDGES_S) + 1)
    index = next((i for i, edge in enumerate(BIN_EDGES_S) if idle_s <= edge), len(BIN_EDGES_S))
    counts[index] += 1
    return tuple(counts)


def idle_percentile(histogram: tuple[int, ...], q: float, upper: bool = True) -> float:
    """The ``q`` quantile of the recorded idle times, as its bin's upper (or lower) edge."""
    total = sum(histogram)
    if total == 0:
        return 0.0
    needed = q * total
    running = 0
    for index, count in enumerate(histogram):
        running += count
        if running >= needed - 1e-9 and count:
            if index >= len(BIN_EDGES_S):
                return math.inf
            if upper:
                return BIN_EDGES_S[index]
            return 0.0 if index == 0 else BIN_EDGES_S[index - 1]
    return math.inf


def cost_optimal_keep_alive(histogram: tuple[int, ...], cold_start_s: float, penalty_s: float,
                            max_s: float) -> float:
    """The K (0 or a bin edge, at most ``max_s``) minimising idle plus cold-start replica-seconds;
    the smallest such K on a tie.

    In one pass: at K = the edge of bin m, the gaps of bins 0..m end within the keep-alive and cost
    their length; the longer ones cost K plus a cold start and the penalty. So
    cost(K) = Σ_{b≤m} count·gap + (Σ_{b>m} count)·(K + cold start + penalty)."""
    counts = list(histogram) + [0] * (len(_BIN_MIDDLES_S) - len(histogram))
    longer = sum(counts)  # gaps longer than K (at K = 0: all)
    within = 0.0  # replica-seconds of the gaps within K
    best_k, best = 0.0, longer * (cold_start_s + penalty_s)
    for m, k in enumerate(BIN_EDGES_S):
        if k > max_s:
            break
        within += counts[m] * _BIN_MIDDLES_S[m]
        longer -= counts[m]
        cost = within + longer * (k + cold_start_s + penalty_s)
        if cost < best - 1e-9 * max(1.0, best):
            best_k, best = k, cost
    return best_k


def keep_alive_plan(histogram: tuple[int, ...], *, mode: str, fixed_s: float, keep_percentile: float,
                    prewarm_percentile: float, min_samples: int, max_s: float,
                    cold_start_s: float, penalty_s: float | None = None) -> KeepAlivePlan:
    """The keep-alive (and pre-warm) to use now."""
    samples = sum(histogram)
    if mode != "histogram" or samples < min_samples:
        return KeepAlivePlan(fixed_s, None, "fixed")
    if penalty_s is not None:
        return KeepAlivePlan(cost_optimal_keep_alive(histogram, cold_start_s, penalty_s, max_s), None, "cost")
    beyond = histogram[-1] / samples if histogram else 0.0
    if beyond > 1 - keep_percentile:  # idle times beyond the histogram's range: not representative
        return KeepAlivePlan(fixed_s, None, "fixed")
    keep = min(max_s, idle_percentile(histogram, keep_percentile) * 1.1)  # the paper's 10 % margin
    head = idle_percentile(histogram, prewarm_percentile, upper=False) * 0.9
    prewarm = head if head > cold_start_s else None
    return KeepAlivePlan(keep, prewarm, "histogram")


def keep_one(idle_for_s: float, plan: KeepAlivePlan, cold_start_s: float) -> bool:
    """Whether the plan wants one replica (warm or warming) ``idle_for_s`` into an idle period."""
    if idle_for_s >= plan.keep_alive_s:
        return False
    if plan.prewarm_after_s is None:
        return True
    return idle_for_s >= plan.prewarm_after_s - cold_start_s
