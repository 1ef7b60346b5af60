"""The cost bounds beside a simulation's results (SIMULATION): busy time, the lower bound and the
offline schedule for each config's mode, GPU cap, cold start and SLO, and every result's cost as a
ratio to the lower bound (``scheduler/simulation/bounds.py`` and ``offline.py`` say what each is), and a
keep-alive reference beside them."""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

from scheduler.simulation.bounds import (
    BoundJob,
    LoadTimes,
    busy_time,
    chain_lower_bound,
    jobs_served,
    request_jobs,
    share_lower_bound,
)
from scheduler.simulation.offline import best_offline_schedule, online_schedules
from scheduler.simulation.records import SimResult
from scheduler.simulation.workload import FleetSpec, ServiceModel, SimRequest


def least_cold_start(spec: FleetSpec) -> float:
    """The shortest cold start ``spec`` has: with a cold start in parts, its checkpoint read ahead
    into host memory (which hindsight can always do)."""
    return spec.cold_start_with(spec.model_load_host_s, -spec.cold_start_jitter_s)


def mode_key(spec: FleetSpec) -> str:
    """What the bounds depend on besides the trace and the SLO."""
    return (f"batch {spec.max_batch_size}, {spec.gpu_slots} GPUs, {spec.initial_replicas} warm, "
            f"cold start {least_cold_start(spec):g}s")


def load_times(spec: FleetSpec) -> LoadTimes | None:
    """What the bounds charge for loads: the spec's when it replays checkpoints in calls of one
    request (a batched call shares its loads, which the bounds do not split)."""
    if not spec.models_per_replica or spec.max_batch_size > 1:
        return None
    return LoadTimes(spec.model_load_host_s, spec.model_load_disk_s, spec.lora_load_s if spec.loras_per_replica else 0.0,
                     spec.models_per_replica, spec.loras_per_replica)


def bounds_row(requests: list[SimRequest], service: ServiceModel, spec: FleetSpec, slo_s: float,
               warm: int | None = None, share: float | None = None) -> dict[str, Any]:
    """Busy time, the lower bound and the offline schedule for ``spec``'s mode, GPUs, cold start and
    replicas warm at time 0 (``warm``; default the spec's initial replicas; a part scored after a
    warm-up may find any number up to the GPUs running) (the offline schedule
    runs each request in a call of its own, which any mode may do: in the batched mode it is an upper
    bound, not a batched schedule); with ``share`` (calls of one request), the bound for serving only
    that share of the requests within the SLO (a minute or so on the whole trace)."""
    started = time.perf_counter()
    jobs = request_jobs(requests, service, slo_s, spec.max_batch_size)
    cold = least_cold_start(spec)
    warm = spec.initial_replicas if warm is None else warm
    loads = load_times(spec)
    lower = chain_lower_bound(jobs, cold, warm, loads)
    alone = jobs if spec.max_batch_size == 1 else request_jobs(requests, service, slo_s)  # calls of one request
    offline = best_offline_schedule(alone, cold, spec.gpu_slots, warm, loads)
    row = {"max_batch_size": spec.max_batch_size, "gpus": spec.gpu_slots, "cold_start_s": cold, "warm_at_start": warm,
           "slo_s": slo_s, "busy_seconds": busy_time(jobs), "lower_bound_replica_seconds": lower,
           "offline_replica_seconds": offline.replica_seconds, "offline_replicas": offline.replicas,
           "offline_cold_starts": offline.cold_starts, "offline_late": offline.late,
           "offline_p50_s": offline.p50_s, "offline_p99_s": offline.p99_s,
           "offline_over_lower_bound": offline.replica_seconds / lower if lower else None}
    if loads:
        row.update({"loads_charged": asdict(loads), "lower_bound_without_loads": chain_lower_bound(jobs, cold, warm),
                    "offline_loads": offline.loads, "offline_lora_loads": offline.lora_loads,
                    "offline_host_reads_peak": offline.host_reads_peak, "node_host_models": spec.host_models_per_node,
                    "cannot_meet_slo_from_a_cold_start": from_cold_start_misses(jobs, cold, loads)})
    if share is not None and spec.max_batch_size == 1:
        row.update({"share": share, "share_lower_bound": share_lower_bound(jobs, cold, share, warm, loads)})
    row["online_schedule"] = [{"delay": delay, "replica_seconds": o.replica_seconds, "late": o.late,
                               "cold_starts": o.cold_starts, "loads": o.loads, "lora_loads": o.lora_loads,
                               "p50_s": o.p50_s, "p99_s": o.p99_s}
                              for delay, o in online_schedules(alone, cold, spec.gpu_slots, warm, loads)]
    row["keep_alive_reference"] = keep_alive_reference(jobs, cold, slo_s, loads)
    row["seconds"] = time.perf_counter() - started
    return row


def misses_from_cold_start(job: BoundJob, cold_start_s: float, loads: LoadTimes | None) -> bool:
    """Whether ``job`` misses its window on a replica started when it arrives (its cold start
    bringing its checkpoint, then its adapters and its call)."""
    return job.arrival + cold_start_s + (loads.head_s(job) if loads else 0.0) > job.latest_start + 1e-9


def from_cold_start_misses(jobs: list[BoundJob], cold_start_s: float, loads: LoadTimes) -> int:
    """Requests that miss their window on a replica started when they arrive: to meet the SLO each
    needs a replica started before it arrived, which only a policy that foresaw it, or kept one
    waiting, has."""
    return sum(misses_from_cold_start(job, cold_start_s, loads) for job in jobs)


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


def describe_bounds(key: str, row: dict[str, Any], requests: int | None = None) -> str:
    """One bounds row in words, for the reports."""
    text = (f"Bounds ({key}): busy time {row['busy_seconds']:,.0f}, lower bound "
            f"{row['lower_bound_replica_seconds']:,.0f}, offline schedule {row['offline_replica_seconds']:,.0f} "
            f"replica-seconds ({row['offline_over_lower_bound']:.2f}× the bound; the optimum lies between)")
    if row.get("offline_p50_s") is not None:
        text += f"; the offline schedule's latency p50 / p99 {p50_p99_text(row['offline_p50_s'], row['offline_p99_s'])} s"
    if row.get("offline_late"):
        text += f"; the offline schedule starts {row['offline_late']} requests after their windows (no replica could take them in time)"
    text += "."
    if "share_lower_bound" in row:
        share, bound = row["share"], row["share_lower_bound"]
        text += (f" Serving only {100 * share:g} % of the requests within the SLO (the rest shed or late) costs at least "
                 f"{bound:,.0f} ({100 * (1 - bound / row['lower_bound_replica_seconds']):.1f} % under the lower bound): "
                 f"a policy at that SLO attainment may pay less than the lower bound, never less than this.")
    if "loads_charged" in row:
        misses = row["cannot_meet_slo_from_a_cold_start"]
        share = f" ({100 * misses / requests:.1f} %)" if requests else ""
        text += (f" Loads charged: the lower bound {row['lower_bound_replica_seconds'] - row['lower_bound_without_loads']:,.0f} "
                 f"replica-seconds of adapter loads no schedule avoids (each replica's first request loads its "
                 f"LoRAs); the offline schedule {row['offline_loads']:,} checkpoint loads from the node's memory "
                 f"(read ahead with hindsight, at most {row['offline_host_reads_peak']} at once, against "
                 f"{row['node_host_models']} the node holds) and {row['offline_lora_loads']:,} LoRA loads. "
                 f"{misses:,} requests{share} miss the SLO on a replica started when they arrive: each needs a "
                 f"replica started before it, which only hindsight or an idle replica gives.")
    if row.get("online_schedule") and requests:
        text += ("\n\nA reference, not a bound: the **online schedule**, the offline schedule's rules without "
                 "hindsight of arrivals. A replica stops when its work runs out and starts only once its request is "
                 "there, put off that far into its window; it still knows each request's call and loads when it "
                 "arrives and reads checkpoints ahead from disk, which no live policy does.\n\n"
                 "| put off | replica-s | ÷ lower bound | in time | p50 / p99, s | cold starts |\n"
                 "|---|---|---|---|---|---|\n" + "".join(
                     f"| {ref['delay']:g} of the window | {ref['replica_seconds']:,.0f} | "
                     f"{ref['replica_seconds'] / row['lower_bound_replica_seconds']:.2f} | "
                     f"{100 * (1 - ref['late'] / requests):.2f} % | {p50_p99_text(ref.get('p50_s'), ref.get('p99_s'))} | "
                     f"{ref['cold_starts']:,} |\n"
                     for ref in row["online_schedule"]))
    if row.get("keep_alive_reference"):
        text += ("\n\nA reference, not a bound: one replica kept alive K s after each call, which every request "
                 "shares at once (optimistic: overlapping requests would need more replicas); a request that finds "
                 "none starts it and waits for its cold start.\n\n| K, s | replica-s | ÷ lower bound | SLO | cold starts |\n"
                 "|---|---|---|---|---|\n" + "".join(
                     f"| {ref['keep_alive_s']:g} | {ref['replica_seconds']:,.0f} | "
                     f"{ref['replica_seconds'] / row['lower_bound_replica_seconds']:.2f} | "
                     f"{100 * ref['slo_attainment']:.2f} % | {ref['cold_starts']:,} |\n" for ref in row["keep_alive_reference"]))
    return text


def p50_p99_text(p50: float | None, p99: float | None) -> str:
    """Latency percentiles as the reports print them, in seconds ("-" for one a result predates)."""
    return " / ".join("-" if value is None else f"{value:.1f}" for value in (p50, p99))


#: Keep-alives the reference below is computed for, seconds.
REFERENCE_KEEP_ALIVES_S = (30.0, 60.0, 120.0, 300.0, 600.0, 1200.0)


def keep_alive_reference(jobs: list[BoundJob], cold_start_s: float, slo_s: float, loads: LoadTimes | None,
                         keep_alives_s: tuple[float, ...] = REFERENCE_KEEP_ALIVES_S) -> list[dict[str, Any]]:
    """What the plainest policy that does not foresee arrivals would pay and miss: one replica,
    started when a request finds none (the request waits for its cold start, then loads its
    adapters) and stopped ``keep_s`` after the last call ends. Requests that overlap are taken to
    share it at once, which no replica does, so the cost and the misses are both optimistic (a
    reference, not a bound). Misses: the requests that find no replica and cannot meet the SLO from
    a cold start, and those whose call alone is longer than the SLO."""
    ordered = sorted(jobs, key=lambda j: j.arrival)
    return [{"keep_alive_s": keep_s, **shared_replica_run(ordered, [keep_s] * len(ordered), cold_start_s, slo_s, loads)}
            for keep_s in keep_alives_s]


def shared_replica_run(jobs: Sequence[BoundJob], keep_s: Sequence[float], cold_start_s: float, slo_s: float,
                       loads: LoadTimes | None) -> dict[str, Any]:
    """The reference's one shared replica over ``jobs`` (in arrival order), kept alive ``keep_s[i]``
    after the call of ``jobs[i]``: its replica-seconds, cold starts and SLO attainment."""
    alive = 0.0
    starts = misses = 0
    until = -math.inf  # when the replica stops
    for job, keep in zip(jobs, keep_s):
        if job.arrival >= until:  # none running: start one
            starts += 1
            done = job.arrival + cold_start_s + (loads.head_s(job) if loads else 0.0) + job.service
            misses += done > job.arrival + max(slo_s, job.service) + 1e-9
            until = job.arrival
        else:
            done = job.arrival + job.service
            misses += job.service > slo_s
        end = max(until, done + keep)
        alive += end - until
        until = end
    return {"replica_seconds": alive, "cold_starts": starts, "slo_attainment": 1 - misses / len(jobs) if jobs else None}
