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
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class HostMisses:
    capacity: int  # checkpoints the node's host memory holds
    requests: int  # requests counted (from ``count_from`` on)
    lru: int  # of them, read from disk under LRU
    fewest: int  # the fewest any eviction rule can read from disk (Belady's MIN)
    first_uses: int  # of them, for a checkpoint never asked for before


def lru_misses(models: Sequence[str], capacity: int, count_from: int = 0) -> int:
    """Requests from ``count_from`` on whose checkpoint an LRU of ``capacity`` does not hold."""
    held: OrderedDict[str, None] = OrderedDict()
    misses = 0
    for index, model in enumerate(models):
        if model in held:
            held.move_to_end(model)
            continue
        misses += index >= count_from
        held[model] = None
        if len(held) > capacity:
            held.popitem(last=False)
    return misses


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
