"""Host memory as the pre-warm tier: read a checkpoint into the node's memory before its predicted
next use (pure decisions, no I/O).

A checkpoint load from disk (production: ~35 s) misses a 30 s SLO however early it starts; one from
the node's memory (~2.8 s) does not. The node keeps the checkpoints used most recently, so the
misses that remain are checkpoints coming back after hours away. Their use follows the day: in the
production trace's first 11 days, with 44 checkpoints kept least recently used first, 39 of the 84
loads of a returning checkpoint from disk came within an hour of the time of day of a use 1, 2, 3 or
7 days before, against 3 for the time of day twelve hours off (the whole trace: 108 of 246, against
8). So every ``period_s`` the ingress (and
the simulator) asks: which checkpoints were used in the coming ``horizon_s`` on at least
``min_days`` of the past ``days`` days? It reads those from disk (most such days first, at most
``max_reads`` a round), and marks those already in memory as used so the cache keeps them; it
evicts only checkpoints that are neither predicted nor used in the last ``horizon_s``.

The defaults (7 days, 1 of them, 3 hours) were chosen on the trace's first 11 days, simulated with
4 GPUs, 4 checkpoints on each and 40 in the node's memory (``configs/single.yaml``): disk loads
159 → 138 and SLO 94.96 → 95.50 % at the same replica-seconds; 2 of 7 days or a 1-hour window
read less (140–156 disk loads), a 6-hour window evicted more (144), 3 days looked back 145.

The read costs disk bandwidth, never GPU time: a replica still loads the checkpoint onto its GPU
only when a request needs it.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace

DAY_S = 86400.0


@dataclass(frozen=True)
class PrewarmConfig:
    """The pre-warm's knobs. ``days`` 0 turns it off."""

    days: int = 7  # past days whose uses predict the coming window's
    min_days: int = 1  # a checkpoint is predicted when used in the window on at least this many of them
    horizon_s: float = 3 * 3600.0  # the coming window; also what counts as used recently
    period_s: float = 600.0  # how often the plan is made
    max_reads: int = 4  # reads from disk per plan, at most
    day_s: float = DAY_S  # the demand's cycle (compressed replays divide it)

    def compressed(self, k: float) -> "PrewarmConfig":
        """For a replay compressed k× (the simulated backend's ``simulation.time_scale``): its day,
        window and period k× shorter, as its arrivals."""
        return replace(self, horizon_s=self.horizon_s / k, period_s=self.period_s / k, day_s=self.day_s / k)


@dataclass(frozen=True)
class PrewarmPlan:
    keep: list[str]  # in memory and predicted or recent: mark used, least wanted first
    read: list[str]  # not in memory, predicted: read from disk, most wanted first


def days_used(uses: Sequence[float], now: float, config: PrewarmConfig) -> int:
    """On how many of the past ``days`` days a checkpoint was used (``uses``: its request times,
    ascending) within the window ``[now, now + horizon_s)`` shifted back by whole days."""
    count = 0
    for day in range(1, config.days + 1):
        start = now - day * config.day_s
        k = bisect_left(uses, start)
        count += k < len(uses) and uses[k] < start + config.horizon_s
    return count


def prewarm_plan(uses: Mapping[str, Sequence[float]], now: float, in_memory: Iterable[str], capacity: int,
                 on_device: Iterable[str] = (), config: PrewarmConfig = PrewarmConfig()) -> PrewarmPlan:
    """What to keep and what to read ahead at ``now``.

    ``uses``: each checkpoint's request times so far, ascending; ``in_memory``: what the node's
    memory holds; ``capacity``: how many checkpoints it holds; ``on_device``: checkpoints a replica
    holds on its GPU (not read: a replica has it). A read takes a slot whose checkpoint is neither
    predicted nor recent (or an empty one), never more than there are.
    """
    if config.days <= 0 or capacity <= 0:
        return PrewarmPlan([], [])
    score = {model: days_used(times, now, config) for model, times in uses.items() if times}
    recent = {model for model, times in uses.items() if times and now - times[-1] < config.horizon_s}
    cached = list(dict.fromkeys(in_memory))
    wanted = {model for model, days in score.items() if days >= config.min_days}
    # least wanted first; among equals, least recently used first, so that marking them used keeps
    # their recency order (the LRU then evicts by use, not by the order this plan happens to touch)
    last = {model: times[-1] for model, times in uses.items() if times}
    keep = sorted((model for model in cached if model in wanted or model in recent),
                  key=lambda model: (score.get(model, 0), last.get(model, float("-inf")), model))
    spare = capacity - len(keep)
    held = set(on_device)
    read = sorted((model for model in wanted if model not in cached and model not in held),
                  key=lambda model: (-score[model], model))
    return PrewarmPlan(keep, read[:max(0, min(spare, config.max_reads))])
