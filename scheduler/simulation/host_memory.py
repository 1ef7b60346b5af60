"""How many requests find their checkpoint outside a node's host memory of N checkpoints.

A request whose checkpoint is neither on a GPU nor in host memory reads it from disk (~35 s in the
production service, more than the 30 s SLO), so host memory decides a floor under the misses no
keep-alive can lift. Two counts per size, over the sequence of requested checkpoints:

- **LRU**: the page cache's rule, and the simulator's for the node's memory
  (``scheduler/simulation/models.py``), here without the GPUs' own copies;
- **fewest**: Belady's MIN, which on a miss evicts the checkpoint needed furthest in the future. No
  rule that reads a checkpoint only when a request asks for it misses fewer requests (Belady 1966).
  Counted from ``count_from`` on, it starts from the best memory there could be at that point (the
  first checkpoints the counted requests ask for), so it bounds every eviction rule whatever came
  before; reading ahead, which needs foresight, can do better.

``count_from`` replays the earlier requests to fill LRU's memory without counting them (score one
part of a trace after the part before it). The *first uses* are the counted requests for a
checkpoint not asked for before.

Between the two lie the rules an online cache could use instead of LRU (:data:`ONLINE_RULES`,
:func:`rule_misses`): LRU-K (O'Neil et al., SIGMOD 1993: evict the checkpoint whose K-th most recent
use is oldest; the Linux page cache's two lists are close to LRU-2) and frequency over a recent
window. They need the requests' times, so they take (time, checkpoint) pairs. And
:func:`tenant_returns` asks whether a tenant's own history could read ahead what LRU reads from
disk: how many of those reads were for a checkpoint the same tenant had asked for before.
"""

from __future__ import annotations

from bisect import bisect_left
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class HostMisses:
    capacity: int  # checkpoints the node's host memory holds
    requests: int  # requests counted (from ``count_from`` on)
    lru: int  # of them, read from disk under LRU
    fewest: int  # the fewest any eviction rule can read from disk (Belady's MIN)
    first_uses: int  # of them, for a checkpoint never asked for before


def lru_reads(models: Sequence[str], capacity: int) -> Iterator[int]:
    """The indices of the requests whose checkpoint an LRU of ``capacity`` reads from disk."""
    held: OrderedDict[str, None] = OrderedDict()
    for index, model in enumerate(models):
        if model in held:
            held.move_to_end(model)
            continue
        yield index
        held[model] = None
        if len(held) > capacity:
            held.popitem(last=False)


def lru_misses(models: Sequence[str], capacity: int, count_from: int = 0) -> int:
    """Requests from ``count_from`` on whose checkpoint an LRU of ``capacity`` does not hold."""
    return sum(index >= count_from for index in lru_reads(models, capacity))


def fewest_misses(models: Sequence[str], capacity: int, count_from: int = 0) -> int:
    """The fewest requests from ``count_from`` on that any eviction rule of ``capacity`` checkpoints
    serves from disk, whatever the memory held at ``count_from``: Belady's MIN on those requests,
    less the misses that only fill its empty memory (the best start holds exactly those checkpoints)."""
    counted = models[count_from:]
    next_use = [0] * len(counted)
    seen: dict[str, int] = {}
    for index in range(len(counted) - 1, -1, -1):
        next_use[index] = seen.get(counted[index], len(counted) + index)  # never again: furthest of all
        seen[counted[index]] = index
    held: dict[str, int] = {}  # checkpoint → the index of its next request
    misses = 0
    for index, model in enumerate(counted):
        if model not in held:
            misses += 1
            if len(held) >= capacity:
                del held[max(held, key=held.__getitem__)]
        held[model] = next_use[index]
    return misses - min(capacity, len(seen))


def host_memory_misses(models: Sequence[str], capacity: int, count_from: int = 0) -> HostMisses:
    """Both counts and the first uses for one size of host memory (``capacity`` ≥ 1)."""
    if capacity < 1:
        raise ValueError(f"host memory must hold at least one checkpoint, got {capacity}")
    earlier = set(models[:count_from])
    first_uses = 0
    for model in models[count_from:]:
        first_uses += model not in earlier
        earlier.add(model)
    return HostMisses(capacity, len(models) - min(count_from, len(models)), lru_misses(models, capacity, count_from),
                      fewest_misses(models, capacity, count_from), first_uses)


#: An eviction rule's score of one held checkpoint, from its request times so far (ascending) and
#: the time now: the lowest score is evicted.
Score = Callable[[list[float], float], tuple[float, ...]]


def lru_k(k: int) -> Score:
    """LRU-K: the time of the K-th most recent use (a checkpoint used fewer than K times goes first,
    least recently used first among those). LRU-1 is LRU."""
    return lambda times, now: (1.0, times[-k]) if len(times) >= k else (0.0, times[-1])


def uses_within(window_s: float) -> Score:
    """The fewest uses in the last ``window_s`` go first; among equals, the least recently used."""
    return lambda times, now: (float(len(times) - bisect_left(times, now - window_s)), times[-1])


#: The online rules ``sdserve-bench host-memory`` compares with LRU and the fewest possible.
ONLINE_RULES: dict[str, Score] = {
    "LRU-2": lru_k(2),
    "LRU-3": lru_k(3),
    "fewest uses in 6 h": uses_within(6 * 3600.0),
    "fewest uses in 1 day": uses_within(86400.0),
    "fewest uses in 3 days": uses_within(3 * 86400.0),
}


def rule_misses(requests: Sequence[tuple[float, str]], capacity: int, score: Score, count_from: int = 0) -> int:
    """Requests from ``count_from`` on (``requests``: (time, checkpoint), in time order) whose
    checkpoint a memory of ``capacity`` that evicts by ``score`` does not hold."""
    uses: dict[str, list[float]] = {}
    held: set[str] = set()
    misses = 0
    for index, (now, model) in enumerate(requests):
        if model not in held:
            misses += index >= count_from
            if len(held) >= capacity:
                held.remove(min(held, key=lambda other: (score(uses[other], now), other)))
            held.add(model)
        uses.setdefault(model, []).append(now)
    return misses


def tenant_returns(models: Sequence[str], tenants: Sequence[str], capacity: int, count_from: int = 0) -> int:
    """Of the requests from ``count_from`` on that an LRU of ``capacity`` reads from disk, those for
    a checkpoint their tenant had asked for before: the most a read ahead on a tenant's own history
    could save."""
    first_asked: dict[tuple[str, str], int] = {}
    for index, pair in enumerate(zip(tenants, models)):
        first_asked.setdefault(pair, index)
    return sum(index >= count_from and first_asked[(tenants[index], models[index])] < index
               for index in lru_reads(models, capacity))
