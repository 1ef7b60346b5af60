"""Poll the fleet while a workload runs: replicas (running and total) and outstanding requests.

Replica counts come from ``serve.status()`` when the benchmark is a Ray driver (it started the
server); with ``--url`` only the client-side count of outstanding requests is known.
"""

from __future__ import annotations

import threading
import time
from typing import Any


class FleetMonitor:
    def __init__(self, app_name: str | None, outstanding: Any, interval_s: float = 0.25) -> None:
        self.app_name = app_name
        self.outstanding = outstanding  # a callable returning requests sent and not yet answered
        self.interval_s = interval_s
        self.samples: list[dict[str, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self.t0 = time.monotonic()

    def _replicas(self) -> tuple[int, int]:
        if self.app_name is None:
            return 0, 0
        from ray import serve

        from serve.fleet import replica_counts
        from serve.settings import WORKER_DEPLOYMENT

        app = serve.status().applications.get(self.app_name)
        if app is None or WORKER_DEPLOYMENT not in app.deployments:
            return 0, 0
        counts = replica_counts(app.deployments[WORKER_DEPLOYMENT].replica_states)
        return counts.running, counts.total

    def _loop(self) -> None:
        while not self._stop.is_set():
            running, total = self._replicas()
            self.samples.append({"t": time.monotonic() - self.t0, "running": running,
                                 "replicas": total, "outstanding": self.outstanding()})
            self._stop.wait(self.interval_s)

    def start(self, t0: float) -> "FleetMonitor":
        self.t0 = t0
        self._thread.start()
        return self

    def stop(self) -> list[dict[str, float]]:
        self._stop.set()
        self._thread.join()
        return self.samples
