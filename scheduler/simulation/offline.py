"""A schedule made with hindsight: an upper bound on what serving a trace must cost.

:func:`offline_schedule` builds a feasible schedule of the jobs :mod:`scheduler.simulation.bounds`
defines, under the GPU cap: requests in arrival order, each alone on the replica where it adds least
cost within its window, a replica started exactly a cold start before it is needed. Its cost against
the lower bound is the gap within which the optimum lies.

With :class:`~scheduler.simulation.bounds.LoadTimes` (requests that name checkpoints and LoRAs) it
pays what its replicas load, as the simulator's replicas do: a new replica's cold start brings the
checkpoint of the request it starts for; a checkpoint a replica does not hold costs a load from the
node's memory (the schedule reads each from disk ahead of time, with hindsight; ``host_reads_peak``
says how many it holds in memory at once for that, to compare with the node's capacity), each
adapter not loaded on that checkpoint an adapter load; a replica keeps its least recently used
checkpoints and adapters up to its budgets. A request is in time when its loads and its call fit its
window.

With ``online`` the same rules run without hindsight of arrivals (:func:`online_schedules`): a
replica stops when its work runs out, and a new one starts only once its request is there. It is a
reference, not a bound: it still knows each request's call and loads exactly when it arrives, and
reads every checkpoint from disk ahead of time, which no live policy does; it keeps no replica
waiting for a request that has not come, which a live policy may.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from scheduler.simulation.bounds import TOLERANCE_S, BoundJob, LoadTimes


@dataclass(frozen=True)
class OfflineSchedule:
    replica_seconds: float
    replicas: int  # most alive at once
    cold_starts: int
    late: int  # requests that could not start within their window under the cap
    loads: int = 0  # checkpoint loads (beyond each cold start's own)
    lora_loads: int = 0
    host_reads_peak: int = 0  # checkpoints held in the node's memory at once for the loads
    #: each request's latency (arrival to the end of its call) at the median and the 99th percentile:
    #: what the schedule's starts put off and its queues cost the requests
    p50_s: float | None = None
    p99_s: float | None = None


@dataclass
class _Life:
    """One replica in the offline schedule: its alive spans, when it is next free, what it holds."""

    spans: list[list[float]]  # [start of cold start, stop], in time order
    free_at: float
    models: OrderedDict[str, None] = field(default_factory=OrderedDict)  # least recently used first
    adapters: OrderedDict[tuple[str, str], None] = field(default_factory=OrderedDict)  # (checkpoint, adapter)


def _loads(life: _Life | None, job: BoundJob, loads: LoadTimes | None) -> tuple[int, int]:
    """Checkpoint loads and adapter loads ``job`` makes on ``life`` (None: a replica started for it)."""
    if loads is None or not job.model:
        return 0, 0
    if life is None:
        return 0, len(job.adapters)
    return int(job.model not in life.models), sum((job.model, a) not in life.adapters for a in job.adapters)


def _seconds(counts: tuple[int, int], loads: LoadTimes | None) -> float:
    return counts[0] * loads.checkpoint_s + counts[1] * loads.lora_s if loads else 0.0


def _hold(life: _Life, job: BoundJob, loads: LoadTimes | None) -> None:
    """``life`` now holds ``job``'s checkpoint and adapters, least recently used out beyond its budgets."""
    if loads is None or not job.model:
        return
    life.models[job.model] = None
    life.models.move_to_end(job.model)
    while len(life.models) > max(1, loads.models_per_replica):
        evicted, _ = life.models.popitem(last=False)
        for key in [key for key in life.adapters if key[0] == evicted]:
            del life.adapters[key]
    for adapter in job.adapters:
        life.adapters[(job.model, adapter)] = None
        life.adapters.move_to_end((job.model, adapter))
    while len(life.adapters) > max(loads.loras_per_replica, len(job.adapters)):
        life.adapters.popitem(last=False)


def _alive_at(lives: list[_Life], t0: float, t1: float, exclude: _Life | None = None) -> int:
    """How many other replicas are alive at some point of [t0, t1) — an upper estimate: overlaps.
    Spans are in time order, so each life is read from its latest span back to the first that ends
    before ``t0``."""
    count = 0
    for life in lives:
        if life is exclude:
            continue
        for start, stop in reversed(life.spans):
            if stop <= t0:
                break
            if start < t1:
                count += 1
                break
    return count


def offline_schedule(jobs: Sequence[BoundJob], cold_start_s: float, gpus: int | None = None,
                     delay: float = 0.0, warm: int = 0, loads: LoadTimes | None = None,
                     online: bool = False) -> OfflineSchedule:
    """A schedule with hindsight: in arrival order, each request alone where it adds least to the
    bill and starts earliest within its window — after a replica's current work (keeping it through
    a gap shorter than a cold start, else stopping it and restarting it just in time) or on a new
    replica started a cold start before it is needed — never more than ``gpus`` alive at once. A
    request no replica can start in time goes late on a new replica if the cap allows, else on the
    replica free first (``replicas`` reports the most alive at once as the schedule came out).
    ``delay``: how far into its window a request that starts a replica is put off. ``warm``:
    replicas running at time 0, paid from then (holding nothing). ``online``: no replica is kept
    through a gap or restarted for a request before it arrives (see the module's docstring)."""
    lives: list[_Life] = [_Life([[0.0, 0.0]], 0.0) for _ in range(warm)]
    cost = 0.0
    starts = late = checkpoint_loads = lora_loads = 0
    reads: list[tuple[float, str]] = []  # (when a checkpoint load begins, which)
    latencies: list[float] = []
    cap = gpus if gpus is not None else len(jobs) + 1
    stopped: list[_Life] = []  # online: replicas whose work ran out, never used again
    for job in sorted(jobs, key=lambda j: j.arrival):
        if online:  # a replica stops when its work runs out: nothing told it this request was coming
            stopped += [life for life in lives if life.free_at <= job.arrival]
            lives = [life for life in lives if life.free_at > job.arrival]
        # (added cost, start, replica or -1, restart, loads)
        best: tuple[float, float, int, bool, tuple[int, int]] | None = None
        for k, life in enumerate(lives):
            start = max(job.arrival, life.free_at)
            restart = start - life.free_at >= cold_start_s  # stopped in between, its GPU free meanwhile
            counts = _loads(None if restart else life, job, loads)
            loading = _seconds(counts, loads)
            if restart:
                start += delay * max(0.0, job.latest_start - loading - start)
            # the replica is alive again (restart) or longer (kept through the gap): under the cap?
            since = start - cold_start_s if restart else life.free_at
            end = start + loading + job.service
            if start + loading > job.latest_start + TOLERANCE_S or (since < start and _alive_at(
                    lives, since, end, exclude=life) >= cap):
                continue
            option = ((cold_start_s if restart else start - life.free_at) + loading + job.service, start, k, restart, counts)
            if best is None or option[:2] < best[:2]:
                best = option
        counts = _loads(None, job, loads)
        loading = _seconds(counts, loads)
        fresh = job.arrival + delay * max(0.0, job.latest_start - loading - job.arrival)
        if online:  # started once the request is there, and put off as far into its window
            fresh = max(fresh, job.arrival + cold_start_s)
        room = _alive_at(lives, fresh - cold_start_s, fresh + loading + job.service) < cap
        if fresh + loading <= job.latest_start + TOLERANCE_S and room and (
                best is None or best[0] > cold_start_s + loading + job.service):
            best = (cold_start_s + loading + job.service, fresh, -1, True, counts)
        if best is None:
            late += 1
            if room or not lives:
                best = (cold_start_s + loading + job.service, job.arrival + (cold_start_s if online else 0.0), -1, True,
                        counts)
            else:
                k = min(range(len(lives)), key=lambda i: lives[i].free_at)
                start = max(job.arrival, lives[k].free_at)
                counts = _loads(lives[k], job, loads)
                best = (start - lives[k].free_at + _seconds(counts, loads) + job.service, start, k, False, counts)
        added, start, k, restart, counts = best
        cost += added
        starts += restart
        checkpoint_loads += counts[0]
        lora_loads += counts[1]
        if counts[0]:
            reads.append((start, job.model))
        end = start + _seconds(counts, loads) + job.service
        latencies.append(end - job.arrival)
        if k < 0:
            lives.append(_Life([[start - cold_start_s, end]], end))
            life = lives[-1]
        else:
            life = lives[k]
            if restart:
                life.spans.append([start - cold_start_s, end])
                life.models.clear()
                life.adapters.clear()
            else:
                life.spans[-1][1] = end
            life.free_at = end
        _hold(life, job, loads)
    most = _most_alive([span for life in lives + stopped for span in life.spans])
    peak = _host_reads_peak(reads, loads.disk_s - loads.checkpoint_s) if loads else 0
    p50, p99 = np.percentile(latencies, (50, 99)).tolist() if latencies else (None, None)
    return OfflineSchedule(cost, most, starts, late, checkpoint_loads, lora_loads, peak, p50, p99)


#: How far into its window the request that starts a replica is put off (0: on arrival, 1: at its
#: latest start): putting it off lets later arrivals share the replica's life.
DELAYS = (0.0, 0.25, 0.5, 0.75, 1.0)


def best_offline_schedule(jobs: Sequence[BoundJob], cold_start_s: float, gpus: int | None = None,
                          warm: int = 0, loads: LoadTimes | None = None) -> OfflineSchedule:
    """The cheapest :func:`offline_schedule` over :data:`DELAYS` among those with fewest late."""
    return min((offline_schedule(jobs, cold_start_s, gpus, d, warm, loads) for d in DELAYS),
               key=lambda o: (o.late, o.replica_seconds))


def online_schedules(jobs: Sequence[BoundJob], cold_start_s: float, gpus: int | None = None,
                     warm: int = 0, loads: LoadTimes | None = None) -> list[tuple[float, OfflineSchedule]]:
    """:func:`offline_schedule` without hindsight of arrivals, at each of :data:`DELAYS`: the
    reference is each of them, none chosen with hindsight of how it scores. Replicas running at time
    0 (``warm``) stop with nothing to do, as any other."""
    return [(d, offline_schedule(jobs, cold_start_s, gpus, d, warm, loads, online=True)) for d in DELAYS]


def _most_alive(spans: list[list[float]]) -> int:
    edges = sorted([(s, 1) for s, _ in spans] + [(e, -1) for _, e in spans])
    alive = most = 0
    for _, step in edges:
        alive += step
        most = max(most, alive)
    return most


def _host_reads_peak(reads: list[tuple[float, str]], read_s: float) -> int:
    """The most distinct checkpoints the node's memory holds at once when each load at ``t`` has its
    checkpoint read from disk over [t − ``read_s``, t] and kept until then."""
    spans: dict[str, list[list[float]]] = {}
    for at, model in sorted(reads):
        held = spans.setdefault(model, [])
        if held and at - read_s <= held[-1][1]:
            held[-1][1] = at  # still there from its last load: one copy
        else:
            held.append([at - read_s, at])
    return _most_alive([span for held in spans.values() for span in held])
