"""Poll the fleet while a workload runs: replicas (running and total), outstanding requests, and
how long each replica took from being asked for to running.

Replica states come from the Serve controller when the benchmark is a Ray driver (it started the
server); with ``--url`` only the client-side count of outstanding requests is known.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable
from typing import Any

from serve.fleet import RUNNING_STATES, STARTING_STATES, replica_counts, state_name
from serve.settings import WORKER_DEPLOYMENT


class StartTimes:
    """Each replica's start, from polled states: first seen starting → first seen running. One
    seen running at once (up before the polls began) has no start; one stopped before it ran has
    none either. Durations come out in the order the replicas were first seen."""

    def __init__(self) -> None:
        self._asked: dict[str, float] = {}  # replica → first seen starting
        self._started: dict[str, float] = {}  # replica → its start's seconds
        self._seen: set[str] = set()

    def observe(self, t: float, replicas: Iterable[tuple[str, str]]) -> None:
        """``replicas``: (id, state name) at poll time ``t``."""
        for rid, state in replicas:
            first = rid not in self._seen
            self._seen.add(rid)
            if state in STARTING_STATES and first:
                self._asked[rid] = t
            elif state in RUNNING_STATES and rid in self._asked and rid not in self._started:
                self._started[rid] = t - self._asked[rid]

    def durations(self) -> list[float]:
        return [self._started[rid] for rid in self._asked if rid in self._started]


class FleetMonitor:
    def __init__(self, app_name: str | None, outstanding: Any, interval_s: float = 0.25) -> None:
        self.app_name = app_name
        self.outstanding = outstanding  # a callable returning requests sent and not yet answered
        self.interval_s = interval_s
        self.samples: list[dict[str, float]] = []
        self.starts = StartTimes()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self.t0 = time.monotonic()
        self._controller: Any = None

    def _replica_states(self) -> list[tuple[str, str]]:
        """(id, state) of the worker deployment's replicas, from the controller's details."""
        if self.app_name is None:
            return []
        import ray
        from ray.serve._private.constants import SERVE_CONTROLLER_NAME, SERVE_NAMESPACE

        if self._controller is None:
            self._controller = ray.get_actor(SERVE_CONTROLLER_NAME, namespace=SERVE_NAMESPACE)
        details = ray.get(self._controller.get_serve_instance_details.remote(), timeout=10)
        app = (details.get("applications") or {}).get(self.app_name) or {}
        deployment = (app.get("deployments") or {}).get(WORKER_DEPLOYMENT) or {}
        return [(r["replica_id"], state_name(r.get("state", ""))) for r in deployment.get("replicas") or []]

    def _loop(self) -> None:
        while not self._stop.is_set():
            t = time.monotonic() - self.t0
            states = self._replica_states()
            self.starts.observe(t, states)
            counts = replica_counts(state for _, state in states)
            self.samples.append({"t": t, "running": counts.running, "replicas": counts.total,
                                 "outstanding": self.outstanding()})
            self._stop.wait(self.interval_s)

    def start(self, t0: float) -> "FleetMonitor":
        self.t0 = t0
        self._thread.start()
        return self

    def stop(self) -> list[dict[str, float]]:
        self._stop.set()
        self._thread.join()
        return self.samples
