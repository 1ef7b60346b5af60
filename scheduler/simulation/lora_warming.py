"""Adapter warming, a what-if (SIMULATION; ``FleetSpec.lora_warming``): a running replica with
nothing to do loads, one at a time, the LoRA adapters that its GPU's checkpoints' requests used most
in the last ``WINDOW_S``, so that a later request finds its adapters loaded instead of paying their
load before its call. A load cannot be cut short: a request sent to a replica in the middle of one
waits for it to end. The replica is paid for either way (it is up); what warming can cost is that
wait, and what it can gain is bounded by every adapter load being free
(``sdserve-bench simulate --lora-load-s 0``).
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Callable, Container, Iterable

from scheduler.placement import adapter_ids

#: How far back a checkpoint's adapter uses count.
WINDOW_S = 86_400.0
#: An adapter used fewer times than this with a checkpoint in the window is not warmed for it.
MIN_USES = 2


class AdapterUses:
    """Each checkpoint's adapter uses, by arrival time (the ingress sees every request)."""

    def __init__(self, window_s: float = WINDOW_S) -> None:
        self.window_s = window_s
        self.by_model: dict[str, deque[tuple[float, str]]] = {}

    def add(self, now: float, model: str, loras: Iterable[str]) -> None:
        uses = self.by_model.setdefault(model, deque())
        uses.extend((now, adapter) for adapter in sorted(adapter_ids(loras)))  # sorted: the same order every run

    def top(self, model: str, now: float, k: int) -> list[str]:
        """The ``k`` adapters used most with ``model`` in the window (at least ``MIN_USES`` times),
        most used first, the most recently used first among equals."""
        uses = self.by_model.get(model)
        if not uses:
            return []
        while uses and uses[0][0] < now - self.window_s:
            uses.popleft()
        counts = Counter(adapter for _, adapter in uses)
        last = {adapter: t for t, adapter in uses}
        ranked = sorted(counts, key=lambda a: (-counts[a], -last[a]))
        return [adapter for adapter in ranked if counts[adapter] >= MIN_USES][:k]


def next_to_warm(device: Iterable[str], loaded: Container[tuple[str, str]],
                 top: Callable[[str], list[str]]) -> tuple[str, str] | None:
    """The (checkpoint, adapter) an idle replica loads next: its GPU's checkpoints from the most
    recently used, each one's ``top`` adapters in order, the first not ``loaded``; None: nothing."""
    for model in reversed(list(device)):
        for adapter in top(model):
            if (model, adapter) not in loaded:
                return model, adapter
    return None
