"""Two asyncio patterns the worker and the ingress share: reading a queue of events while a
piece of work runs, and waiting out a piece of work through repeated cancellation."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any, TypeVar

T = TypeVar("T")


async def until_done(events: asyncio.Queue[T], work: asyncio.Future[Any]) -> AsyncIterator[T]:
    """Each item put on ``events`` as it arrives, until ``work`` is done; then what is left."""
    while True:
        getter = asyncio.ensure_future(events.get())
        done, _ = await asyncio.wait({getter, work}, return_when=asyncio.FIRST_COMPLETED)
        if getter not in done:
            getter.cancel()
            break
        yield getter.result()
    while not events.empty():
        yield events.get_nowait()


async def wait_out(work: asyncio.Future[Any]) -> None:
    """Return only once ``work`` is done, however often this task is cancelled meanwhile: a replica
    gives up its slot only when the pipeline thread has let go of it."""
    while not work.done():
        try:
            await asyncio.shield(work)
        except asyncio.CancelledError:
            continue
        except Exception:
            break
