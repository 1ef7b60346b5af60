"""Which checkpoint a new replica loads during its cold start, and when a free replica passes over
the queue's head: for a request whose checkpoint it holds, or while the head's checkpoint is still
being read from disk (pure decisions, no I/O).

With many checkpoints a replica that starts holding only the fleet's default makes the requests that
called for it pay a second load — as long as the cold start itself (production: p50 22.7 s) — when
they are for another checkpoint. A new replica is asked for because requests queue; it should load
what they need: the checkpoint with the most queued requests per replica already holding it (or
loading it), counting the new one. Ties go to the checkpoint queued first; an empty queue gives the
default.

A request for a checkpoint held nowhere starts the read of its files from disk into the node's
memory when it arrives (the prefetch). Sent to a replica before that read ends, it would hold the
replica idle until then, and start no sooner than it does when it goes once the read is done: the
copy from the node's memory is the same either way. So it waits in the queue for its read, and the
free replicas take the requests behind it that can start now (:func:`pass_over_reads`) — as an
operating system runs another process while one waits for its disk.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Collection, Iterable, Sequence
from typing import TypeVar

K, J = TypeVar("K"), TypeVar("J")  # a replica's key, a queued request

#: How far past the fair order a free replica may reach for a request whose checkpoint it holds.
HOLDER_LOOK_AHEAD = 8
TOOK, IDLE = "took", "idle"  # what passing over the queue's head did (else "": dispatch in order)


def held_elsewhere(head_model: str, free_hold: Iterable[Iterable[str]], others_hold: Iterable[Iterable[str]]) -> bool:
    """Whether the queue's head's checkpoint is on no free replica but on one of the others."""
    return bool(head_model) and not any(head_model in set(m) for m in free_hold) and any(
        head_model in set(m) for m in others_hold)


def waits_for_start(head_model: str, free_hold: Sequence[Iterable[str]], starting_hold: Sequence[Iterable[str]],
                    free_host: Sequence[Iterable[str]] = ()) -> bool:
    """Whether the head waits for a starting replica that brings its checkpoint: no free replica
    holds it, on its device or in host memory (a copy from there is quicker than a start)."""
    return held_elsewhere(head_model, [*free_hold, *free_host], starting_hold)


def pass_over_head(head_model: str, free_hold: Sequence[Iterable[str]], busy_hold: Sequence[Iterable[str]],
                   starting_hold: Sequence[Iterable[str]], own: Iterable[str],
                   free_host: Sequence[Iterable[str]] = ()) -> list[Callable[[str], bool]] | None:
    """Which requests a free replica holding ``own`` may take past the queue's head (within
    :data:`HOLDER_LOOK_AHEAD`; the first test that finds one wins), or None: the head goes first,
    as the fair order says.

    - The head's checkpoint is on a free replica, or on none: None (it goes there, or loads).
    - It is on a replica that is still starting (told to preload it) and in no free replica's host
      memory (``free_host``): the head waits for it, and the free replica takes a request for its own
      checkpoints, else one whose checkpoint no starting replica brings (that one loads here); if
      there is none, it stays free.
    - It is only on busy replicas: the free replica takes a request for its own checkpoints; if there
      is none, None: the head loads here, so a hot checkpoint spreads instead of queueing.
    """
    if not held_elsewhere(head_model, free_hold, [*busy_hold, *starting_hold]):
        return None
    mine = set(own)
    if waits_for_start(head_model, free_hold, starting_hold, free_host):
        coming = {model for models in starting_hold for model in models}
        return [lambda model: model in mine, lambda model: model not in coming]
    return [lambda model: model in mine]


def pass_over(head_model: str, free: Sequence[tuple[K, Iterable[str], Iterable[str]]],
              busy_hold: Sequence[Iterable[str]], starting_hold: Sequence[Iterable[str]],
              take: Callable[[Callable[[str], bool]], J | None]) -> tuple[str, K | None, J | None]:
    """The rules of :func:`pass_over_head` over the free replicas, each ``(key, device, host)``
    checkpoints; ``take(test)``: the first request within the look-ahead whose checkpoint passes
    ``test``, out of the queue (None: none). Returns (TOOK, the replica, the request), (IDLE, None,
    None: the head waits for a starting replica, nothing else goes now) or ("", None, None: dispatch
    in order). The live dispatcher and the simulator both run this."""
    free_hold, free_host = [device for _, device, _ in free], [host for _, _, host in free]
    for key, device, _ in free:
        tests = pass_over_head(head_model, free_hold, busy_hold, starting_hold, device, free_host)
        if tests is None:
            return "", None, None
        job = next((job for test in tests if (job := take(test)) is not None), None)
        if job is not None:
            return TOOK, key, job
    return (IDLE if waits_for_start(head_model, free_hold, starting_hold, free_host) else ""), None, None


def waits_for_read(model: str, reading: Collection[str], free_hold: Iterable[Collection[str]]) -> bool:
    """Whether a request for ``model`` waits in the queue for its checkpoint's read from disk: the
    read is under way (``reading``) and no free replica holds the checkpoint (``free_hold``: each
    free replica's checkpoints on its device and in its own host memory, a copy away)."""
    return bool(model) and model in reading and not any(model in held for held in free_hold)


def pass_over_reads(head_model: str, reading: Collection[str], free_hold: Sequence[Iterable[str]],
                    take: Callable[[Callable[[str], bool]], J | None]) -> tuple[str, J | None]:
    """While the queue's head waits for its checkpoint's read (:func:`waits_for_read`): (TOOK, the
    first request within the look-ahead that does not, out of the queue; the caller places it), or
    (IDLE, None): every one waits for a read, nothing goes until one ends. ("", None) when the head
    does not wait: dispatch as the other rules say."""
    holds = [set(held) for held in free_hold]
    if not waits_for_read(head_model, reading, holds):
        return "", None
    job = take(lambda model: not waits_for_read(model, reading, holds))
    return (TOOK, job) if job is not None else (IDLE, None)


def preload_choice(queued: Sequence[str], held: Iterable[Iterable[str]], default: str) -> str:
    """``queued``: the checkpoint of each queued request, oldest first ("" for the default);
    ``held``: each running or starting replica's checkpoints on its device."""
    demand = Counter(model or default for model in queued)
    if not demand:
        return default
    holders = Counter(model for models in held for model in set(models))
    first_seen = {model: k for k, model in reversed(list(enumerate(model or default for model in queued)))}
    return max(demand, key=lambda m: (demand[m] / (1 + holders[m]), -first_seen[m]))
