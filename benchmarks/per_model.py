"""The naive per-model fleet: one deployment per checkpoint, each sized by Ray's default policy
(SIMULATION; baseline (c) of the model-aware comparison).

Each checkpoint's requests go to their own deployment, whose replicas hold only that checkpoint
(its cold start loads it: no checkpoint load ever, LoRAs still load) and which scales by Ray's
default policy with the given config's knobs. The deployments are simulated apart, each with the
config's own ``max_replicas`` as its cap: the GPUs they share are **not** capped together, which
favours this baseline (a deployment never waits for another's GPU). The result says how many
replicas ran at once at the peak, so a reader sees how many GPUs that would have taken.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import numpy as np

from benchmarks.sim_config import SimTarget, a10_service_model
from scheduler.outcomes import Outcome
from scheduler.simulation.fleet import simulate


def simulate_per_model(target: SimTarget, arrivals: list[Any], slo_s: float, score_from_s: float = 0.0) -> dict[str, Any]:
    """One deployment per checkpoint named in ``arrivals``, each ``target``'s config; a summary
    shaped like the simulator's (SLO attainment, replica-seconds, p50/p99, cold starts), plus the
    peak of replicas holding a GPU at once over all deployments; scored from ``score_from_s`` on
    (what runs before it is warm-up)."""
    by_model: dict[str, list[Any]] = defaultdict(list)
    for arrival in arrivals:
        by_model[arrival.model].append(arrival)
    service = a10_service_model()
    latencies: list[float] = []
    replica_seconds, starts, answered, alive = 0.0, 0, 0, 0
    steps: dict[float, int] = defaultdict(int)  # time → change in replicas holding a GPU
    for model, own in by_model.items():
        deployment = target.with_overrides(spec={"models_per_replica": 1, "default_model": model, "model_preload": False,
                                                 "host_models_per_node": 0, "host_models_per_replica": 0})
        result = simulate(deployment.requests(own), deployment.spec, service, deployment.policy())
        alive += result.alive_at(score_from_s) if score_from_s > 0 else deployment.spec.initial_replicas
        result = result.from_time(score_from_s)
        answered += len(result.records)
        latencies += [r.latency_s for r in result.records if r.outcome == Outcome.OK]
        replica_seconds += result.replica_seconds()
        starts += result.replica_starts()
        previous = 0
        for t, holding, _, _ in result.samples:
            steps[t] += holding - previous
            previous = holding
        steps[result.end_s] -= previous  # what is left stops after the last answer
    running, peak = 0, 0
    for t in sorted(steps):
        running += steps[t]
        peak = max(peak, running)
    ok = np.array(latencies)
    return {"slo_attainment": float(np.sum(ok <= slo_s)) / answered if answered else 0.0,
            "replica_seconds": replica_seconds, "replica_starts": starts, "deployments": len(by_model),
            "peak_replicas": peak, "alive_at_start": alive,
            "latency_s": {"p50": float(np.percentile(ok, 50)) if len(ok) else None,
                          "p99": float(np.percentile(ok, 99)) if len(ok) else None}}
