"""What serving a trace must cost at least, and what a schedule made with hindsight costs.

The problem every policy solves: requests arrive; each occupies a replica for ``service`` seconds,
one call at a time (in the batched setting: its share of the most efficient batch), must start by
``latest_start`` and is done by ``latest_end`` (arrival + SLO, to be answered within the SLO); a
replica costs from the start of its cold start to its stop; at most ``gpus`` replicas at once.

- :func:`busy_time` — the service itself: no schedule of these requests costs less.
- :func:`chain_lower_bound` — a lower bound with cold starts and idle time. Any schedule splits the
  requests into chains, one per replica life; a life costs a cold start, its service, and the idle
  time between consecutive calls. Each gap is at least the next request's arrival minus the latest
  end of the one before, however the schedule moved them within their windows; a pair whose gap is a
  cold start or more saves nothing over two lives. Choosing the chains to maximise the saving is an
  assignment problem (each request followed by at most one, preceded by at most one;
  ``scipy.optimize.linear_sum_assignment``), solved exactly per stretch of the trace whose requests
  could share a replica at a saving. The GPU cap is left out, which only lowers the bound. It holds
  for any schedule that serves the same requests within the same windows: :func:`jobs_for` builds
  the windows every SLO-meeting schedule keeps, :func:`jobs_served` those a simulated policy kept.
- :func:`offline_schedule` — an upper bound on the optimum: a feasible schedule built with hindsight,
  under the GPU cap (requests in arrival order, each alone on the replica where it adds least cost
  within its window, a replica started exactly a cold start before it is needed). Its cost against
  the lower bound is the gap within which the optimum lies.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
from scipy.optimize import linear_sum_assignment

from scheduler.simulation.records import RequestRecord
from scheduler.simulation.workload import ServiceModel, SimRequest


@dataclass(frozen=True)
class BoundJob:
    """One request as the bounds see it."""

    arrival: float
    service: float  # replica time it needs (batched: its share of the most efficient call)
    latest_start: float  # by when it must have started
    latest_end: float  # by when the call it is in must have ended
    #: The earliest time the next request in its replica's chain can start: its end when calls hold
    #: one request (arrival + service); its arrival when the next may share its call (batched).
    hand_over: float


@dataclass(frozen=True)
class OfflineSchedule:
    replica_seconds: float
    replicas: int  # most alive at once
    cold_starts: int
    late: int  # requests that could not start within their window under the cap


def busy_time(jobs: Sequence[BoundJob]) -> float:
    return float(sum(job.service for job in jobs))


def jobs_for(requests: Sequence[tuple[float, float]], slo_s: float, batched: bool = False) -> list[BoundJob]:
    """The windows every schedule that answers each request within ``slo_s`` keeps. ``requests``:
    (arrival, service) pairs, ``service`` the request's share of a call when ``batched``. A request
    that cannot make the SLO at all gets the window of starting on arrival."""
    return sorted((BoundJob(a, s, a + max(0.0, slo_s - s), a + max(slo_s, s), a if batched else a + s)
                   for a, s in requests), key=lambda j: j.arrival)


def jobs_served(records: Iterable[RequestRecord], batched: bool = False) -> list[BoundJob]:
    """The windows a simulated policy kept: the requests it ran, each by the start and end of its
    call, each holding its share of the call. A lower bound over these holds for that policy's bill,
    whatever its SLO attainment."""
    jobs = []
    for r in records:
        if r.start_s is None or r.call_s is None or not r.call_images:
            continue
        share = r.call_s * r.n / r.call_images
        end = r.start_s + r.call_s
        jobs.append(BoundJob(r.arrival_s, share, r.start_s, end, r.arrival_s if batched else r.arrival_s + share))
    return sorted(jobs, key=lambda j: j.arrival)


def request_jobs(requests: Sequence[SimRequest], service: ServiceModel, slo_s: float,
                 max_batch_size: int = 1) -> list[BoundJob]:
    """:func:`jobs_for` the simulator's requests: each in a call of its own (``max_batch_size`` 1)
    or, batched, its images' share of the most efficient call its batch could hold (up to
    ``max_batch_size`` requests of the most images any request has) — no call costs less per image."""
    most_images = max_batch_size * max((r.n for r in requests), default=1)

    def share(r: SimRequest) -> float:
        if max_batch_size <= 1:
            return service(r.n, r.pixels, r.steps)
        return r.n * min(service(b, r.pixels, r.steps) / b for b in range(1, most_images + 1))

    return jobs_for([(r.arrival_s, share(r)) for r in requests], slo_s, batched=max_batch_size > 1)


#: Times are float sums (arrival + service); a hand-over this close after a latest start counts as
#: in time. Allowing it can only lower the bound, so it stays a bound.
TOLERANCE_S = 1e-9


def _saving(before: BoundJob, after: BoundJob, cold_start_s: float) -> float:
    """What following ``before`` with ``after`` on one replica saves against a replica of its own."""
    if before.hand_over > after.latest_start + TOLERANCE_S:
        return 0.0  # ``before`` cannot have made way before ``after`` must start
    gap = max(0.0, after.arrival - before.latest_end)
    return max(0.0, cold_start_s - gap)


def _stretches(jobs: Sequence[BoundJob], cold_start_s: float) -> list[list[int]]:
    """Indices of ``jobs`` (by arrival) split where no request can follow an earlier one at a saving:
    where every earlier request's latest end lies a cold start or more before the next arrival (so
    no earlier request may start after it either: the windows do not reach across)."""
    stretches: list[list[int]] = []
    reach = -math.inf  # the latest time an earlier request could end, plus a cold start
    for index, job in enumerate(jobs):
        if not stretches or job.arrival >= reach:
            stretches.append([])
        stretches[-1].append(index)
        reach = max(reach, job.latest_end + cold_start_s)
    return stretches


def chain_lower_bound(jobs: Sequence[BoundJob], cold_start_s: float, warm: int = 0) -> float:
    """Cold starts plus service plus the least idle time any schedule of ``jobs`` pays; ``warm``
    replicas running at time 0 each spare at most one cold start."""
    jobs = sorted(jobs, key=lambda j: j.arrival)
    saved = 0.0
    for stretch in _stretches(jobs, cold_start_s):
        if len(stretch) < 2:
            continue
        group = [jobs[i] for i in stretch]
        savings = np.array([[_saving(a, b, cold_start_s) if a is not b else 0.0 for b in group] for a in group])
        rows, cols = linear_sum_assignment(savings, maximize=True)
        saved += float(savings[rows, cols].sum())
    return max(busy_time(jobs), len(jobs) * cold_start_s + busy_time(jobs) - saved - warm * cold_start_s)


@dataclass
class _Life:
    """One replica in the offline schedule: its alive spans and when it is next free."""

    spans: list[list[float]]  # [start of cold start, stop], in time order
    free_at: float


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
                     delay: float = 0.0, warm: int = 0) -> OfflineSchedule:
    """A schedule with hindsight: in arrival order, each request alone where it adds least to the
    bill and starts earliest within its window — after a replica's current work (keeping it through
    a gap shorter than a cold start, else stopping it and restarting it just in time) or on a new
    replica started a cold start before it is needed — never more than ``gpus`` alive at once. A
    request no replica can start in time goes late on the replica free first (``replicas`` reports
    the most alive at once as the schedule came out). ``delay``: how far into its window a request
    that starts a replica is put off. ``warm``: replicas running at time 0, paid from then."""
    lives: list[_Life] = [_Life([[0.0, 0.0]], 0.0) for _ in range(warm)]
    cost = 0.0
    starts = late = 0
    cap = gpus if gpus is not None else len(jobs) + 1
    for job in sorted(jobs, key=lambda j: j.arrival):
        best: tuple[float, float, int, bool] | None = None  # (added cost, start, replica or -1, restart)
        for k, life in enumerate(lives):
            start = max(job.arrival, life.free_at)
            restart = start - life.free_at >= cold_start_s  # stopped in between, its GPU free meanwhile
            if restart:
                start += delay * (job.latest_start - start)
            # the replica is alive again (restart) or longer (kept through the gap): under the cap?
            since = start - cold_start_s if restart else life.free_at
            if start > job.latest_start or (since < start and _alive_at(
                    lives, since, start + job.service, exclude=life) >= cap):
                continue
            option = ((cold_start_s if restart else start - life.free_at) + job.service, start, k, restart)
            if best is None or option[:2] < best[:2]:
                best = option
        fresh = job.arrival + delay * (job.latest_start - job.arrival)
        if (best is None or best[0] > cold_start_s + job.service) and _alive_at(
                lives, fresh - cold_start_s, fresh + job.service) < cap:
            best = (cold_start_s + job.service, fresh, -1, True)
        if best is None:
            late += 1
            k = min(range(len(lives)), key=lambda i: lives[i].free_at)
            start = max(job.arrival, lives[k].free_at)
            best = (start - lives[k].free_at + job.service, start, k, False)
        added, start, k, restart = best
        cost += added
        starts += restart
        end = start + job.service
        if k < 0:
            lives.append(_Life([[start - cold_start_s, end]], end))
            continue
        life = lives[k]
        if restart:
            life.spans.append([start - cold_start_s, end])
        else:
            life.spans[-1][1] = end
        life.free_at = end
    most = _most_alive([span for life in lives for span in life.spans])
    return OfflineSchedule(cost, most, starts, late)


#: How far into its window the request that starts a replica is put off (0: on arrival, 1: at its
#: latest start): putting it off lets later arrivals share the replica's life.
DELAYS = (0.0, 0.25, 0.5, 0.75, 1.0)


def best_offline_schedule(jobs: Sequence[BoundJob], cold_start_s: float, gpus: int | None = None,
                          warm: int = 0) -> OfflineSchedule:
    """The cheapest :func:`offline_schedule` over :data:`DELAYS` among those with fewest late."""
    return min((offline_schedule(jobs, cold_start_s, gpus, d, warm) for d in DELAYS),
               key=lambda o: (o.late, o.replica_seconds))


def _most_alive(spans: list[list[float]]) -> int:
    edges = sorted([(s, 1) for s, _ in spans] + [(e, -1) for _, e in spans])
    alive = most = 0
    for _, step in edges:
        alive += step
        most = max(most, alive)
    return most

