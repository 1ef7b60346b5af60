"""What serving a trace must cost at least.

The problem every policy solves: requests arrive; each occupies a replica for ``service`` seconds,
one call at a time (in the batched setting: its share of the most efficient batch), must start by
``latest_start`` and is done by ``latest_end`` (arrival + SLO, to be answered within the SLO); a
replica costs from the start of its cold start to its stop; at most ``gpus`` replicas at once.

- :func:`busy_time` — the service itself: no schedule of these requests costs less.
- :func:`chain_lower_bound` — a lower bound with cold starts and idle time. Any schedule splits the
  requests into chains, one per replica life; a life costs a cold start, its service, and the idle
  time between consecutive calls. Each gap is at least the next request's arrival minus the latest
  end of the one before, however the schedule moved them within their windows; a pair whose gap is a
  cold start or more saves nothing over two lives. For calls of one request,
  :mod:`scheduler.simulation.ordered_chains` takes each life in arrival order (no schedule needs
  another) and lets only a life's first request use its window's full slack: a path cover, solved
  as a linear program per stretch of the trace whose requests could share a replica at a saving.
  Otherwise (batched calls) choosing the chains is an assignment problem (each request followed by
  at most one, preceded by at most one; ``scipy.optimize.linear_sum_assignment``), which lets
  requests follow each other in a loop: looser, still a bound. The GPU cap is left out, which only
  lowers the bound. It holds for any schedule that serves the same requests within the same
  windows: :func:`jobs_for` builds the windows every SLO-meeting schedule keeps,
  :func:`jobs_served` those a simulated policy kept.
- **Loads** (:class:`LoadTimes`, when the requests name checkpoints and LoRAs): the bound charges
  only what no schedule avoids. A new replica's cold start brings the checkpoint it preloads, but no
  adapter, so the first request of every life pays its LoRA loads; a later request may find
  everything it needs resident, so it is charged nothing more. The schedule with hindsight
  (:mod:`scheduler.simulation.offline`) pays every load its replicas make.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from scheduler.simulation.ordered_chains import (
    chain_links,
    cover_cost,
    joined_covers,
    least_head_loads,
    one_request_calls,
)
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
    model: str = ""  # its checkpoint ("": models not replayed)
    adapters: tuple[str, ...] = ()  # its LoRA adapters' ids, each once


@dataclass(frozen=True)
class LoadTimes:
    """What loads cost a replica when the requests name checkpoints and LoRAs (the simulator's model
    replay, ``scheduler/simulation/models.py``): the fastest checkpoint load (from the node's memory),
    a read from disk into it, an adapter's load, and what one replica holds."""

    checkpoint_s: float
    disk_s: float
    lora_s: float
    models_per_replica: int
    loras_per_replica: int

    def head_s(self, job: BoundJob) -> float:
        """What the first request of a replica's life loads besides the checkpoint its cold start
        brought: all its adapters."""
        return self.lora_s * len(job.adapters)


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
    ``max_batch_size`` requests of the most images any request has) — no call costs less per image.
    Each job names its request's checkpoint and adapters."""
    requests = sorted(requests, key=lambda r: r.arrival_s)  # as jobs_for orders them (both stable)
    most_images = max_batch_size * max((r.n for r in requests), default=1)

    def share(r: SimRequest) -> float:
        if max_batch_size <= 1:
            return service(r.n, r.pixels, r.steps)
        return r.n * min(service(b, r.pixels, r.steps) / b for b in range(1, most_images + 1))

    jobs = jobs_for([(r.arrival_s, share(r)) for r in requests], slo_s, batched=max_batch_size > 1)
    return [dataclasses.replace(job, model=r.model, adapters=tuple(dict.fromkeys(name.partition(":")[0] for name in r.loras)))
            for job, r in zip(jobs, requests)]


#: Times are float sums (arrival + service); a hand-over this close after a latest start counts as
#: in time. Allowing it can only lower the bound, so it stays a bound.
TOLERANCE_S = 1e-9


def _saving(before: BoundJob, after: BoundJob, head_s: float) -> float:
    """What following ``before`` with ``after`` on one replica saves against a replica of its own,
    whose start costs ``head_s`` (a cold start and the loads it leaves to the first request)."""
    if before.hand_over > after.latest_start + TOLERANCE_S:
        return 0.0  # ``before`` cannot have made way before ``after`` must start
    gap = max(0.0, after.arrival - before.latest_end)
    return max(0.0, head_s - gap)


def _stretches(jobs: Sequence[BoundJob], heads: Sequence[float]) -> list[list[int]]:
    """Indices of ``jobs`` (by arrival) split where no request can follow an earlier one at a saving:
    where every earlier request's latest end lies the most any later life's start costs (``heads``)
    or more before the next arrival (so no earlier request may start after it either: the windows do
    not reach across)."""
    most_after = list(itertools.accumulate(reversed(heads), max))[::-1]  # the dearest start from here on
    stretches: list[list[int]] = []
    latest_end = -math.inf
    for index, job in enumerate(jobs):
        if not stretches or job.arrival >= latest_end + most_after[index]:
            stretches.append([])
        stretches[-1].append(index)
        latest_end = max(latest_end, job.latest_end)
    return stretches


def chain_lower_bound(jobs: Sequence[BoundJob], cold_start_s: float, warm: int = 0,
                      loads: LoadTimes | None = None) -> float:
    """Cold starts plus service plus the least idle time any schedule of ``jobs`` pays, plus (with
    ``loads``) the adapters each life's first request loads; ``warm`` replicas running at time 0
    each spare at most one life's start. Calls of one request each take the tighter bound of
    :mod:`scheduler.simulation.ordered_chains`; batched calls pair requests freely."""
    jobs = sorted(jobs, key=lambda j: (j.arrival, j.latest_end))
    if one_request_calls(jobs, TOLERANCE_S):
        heads = _ordered_heads(jobs, cold_start_s, loads)
        chains = cover_cost(joined_covers([chain_links(jobs, heads, stretch, TOLERANCE_S)
                                           for stretch in _stretches(jobs, heads)]))[0]
    else:
        heads = [cold_start_s + (loads.head_s(job) if loads else 0.0) for job in jobs]
        chains = sum(heads) - sum(_paired_saving(jobs, heads, stretch) for stretch in _stretches(jobs, heads))
    spared = sum(sorted(heads, reverse=True)[:warm]) if warm else 0.0
    return max(busy_time(jobs), chains + busy_time(jobs) - spared)


def _paired_saving(jobs: Sequence[BoundJob], heads: Sequence[float], stretch: list[int]) -> float:
    """The most pairing the requests of ``stretch`` freely (each followed by at most one, preceded by
    at most one) saves against a life each."""
    if len(stretch) < 2:
        return 0.0
    from scipy.optimize import linear_sum_assignment  # on first use: scipy.optimize takes ~0.3 s to import

    savings = np.array([[_saving(jobs[i], jobs[k], heads[k]) if i != k else 0.0 for k in stretch] for i in stretch])
    rows, cols = linear_sum_assignment(savings, maximize=True)
    return float(savings[rows, cols].sum())


def _ordered_heads(jobs: Sequence[BoundJob], cold_start_s: float, loads: LoadTimes | None) -> list[float]:
    """What a life costs to start whose first request in arrival order is each of ``jobs`` (sorted):
    its cold start and the least its first call loads."""
    own = [loads.head_s(job) if loads else 0.0 for job in jobs]
    return [cold_start_s + s for s in least_head_loads(jobs, own, TOLERANCE_S)]


#: The bisection on the price per request stops when it is known this closely: a bound at any price.
PRICE_TOLERANCE_S = 1e-3


def share_lower_bound(jobs: Sequence[BoundJob], cold_start_s: float, share: float, warm: int = 0,
                      loads: LoadTimes | None = None, rounds: int = 24) -> float:
    """What any schedule pays that serves at least ``share`` of ``jobs`` (calls of one request each)
    within their windows, the others shed or late at no cost: the bound a policy with that SLO
    attainment cannot go under (:func:`chain_lower_bound` is for serving all of them).

    Which requests to leave out couples every stretch of the trace, so the bound is Lagrangian:
    at a price per covered request, each stretch's path cover may leave any request out (its
    linear program with a coverage variable per request, :func:`~scheduler.simulation.ordered_chains.cover_cost`);
    the sum over stretches plus the price times the requests that must be served is a lower bound
    at *any* price (weak duality), and bisection on the price (covered against needed) finds the
    best of those it tries. Every simplification leans low: each life's start and the delays carried
    are those of all the requests, which only a subset's can exceed."""
    if not 0.0 <= share <= 1.0:
        raise ValueError(f"share must be within [0, 1], not {share}")
    jobs = sorted(jobs, key=lambda j: (j.arrival, j.latest_end))
    if not one_request_calls(jobs, TOLERANCE_S):
        raise ValueError("the share bound covers calls of one request each, not batched calls")
    needed = math.ceil(share * len(jobs) - 1e-9)
    if needed == 0:
        return 0.0
    heads = _ordered_heads(jobs, cold_start_s, loads)
    cover = joined_covers([chain_links(jobs, heads, stretch, TOLERANCE_S) for stretch in _stretches(jobs, heads)])
    spared = sum(sorted(heads, reverse=True)[:warm]) if warm else 0.0
    least_busy = float(sum(sorted(job.service for job in jobs)[:needed]))

    def dual(price: float) -> tuple[float, float]:
        cost, covered = cover_cost(cover, price)
        return cost + price * needed - spared, covered

    low, high = 0.0, max(h + job.service for h, job in zip(heads, jobs)) + 1.0  # at ``high`` all are worth it
    best, covered = dual(high)
    for _ in range(rounds if covered >= needed else 0):
        if high - low < PRICE_TOLERANCE_S:
            break
        price = (low + high) / 2
        value, covered = dual(price)
        best = max(best, value)
        low, high = (price, high) if covered < needed else (low, price)
    return max(least_busy, best)
