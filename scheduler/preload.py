"""Which checkpoint a new replica loads during its cold start (a pure decision, no I/O).

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


def preload_choice(queued: Sequence[str], held: Iterable[Iterable[str]], default: str) -> str:
    """``queued``: the checkpoint of each queued request, oldest first ("" for the default);
    ``held``: each running or starting replica's checkpoints on its device."""
    demand = Counter(model or default for model in queued)
    if not demand:
        return default
    holders = Counter(model for models in held for model in set(models))
    first_seen = {model: k for k, model in reversed(list(enumerate(model or default for model in queued)))}
    return max(demand, key=lambda m: (demand[m] / (1 + holders[m]), -first_seen[m]))
