"""The ingress's prefetch (``model.prefetch``): a request for a checkpoint that no worker replica
holds starts the read of that checkpoint's files into the node's page cache when it arrives; and its
pre-warm (``model.prewarm_days``): every ``period_s`` the checkpoints that the past days' requests
predict for the coming ``horizon_s`` are read too (scheduler/prewarm.py decides, from the requests
this ingress has seen and the history saved before it).

The dispatcher says when (:attr:`serve.dispatcher.Dispatcher.on_unheld`); this module does the read,
on one background thread so the event loop never waits for a disk: real checkpoints through
:func:`models.page_cache.warm` (read through once), the simulated backend through its simulated page
cache. A checkpoint being read, or in the node's memory already, is not read again: the simulated
cache says what it holds (as the simulator's node pool does); a real checkpoint whose read was asked
for within ``REPEAT_S`` is taken to be there. The pre-warm's history
outlives the ingress in a file (``model.prewarm_history``): a restart does not lose the week it learns
from.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import time
from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from models.page_cache import SimulatedPageCache, checkpoint_directory, warm
from scheduler.prewarm import PrewarmConfig, prewarm_plan
from serve.metrics import PREFETCHES
from serve.settings import AppSettings
from serve.worker_setup import model_spec, page_cache_root, simulation_profile

log = logging.getLogger("ray.serve")
#: A real checkpoint whose read was asked for this recently is not read again (the simulated page
#: cache is asked instead: in a compressed replay checkpoints come and go far faster than this).
REPEAT_S = 30.0
#: How long a real checkpoint's prefetch is taken to stay in the page cache (the kernel keeps no
#: promise: under memory pressure it may drop it sooner, and a load then reads from disk as without
#: the prefetch).
KEPT_S = 600.0


def prefetches(settings: AppSettings) -> bool:
    """Whether the ingress prefetches: a catalog that does not all fit on a replica's device, the
    dispatcher placing by checkpoint, and (simulated) a page cache to fill."""
    model = settings.model
    if not (model.prefetch and settings.queue.dispatch and settings.queue.model_aware):
        return False
    if not (model.catalog and 0 < model.resident_models < len(model.served)):
        return False
    return model.backend == "diffusers" or settings.simulation.page_cache_checkpoints > 0


def prewarm_config(settings: AppSettings) -> PrewarmConfig:
    """The pre-warm's config; a compressed simulated replay (``simulation.time_scale`` k) runs its
    day, window and period k× faster, as its arrivals."""
    k = settings.simulation.time_scale if settings.model.backend == "simulated" else 1.0
    return PrewarmConfig(days=settings.model.prewarm_days).compressed(k)


def history_file(settings: AppSettings, app_name: str) -> Path | None:
    """Where the pre-warm's history is kept (``model.prewarm_history``); None: in memory only."""
    where = settings.model.prewarm_history
    if settings.model.prewarm_days == 0 or where == "none" or (where == "auto" and settings.model.backend == "simulated"):
        return None
    return Path.home() / ".cache" / "sdserve" / f"prewarm-{app_name}.json" if where == "auto" else Path(where).expanduser()


def load_history(path: Path | None, served: Iterable[str], since: float) -> dict[str, deque[float]]:
    """The history saved at ``path``: the served checkpoints' request times from ``since`` on. A
    missing or unreadable file is an empty history (the pre-warm learns again), never a failed start."""
    if path is None or not path.exists():
        return {}
    try:
        saved = json.loads(path.read_text())["uses"]
        names = set(served)
        history = {name: deque(t for t in map(float, times) if t >= since) for name, times in saved.items()
                   if name in names}
    except (OSError, ValueError, KeyError, TypeError) as error:
        log.warning("pre-warm history %s unreadable (%s): starting without it", path, error)
        return {}
    log.info("pre-warm history: %d requests of %d checkpoints from %s", sum(map(len, history.values())),
             len(history), path)
    return {name: uses for name, uses in history.items() if uses}


def save_history(path: Path, history: dict[str, list[float]]) -> None:
    """Write ``history`` to ``path`` whole or not at all (a reader never sees half a file)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(path.name + ".partial")
        partial.write_text(json.dumps({"uses": history}))
        os.replace(partial, path)
    except OSError as error:
        log.warning("pre-warm history not saved to %s: %s", path, error)


class Prefetcher:
    def __init__(self, settings: AppSettings, app_name: str) -> None:
        self.settings, self.app_name = settings, app_name
        self._asked: dict[str, float] = {}  # checkpoint → when its read was last asked for (real ones: REPEAT_S)
        self._warmed: dict[str, float] = {}  # real checkpoint → when its files were last read ahead
        self.prewarm = prewarm_config(settings)
        self._history_file = history_file(settings, app_name)
        #: checkpoint → its requests' arrival times (wall clock), the saved ones first
        self._uses = load_history(self._history_file, settings.model.served, time.time() - self._look_back_s())
        self._prewarming: asyncio.Task[None] | None = None
        #: the checkpoints replicas hold on their devices (the dispatcher's view): not read ahead
        self.on_device: Callable[[], Iterable[str]] = tuple
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="prefetch")
        #: checkpoints whose read was asked for and has not ended → that read's number (an end
        #: meant for an earlier read of the same checkpoint does not end a later one)
        self._reading: dict[str, int] = {}
        self._reads = 0
        #: called on the event loop when a read ends (the dispatcher looks at its queue again)
        self.on_read_ended: Callable[[], None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.simulated: SimulatedPageCache | None = None
        if settings.model.backend == "simulated":
            root = page_cache_root(app_name)
            shutil.rmtree(root, ignore_errors=True)  # a new application: its node's cache starts cold
            self.simulated = simulation_profile(settings, str(root)).page_cache()

    def __call__(self, name: str) -> None:
        """Prefetch the served checkpoint ``name`` in the background, unless it is being read or in
        the node's memory already."""
        if name not in self.settings.model.served or name in self._reading or self._in_memory_already(name):
            return
        self._asked[name] = time.monotonic()
        PREFETCHES.labels(self.app_name, name).inc()
        try:
            self._loop = asyncio.get_running_loop()
        except RuntimeError:  # called off the loop (tests): the read's end reaches no dispatcher
            self._loop = None
        self._reads += 1
        self._reading[name] = self._reads  # before the dispatcher's next look, which follows this call
        self._pool.submit(self._read, name, self._reads)

    def _in_memory_already(self, name: str) -> bool:
        """The simulated page cache holds ``name`` (read, or being read by a replica's load; asking
        counts as no use, as in the simulator); a real checkpoint's read was asked for within
        ``REPEAT_S`` (the kernel cannot be asked)."""
        if self.simulated is not None:
            return bool(self.simulated.cached((name,)))
        return time.monotonic() - self._asked.get(name, -REPEAT_S) < REPEAT_S

    def reading(self) -> frozenset[str]:
        """The checkpoints being read into the node's memory now: a request for one waits for it in
        the queue (``queue.wait_for_reads``)."""
        return frozenset(self._reading)

    def _ended(self, name: str, number: int) -> None:
        """On the event loop: read ``number`` of ``name`` is over (done, failed or dropped)."""
        self._forget(name, number)
        if self.on_read_ended is not None:
            self.on_read_ended()

    def _forget(self, name: str, number: int) -> None:
        """``name`` is no longer being read, if read ``number`` is still its latest."""
        if self._reading.get(name) == number:
            del self._reading[name]

    def _end_in(self, name: str, seconds: float, number: int) -> None:
        """From the read's thread: read ``number`` of ``name`` ends ``seconds`` from now."""
        loop = self._loop
        if loop is None or loop.is_closed():
            self._forget(name, number)
        else:
            loop.call_soon_threadsafe(lambda: loop.call_later(max(0.0, seconds), self._ended, name, number))

    def _end_dropped_reads(self, cache: SimulatedPageCache) -> None:
        """From the read's thread, after a simulated read: the reads whose checkpoint the page cache
        dropped before they ended (their slot went to a newer read) end now, so that the requests
        waiting for them go to a replica and load from disk at once, as in the simulator."""
        reading = dict(self._reading)
        held = cache.cached(reading)
        for name, number in reading.items():
            if name not in held:
                self._end_in(name, 0.0, number)

    def arrived(self, name: str) -> None:
        """A request for ``name`` queued: the pre-warm's history (the days it looks back, no more)."""
        now, uses = time.time(), self._uses.setdefault(name, deque())
        uses.append(now)
        while uses and now - uses[0] > self._look_back_s():
            uses.popleft()

    def _look_back_s(self) -> float:
        return self.prewarm.days * self.prewarm.day_s + self.prewarm.horizon_s

    def start(self) -> None:
        """Run the pre-warm every ``period_s`` on the running event loop (RuntimeError: none yet)."""
        if self._prewarming is None and self.prewarm.days > 0:
            self._prewarming = asyncio.get_running_loop().create_task(self._prewarm_forever())

    async def _prewarm_forever(self) -> None:
        while True:
            await asyncio.sleep(self.prewarm.period_s)
            try:
                self.prewarm_now()
            except Exception as error:  # noqa: BLE001 - a failed plan costs its reads only
                log.warning("pre-warm failed: %s", error)

    def prewarm_now(self) -> list[str]:
        """Make the pre-warm's plan now and start its reads; returns the checkpoints read. The
        simulated page cache's contents and size are known; a real node's page cache is the kernel's,
        so there the plan counts what was read ahead in the last ``KEPT_S`` and reads at most
        ``max_reads``."""
        cached = self.in_memory()
        capacity = (self.settings.simulation.page_cache_checkpoints if self.simulated is not None
                    else len(cached) + self.prewarm.max_reads)
        history = {name: list(uses) for name, uses in self._uses.items()}
        if self._history_file is not None:
            self._pool.submit(save_history, self._history_file, history)
        plan = prewarm_plan(history, time.time(), cached, capacity, self.on_device(), self.prewarm)
        if plan.keep and self.simulated is not None:
            self._pool.submit(lambda: [self.simulated.ready_at(name) for name in plan.keep])
        for name in plan.read:
            self._asked.pop(name, None)  # read now, even if asked for moments ago and dropped since
            self(name)
        if plan.read:
            log.info("pre-warm: %s predicted for the coming %.0f s", ", ".join(plan.read), self.prewarm.horizon_s)
        return plan.read

    def in_memory(self) -> frozenset[str]:
        """The checkpoints whose files are in the node's memory or being read into it: the
        simulated page cache's, or the real checkpoints whose files were read ahead in the last
        ``KEPT_S`` (not one that has no files on this node yet). The
        dispatcher counts them as in every free replica's host memory (a load from there is quick),
        as the simulator's node pool does."""
        if self.simulated is not None:
            return frozenset(self.simulated.cached(self.settings.model.served))
        now = time.monotonic()
        return frozenset(name for name, warmed in list(self._warmed.items()) if now - warmed < KEPT_S)

    def _read(self, name: str, number: int) -> None:
        ends_in = 0.0  # the simulated page cache's read ends at a time it keeps; a real one here
        try:
            if self.simulated is not None:
                if self.simulated.read(name):
                    log.info("prefetch: %s into the simulated page cache", name)
                    self._end_dropped_reads(self.simulated)
                ends_in = (self.simulated.ready_at(name, use=False) or 0.0) - self.simulated.clock()
                return
            directory = checkpoint_directory(model_spec(self.settings, self.settings.model.served[name]))
            if directory is None:
                log.info("prefetch: %s has no files on this node yet; a replica's load fetches them", name)
                return
            log.info("prefetch: %s, %.2f GB into the page cache", name, warm(Path(directory)) / 1e9)
            self._warmed[name] = time.monotonic()
        except Exception as error:  # noqa: BLE001 - a failed prefetch costs its speed-up only
            log.warning("prefetch of %s failed: %s", name, error)
        finally:
            self._end_in(name, ends_in, number)
