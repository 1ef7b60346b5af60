"""The least a split of requests into replica lives costs, when each life may be taken to serve its
requests in arrival order: the tighter half of :func:`scheduler.simulation.bounds.chain_lower_bound`.

Two facts about any schedule of calls of one request each, whose windows are *agreeable* (a request
that arrives later may also end later: the SLO windows of :func:`~scheduler.simulation.bounds.jobs_for`)
make the bound tighter than pairing requests freely:

- **Arrival order.** Swap two consecutive calls of one replica served against arrival order: the
  earlier arrival takes the other's start, the later one follows, and the pair ends when it ended
  before, within both windows. So every schedule has one as cheap whose replicas serve in arrival
  order. Pairing freely lets two simultaneous requests each follow the other, a loop that pays no
  cold start at all; in arrival order every life has a first request, which pays one.
- **Slack is used once.** A life's first request may start as late as its window allows, and the
  idle time before the next is the next's arrival minus that latest end. A later request starts when
  its predecessor has made way or when it arrives, whichever is later: it is late only by what the
  predecessor carried over, never by its own window's full slack. So the idle time after a request
  that is not first is at least the next arrival minus its own end on arrival minus the most any
  earlier request can have delayed it.

A pair the swap cannot reorder (an earlier arrival with a later latest end: in the windows a policy
kept, :func:`~scheduler.simulation.bounds.jobs_served`, when it served out of order) may follow
either way. Which request is first changes what its link costs, so the split is a
path cover whose links have two prices; it is solved as a linear program (``scipy.optimize.linprog``,
HiGHS) per stretch, whose optimum is at most that of the path cover itself: a bound either way.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from scheduler.simulation.bounds import BoundJob


def one_request_calls(jobs: Sequence[BoundJob], tolerance_s: float) -> bool:
    """Whether ``jobs`` are calls of one request each (the next may start once this one's call is
    done; each ends ``service`` after its latest start): what the swap and the carried delay above
    take. Pairs the swap cannot reorder get links both ways (:func:`chain_links`)."""
    return all(abs(j.hand_over - j.arrival - j.service) <= tolerance_s
               and abs(j.latest_end - j.service - j.latest_start) <= tolerance_s for j in jobs)


def least_head_loads(jobs: Sequence[BoundJob], head_s: Sequence[float], tolerance_s: float) -> list[float]:
    """What a life whose first request in arrival order is ``jobs[g]`` loads at least before its
    first call: the life's first call may be any later arrival's that starts by ``jobs[g]``'s latest
    start (the swap moves earlier arrivals forward), and that one's adapters load before it."""
    least = list(head_s)
    for g, job in enumerate(jobs):
        k = g + 1
        while k < len(jobs) and jobs[k].arrival <= job.latest_start + tolerance_s:
            least[g] = min(least[g], head_s[k])
            k += 1
    return least


@dataclass(frozen=True)
class ChainLinks:
    """One stretch's path cover: what each request costs as the first of a life (``head``), its
    ``service``, and the links (before, after, idle, lane: 0 after a life's first request, 1 after a
    later one) that save against a life of its own."""

    head: np.ndarray
    service: np.ndarray
    links: tuple[tuple[int, int, float, int], ...]


def chain_links(jobs: Sequence[BoundJob], heads: Sequence[float], stretch: Sequence[int],
                tolerance_s: float) -> ChainLinks:
    """The path cover of ``stretch`` (indices of ``jobs``, sorted by arrival then latest end), each
    request priced ``heads`` were it first of its life."""
    m = len(stretch)
    sub = [jobs[i] for i in stretch]
    head = np.array([heads[i] for i in stretch], dtype=float)
    service = np.array([j.service for j in sub], dtype=float)
    if m == 1:
        return ChainLinks(head, service, ())
    arrival = np.array([j.arrival for j in sub])
    latest_end = np.array([j.latest_end for j in sub])
    dearest = float(head.max())
    slack = np.array([j.latest_start for j in sub]) - arrival
    widest = float(slack.max())
    links: list[tuple[int, int, float, int]] = []

    def follows(a: int, b: int) -> bool:
        return sub[a].hand_over <= sub[b].latest_start + tolerance_s

    def out_of_order(a: int, b: int) -> bool:
        """``b`` arrived before ``a`` but may end later: the swap cannot put it first."""
        return arrival[b] < arrival[a] and latest_end[b] > latest_end[a] and follows(a, b)

    reversed_pairs: list[tuple[int, int]] = []  # ``a`` before an earlier arrival ``b``
    for a in range(m):
        for b in range(a - 1, -1, -1):
            if arrival[b] + widest < arrival[a]:
                break  # arrived before ``a`` by more than any window: no later arrival precedes it
            if out_of_order(a, b):
                reversed_pairs.append((a, b))
    # the most a predecessor can have delayed each request: any earlier arrival's latest end (a
    # superset of those that may precede it, which only lowers the bound), or an out-of-order one's
    ends_before = np.maximum.accumulate(np.r_[-np.inf, latest_end[:-1]])
    for a, b in reversed_pairs:
        ends_before[b] = max(ends_before[b], latest_end[a])
    carried = np.minimum(slack, np.maximum(0.0, ends_before - arrival))
    for a in range(m):
        for b in range(a + 1, m):
            if arrival[b] - latest_end[a] >= dearest:
                break
            if follows(a, b):
                _add_links(links, a, b, sub, head, carried)
    for a, b in reversed_pairs:
        _add_links(links, a, b, sub, head, carried)
    return ChainLinks(head, service, tuple(links))


def joined_covers(covers: Sequence[ChainLinks]) -> ChainLinks:
    """Several stretches' path covers as one: no link joins two stretches, so its least cost is the
    sum of theirs, found by one linear program instead of one per stretch (which pays the solver's
    set-up thousands of times over a trace)."""
    offsets = np.cumsum([0] + [len(cover.head) for cover in covers])
    links = tuple((before + offset, after + offset, idle, lane)
                  for cover, offset in zip(covers, offsets) for before, after, idle, lane in cover.links)
    return ChainLinks(np.concatenate([cover.head for cover in covers]) if covers else np.zeros(0),
                      np.concatenate([cover.service for cover in covers]) if covers else np.zeros(0), links)


def cover_cost(cover: ChainLinks, price: float | None = None) -> tuple[float, float]:
    """The path cover's least cost and how many requests it covers. ``price`` None: every request
    is covered, and the cost is the lives' starts and the idle time. With a ``price``, a request may
    be left out (shed, or served late: its call then counts for nothing here), and a covered one
    also costs its service less ``price``: the Lagrangian of serving a share of the requests
    (:func:`scheduler.simulation.bounds.share_lower_bound`)."""
    from scipy.optimize import linprog  # on first use: scipy.optimize takes ~0.3 s to import
    from scipy.sparse import csr_matrix

    head, service, m = cover.head, cover.service, len(cover.head)
    if not cover.links:
        if price is None:
            return float(head.sum()), float(m)
        worth = head + service - price < 0  # a life of its own, worth its price
        return float(np.where(worth, head + service - price, 0.0).sum()), float(worth.sum())
    count = len(cover.links)
    before, after, idle, lane = (np.array(column) for column in zip(*cover.links))
    before, after, lane = before.astype(int), after.astype(int), lane.astype(int)
    starts, links, covered = np.arange(m), m + np.arange(count), m + count + np.arange(m)
    width = 2 * m + count
    # each covered request is first of its life or follows exactly one other
    joined = csr_matrix((np.r_[np.ones(m + count), -np.ones(m)], (np.r_[np.arange(m), after, np.arange(m)],
                                                                   np.r_[starts, links, covered])), shape=(m, width))
    # a first request is followed by at most one at its first-request price, a later one at its own
    rows = np.r_[np.arange(m), m + np.arange(m), m + np.arange(m), before + m * lane]
    columns = np.r_[starts, starts, covered, links]
    values = np.r_[-np.ones(m), np.ones(m), -np.ones(m), np.ones(count)]
    followed = csr_matrix((values, (rows, columns)), shape=(2 * m, width))
    if price is None:
        cost, bounds = np.r_[head, idle, np.zeros(m)], [(0, 1)] * (m + count) + [(1, 1)] * m
    else:
        cost, bounds = np.r_[head, idle, service - price], (0, 1)
    result = linprog(cost, A_ub=followed, b_ub=np.zeros(2 * m), A_eq=joined, b_eq=np.zeros(m), bounds=bounds,
                     method="highs")
    if result.status != 0:
        raise RuntimeError(f"the path cover's linear program failed: {result.message}")
    return float(result.fun), float(result.x[covered].sum())


def _add_links(links: list[tuple[int, int, float, int]], a: int, b: int, sub: Sequence[BoundJob],
               head: np.ndarray, carried: np.ndarray) -> None:
    """``b`` after ``a`` on one replica, at each price that saves against a life of its own: after
    ``a`` first of its life (it may have ended as late as its window allows), and after ``a`` later in
    one (it ended its call after it arrived plus what was carried into it)."""
    first = max(0.0, sub[b].arrival - sub[a].latest_end)
    later = max(0.0, sub[b].arrival - sub[a].arrival - carried[a] - sub[a].service)
    if first < head[b]:
        links.append((a, b, first, 0))
    if later < head[b]:
        links.append((a, b, later, 1))
