"""The node's memory as a journal (SIMULATION): each checkpoint's arrival, use and eviction, timed.

The live simulated page cache writes the same journal (``models/page_cache.py``), so a live replay
and its simulation can be lined up event by event (``benchmarks/validate.py``): where their
evictions first part, the two runs' node memories began to differ. Off by default: the whole
trace's replays do not keep it.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable

#: (time, event, checkpoint): ``in`` (a read began: the prefetch's or a load from disk), ``use``
#: (a load found it, or the pre-warm kept it), ``out`` (least recently used, evicted)
JournalEvent = tuple[float, str, str]


class JournaledMemory(OrderedDict[str, float]):
    """The node's memory (checkpoint → when its read ends, least recently used first) that notes
    its events at ``clock()``'s time."""

    def __init__(self, clock: Callable[[], float]) -> None:
        super().__init__()
        self.clock = clock
        self.events: list[JournalEvent] = []

    def __setitem__(self, model: str, ready_s: float) -> None:
        if model not in self:
            self.events.append((self.clock(), "in", model))
        super().__setitem__(model, ready_s)

    def move_to_end(self, model: str, last: bool = True) -> None:
        super().move_to_end(model, last)
        self.events.append((self.clock(), "use", model))

    def popitem(self, last: bool = True) -> tuple[str, float]:
        model, ready_s = super().popitem(last)
        self.events.append((self.clock(), "out", model))
        return model, ready_s


def first_difference(live: list[JournalEvent], simulated: list[JournalEvent]) -> dict[str, object] | None:
    """Where the two journals' arrivals and evictions (in order, uses aside: their order follows
    the calls' timing) first differ; None: they agree throughout (up to the shorter one's end)."""
    moves = [[(event, model) for _, event, model in journal if event != "use"] for journal in (live, simulated)]
    timed = [[(t, event, model) for t, event, model in journal if event != "use"] for journal in (live, simulated)]
    for index, (one, other) in enumerate(zip(*moves)):
        if one != other:
            return {"index": index, "live": list(timed[0][index]), "simulated": list(timed[1][index])}
    return None
