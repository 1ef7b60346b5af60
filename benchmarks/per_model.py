"""The naive per-model fleet: one deployment per checkpoint, each sized by Ray's default policy
(SIMULATION; baseline (c) of the model-aware comparison).

Each checkpoint's requests go to their own deployment, whose replicas hold only that checkpoint (its
cold start loads it: no checkpoint load ever, LoRAs still load; with a cold start in parts the
node's memory keeps it after its first read) and which scales by Ray's default policy with the given
config's knobs. By default the deployments are simulated apart, each with the config's own
``max_replicas`` as its cap: the GPUs they share are **not** capped together, which favours this
baseline (a deployment never waits for another's GPU). With ``shared_gpus`` they run on one clock
and share the config's GPUs (``FleetSpec.gpu_slots``), as deployments on one cluster do: a replica
waits PENDING while the others hold every GPU, and one let go goes to the replica that has waited
longest, in any deployment (scheduler/simulation/gpus.py); warm replicas at the start go to the
most used checkpoints' deployments, as many as the GPUs hold. Their runs are then put together as
one fleet's (:func:`merge_runs`), so the fleet is summarised as any other run is, and the result
says how many replicas ran at once at the peak: how many GPUs that would have taken.
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from benchmarks.sim_config import SimTarget, a10_service_model
from scheduler.simulation.fleet import Simulator
from scheduler.simulation.gpus import GpuSlots, simulate_together
from scheduler.simulation.records import SimResult


@dataclass(frozen=True)
class PerModelRun:
    """The per-model fleet's run: its deployments' runs as one fleet's."""

    result: SimResult
    deployments: int
    alive_at_start: int  # replicas holding a GPU when scoring began, over all deployments

    @property
    def peak_replicas(self) -> int:
        """Replicas holding a GPU at once, at the peak over all deployments."""
        return max((replicas for _, replicas, _, _ in self.result.samples), default=0)


def simulate_per_model(target: SimTarget, arrivals: list[Any], score_from_s: float = 0.0,
                       shared_gpus: bool = False) -> PerModelRun:
    """One deployment per checkpoint named in ``arrivals``, each ``target``'s config, scored from
    ``score_from_s`` on (what runs before it is warm-up); ``shared_gpus``: they share its GPU cap."""
    by_model: dict[str, list[Any]] = defaultdict(list)
    for arrival in arrivals:
        by_model[arrival.model].append(arrival)
    by_use = sorted(by_model, key=lambda model: -len(by_model[model]))  # the most used first
    gpus = GpuSlots(target.spec.gpu_slots if shared_gpus else None)
    warm_left = gpus.slots  # None: every deployment starts with its initial replicas
    # with a cold start in parts, the node's page cache keeps the deployment's one checkpoint once
    # read, and every start after the first reads it from memory (shared with the other
    # deployments, it might not stay: this favours the baseline too)
    in_parts = target.spec.cold_start_overhead_s is not None
    service = a10_service_model()
    sims = []
    for model in by_use:
        overrides = {"models_per_replica": 1, "default_model": model, "model_preload": False,
                     "host_models_per_node": int(in_parts), "host_models_per_replica": 0}
        if warm_left is not None:  # warm at the start only while the GPUs last
            overrides["initial_replicas"] = min(target.spec.initial_replicas, warm_left)
            warm_left -= overrides["initial_replicas"]
        deployment = target.with_overrides(spec=overrides)
        sims.append(Simulator(deployment.requests(by_model[model]), deployment.spec, service, deployment.policy(),
                              gpus if shared_gpus else None))
    results = simulate_together(sims, gpus) if shared_gpus else [sim.run() for sim in sims]
    alive = sum(result.alive_at(score_from_s) if score_from_s > 0 else sim.spec.initial_replicas
                for sim, result in zip(sims, results))
    runs = [result.from_time(score_from_s) for result in results]
    return PerModelRun(merge_runs(runs, f"{target.name}, per checkpoint"), len(by_model), alive)


def merge_runs(runs: list[SimResult], policy: str) -> SimResult:
    """Fleets run apart as one: their requests in arrival order, their replicas (numbered anew, each
    paid until its own fleet's last answer, as its run pays it) and their samples summed over time.
    A run scored from a time on has lost the replicas stopped before it, so its ids have gaps: each
    run's are moved past the largest id so far, never onto another run's."""
    records, replicas, changes = [], [], []
    for n, run in enumerate(runs):
        offset = max((r.id for r in replicas), default=-1) + 1
        replicas += [dataclasses.replace(r, id=offset + r.id, stopped_s=run.end_s if r.stopped_s is None else r.stopped_s)
                     for r in run.replicas]
        records += [dataclasses.replace(r, replica=None if r.replica is None else offset + r.replica) for r in run.records]
        changes += [(t, n, counts) for t, *counts in run.samples] + [(run.end_s, n, [0, 0, 0])]  # all stopped at its end
    records.sort(key=lambda r: r.arrival_s)
    records = [dataclasses.replace(r, index=i) for i, r in enumerate(records)]
    samples: list[tuple[float, int, int, int]] = []
    last: dict[int, list[int]] = defaultdict(lambda: [0, 0, 0])
    total = [0, 0, 0]
    for t, n, counts in sorted(changes, key=lambda change: change[0]):
        total = [sum_ + new - old for sum_, new, old in zip(total, counts, last[n])]
        last[n] = counts
        point = (t, *total)
        if samples and samples[-1][0] == t:
            samples[-1] = point  # several fleets changed at this instant: the last sum holds
        else:
            samples.append(point)
    return SimResult(policy, records, replicas, samples, max((run.end_s for run in runs), default=0.0),
                     sum(run.policy_calls for run in runs))
