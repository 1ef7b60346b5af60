"""The cost bounds beside a simulation's results (SIMULATION): busy time, the lower bound and the
offline schedule for each config's mode, GPU cap, cold start and SLO, and every result's cost as a
ratio to the lower bound (``scheduler/simulation/bounds.py`` says what each is)."""

from __future__ import annotations

import time
from typing import Any

from scheduler.simulation.bounds import (
    best_offline_schedule,
    busy_time,
    chain_lower_bound,
    jobs_served,
    request_jobs,
)
from scheduler.simulation.records import SimResult
from scheduler.simulation.workload import FleetSpec, ServiceModel, SimRequest


def least_cold_start(spec: FleetSpec) -> float:
    return max(0.0, spec.cold_start_s - spec.cold_start_jitter_s)


def mode_key(spec: FleetSpec) -> str:
    """What the bounds depend on besides the trace and the SLO."""
    return (f"batch {spec.max_batch_size}, {spec.gpu_slots} GPUs, {spec.initial_replicas} warm, "
            f"cold start {least_cold_start(spec):g}s")


def bounds_row(requests: list[SimRequest], service: ServiceModel, spec: FleetSpec, slo_s: float,
               warm: int | None = None) -> dict[str, Any]:
    """Busy time, the lower bound and the offline schedule for ``spec``'s mode, GPUs, cold start and
    replicas warm at time 0 (``warm``; default the spec's initial replicas; a part scored after a
    warm-up may find any number up to the GPUs running) (the offline schedule
    runs each request in a call of its own, which any mode may do: in the batched mode it is an upper
    bound, not a batched schedule)."""
    started = time.perf_counter()
    jobs = request_jobs(requests, service, slo_s, spec.max_batch_size)
    cold = least_cold_start(spec)
    warm = spec.initial_replicas if warm is None else warm
    lower = chain_lower_bound(jobs, cold, warm)
    offline = best_offline_schedule(request_jobs(requests, service, slo_s), cold, spec.gpu_slots, warm)
    return {"max_batch_size": spec.max_batch_size, "gpus": spec.gpu_slots, "cold_start_s": cold, "warm_at_start": warm,
            "slo_s": slo_s, "busy_seconds": busy_time(jobs), "lower_bound_replica_seconds": lower,
            "offline_replica_seconds": offline.replica_seconds, "offline_replicas": offline.replicas,
            "offline_cold_starts": offline.cold_starts, "offline_late": offline.late,
            "offline_over_lower_bound": offline.replica_seconds / lower if lower else None,
            "seconds": time.perf_counter() - started}


def own_lower_bound(result: SimResult, spec: FleetSpec) -> float:
    """The lower bound over the windows this run kept (its own starts): a bound on its cost
    whatever its SLO attainment."""
    return chain_lower_bound(jobs_served(result.records, batched=spec.max_batch_size > 1), least_cold_start(spec),
                             spec.initial_replicas)


def attach(summary: dict[str, Any], row: dict[str, Any]) -> None:
    """A result's cost against its mode's bounds."""
    lower = row["lower_bound_replica_seconds"]
    summary["busy_seconds"] = row["busy_seconds"]
    summary["lower_bound_replica_seconds"] = lower
    summary["replica_seconds_over_lower_bound"] = summary["replica_seconds"] / lower if lower else None
    summary["offline_replica_seconds"] = row["offline_replica_seconds"]
    summary["offline_over_lower_bound"] = row["offline_over_lower_bound"]
