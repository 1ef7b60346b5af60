"""Which checkpoint a new replica loads during its cold start, and when a free replica passes over
the queue's head for a request whose checkpoint it holds (pure decisions, no I/O).

With many checkpoints a replica that starts holding only the fleet's default makes the requests that
called for it pay a second load — as long as the cold start itself (production: p50 22.7 s) — when
they are for another checkpoint. A new replica is asked for because requests queue; it should load
what they need: the checkpoint with the most queued requests per replica already holding it (or
loading it), counting the new one. Ties go to the checkpoint queued first; an empty queue gives the
default.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence

#: How far past the fair order a free replica may reach for a request whose checkpoint it holds.
HOLDER_LOOK_AHEAD = 8


def held_elsewhere(head_model: str, free_hold: Iterable[Iterable[str]], others_hold: Iterable[Iterable[str]]) -> bool:
    """Whether the queue's head should wait for its checkpoint's holder instead of going to a free
    replica that would load it: no free replica holds it, and a busy or starting one does. The free
    replica then takes a request (within :data:`HOLDER_LOOK_AHEAD`) for a checkpoint it holds."""
    return bool(head_model) and not any(head_model in set(m) for m in free_hold) and any(
        head_model in set(m) for m in others_hold)


def preload_choice(queued: Sequence[str], held: Iterable[Iterable[str]], default: str) -> str:
    """``queued``: the checkpoint of each queued request, oldest first ("" for the default);
    ``held``: each running or starting replica's checkpoints on its device."""
    demand = Counter(model or default for model in queued)
    if not demand:
        return default
    holders = Counter(model for models in held for model in set(models))
    first_seen = {model: k for k, model in reversed(list(enumerate(model or default for model in queued)))}
    return max(demand, key=lambda m: (demand[m] / (1 + holders[m]), -first_seen[m]))
