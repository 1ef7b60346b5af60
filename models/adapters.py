"""The LoRA adapters one pipeline keeps loaded, and what loading one takes here.

Both backends (the diffusers pipeline and the simulated one) keep adapters the same way: a request's
adapters are loaded into its checkpoint's pipeline on first use, kept while they are used, and the
least recently used one beyond ``resident`` is deleted (never one the call needs). A load takes
seconds (production: p50 4.4 s), so the deadline rules count it before a call starts: the adapters
a request would load × the mean of the loads measured on this replica (0 until one was: no request
is refused on a guess). A catalog shares one :class:`LoadTiming` among its checkpoints' pipelines,
so a checkpoint not loaded yet is priced by what the others measured.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Sequence

from scheduler.load_timing import LoadTiming

__all__ = ["LoadedAdapters", "quiet_foreign_missing_keys"]

#: The logger transformers' PEFT integration reports a text encoder's adapter load on.
TRANSFORMERS_PEFT_LOGGER = "transformers.integrations.peft"


class ForeignMissingKeys(logging.Filter):
    """Drops transformers' loading report when the keys it calls missing are not the loaded adapter's.

    Loading a second adapter into a text encoder (transformers 5, diffusers 0.42), transformers logs
    every parameter the adapter's file does not hold (the wrapped base layers, the other adapters,
    the embeddings) as MISSING, "newly initialized". None is touched (tests/test_catalog.py compares
    them before and after), so a replica with several adapters would log a false alarm of dozens of
    lines on every load. A report naming a key of the adapter being loaded is a real one and passes.
    """

    def __init__(self, adapter: str) -> None:
        super().__init__()
        self.adapter = adapter

    def filter(self, record: logging.LogRecord) -> bool:
        lines = [line for line in record.getMessage().splitlines() if "MISSING" in line and "|" in line]
        return not lines or any(f".{self.adapter}." in line for line in lines)


@contextlib.contextmanager
def quiet_foreign_missing_keys(adapter: str) -> Iterator[None]:
    """While ``adapter`` loads: transformers' false MISSING reports dropped (:class:`ForeignMissingKeys`)."""
    logger, quiet = logging.getLogger(TRANSFORMERS_PEFT_LOGGER), ForeignMissingKeys(adapter)
    logger.addFilter(quiet)
    try:
        yield
    finally:
        logger.removeFilter(quiet)


class LoadedAdapters:
    """One pipeline's adapters, least recently used first, at most ``resident`` kept (0: all)."""

    def __init__(self, resident: int = 0, timing: LoadTiming | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.resident = resident
        self.timing = timing or LoadTiming()  # a catalog gives its pipelines one to share
        self.names: OrderedDict[str, None] = OrderedDict()
        self.clock = clock

    def missing(self, loras: Iterable[tuple[str, float]]) -> int:
        """How many of ``loras`` a call would load first."""
        return len({name for name, _ in loras} - self.names.keys())

    def expected_load_s(self, loras: Iterable[tuple[str, float]]) -> float:
        return self.timing.expected_s(self.missing(loras))

    def load(self, loras: Sequence[tuple[str, float]], load_one: Callable[[str], object],
             delete_one: Callable[[str], object] = lambda name: None) -> float:
        """Load those of ``loras`` not here (``load_one`` each) and mark them all used now, then
        delete the least recently used beyond ``resident`` (never one ``loras`` needs); the seconds
        spent loading (also added to the timing)."""
        missing, started = self.missing(loras), self.clock()
        for name, _ in loras:
            if name not in self.names:
                load_one(name)
            self.names[name] = None
            self.names.move_to_end(name)
        seconds = self.clock() - started if missing else 0.0
        self.timing.add(missing, seconds)
        needed = {name for name, _ in loras}
        beyond = len(self.names) - max(self.resident, len(needed)) if self.resident else 0
        for name in [name for name in self.names if name not in needed][:max(0, beyond)]:
            del self.names[name]
            delete_one(name)
        return seconds

    def clear(self) -> None:
        self.names.clear()

    def __bool__(self) -> bool:
        return bool(self.names)

    def __iter__(self) -> Iterator[str]:
        return iter(self.names)
