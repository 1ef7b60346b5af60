"""The ingress's prefetch (``model.prefetch``): a request for a checkpoint that no worker replica
holds starts the read of that checkpoint's files into the node's page cache when it arrives.

The dispatcher says when (:attr:`serve.dispatcher.Dispatcher.on_unheld`); this module does the read,
on one background thread so the event loop never waits for a disk: real checkpoints through
:func:`models.page_cache.warm` (a kernel hint), the simulated backend through its simulated page
cache. A checkpoint asked for again within ``REPEAT_S`` is not read again.
"""

from __future__ import annotations

import logging
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from models.page_cache import SimulatedPageCache, checkpoint_directory, warm
from serve.metrics import PREFETCHES
from serve.settings import AppSettings
from serve.worker_setup import model_spec, page_cache_root, simulation_profile

log = logging.getLogger("ray.serve")
#: A checkpoint prefetched this recently is not prefetched again.
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


class Prefetcher:
    def __init__(self, settings: AppSettings, app_name: str) -> None:
        self.settings, self.app_name = settings, app_name
        self._asked: dict[str, float] = {}  # checkpoint → when last prefetched
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="prefetch")
        self.simulated: SimulatedPageCache | None = None
        if settings.model.backend == "simulated":
            root = page_cache_root(app_name)
            shutil.rmtree(root, ignore_errors=True)  # a new application: its node's cache starts cold
            self.simulated = simulation_profile(settings, str(root)).page_cache()

    def __call__(self, name: str) -> None:
        """Prefetch the served checkpoint ``name`` in the background."""
        now = time.monotonic()
        if now - self._asked.get(name, -REPEAT_S) < REPEAT_S or name not in self.settings.model.served:
            return
        self._asked[name] = now
        PREFETCHES.labels(self.app_name, name).inc()
        self._pool.submit(self._read, name)

    def in_memory(self) -> frozenset[str]:
        """The checkpoints whose files are in the node's memory or being read into it: the
        simulated page cache's, or the real checkpoints prefetched in the last ``KEPT_S``. The
        dispatcher counts them as in every free replica's host memory (a load from there is quick),
        as the simulator's node pool does."""
        if self.simulated is not None:
            return frozenset(self.simulated.cached(self.settings.model.served))
        now = time.monotonic()
        return frozenset(name for name, asked in self._asked.items() if now - asked < KEPT_S)

    def _read(self, name: str) -> None:
        try:
            if self.simulated is not None:
                if self.simulated.read(name):
                    log.info("prefetch: %s into the simulated page cache", name)
                return
            directory = checkpoint_directory(model_spec(self.settings, self.settings.model.served[name]))
            if directory is None:
                log.info("prefetch: %s has no files on this node yet; a replica's load fetches them", name)
                return
            log.info("prefetch: %s, %.2f GB into the page cache", name, warm(Path(directory)) / 1e9)
        except Exception as error:  # noqa: BLE001 - a failed prefetch costs its speed-up only
            log.warning("prefetch of %s failed: %s", name, error)
