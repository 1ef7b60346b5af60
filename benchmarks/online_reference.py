"""``sdserve-bench online-reference``: what a policy that does not foresee arrivals would pay for an
SLO, in the most forgiving model that still charges for not knowing (SIMULATION).

The lower bound knows every arrival: it starts each replica one cold start before the request that
needs it. A policy that does not know when the next request comes can meet the SLO for a request
that would miss from a cold start only with a replica already up, which it pays for while it waits.
This measures that price on its own, without anything else a fleet pays for:

- **one shared replica** (``sim_bounds.shared_replica_run``): overlapping requests share it at once
  for free, checkpoints load for free, and only a request that finds no replica running pays its
  cold start (and its LoRA loads). Everything else a real fleet meets makes it dearer.
- its keep-alive after each call, **chosen per class** of the call, known when it ends: the
  requests in the last 10 minutes (1, 2, 3, 4, 5 or more), with either the 3-hour slot of the day
  (*traffic class*: quiet nights and busy afternoons keep different replicas) or whether the call's
  request could have met the SLO after a cold start (*kind*: requests come in sessions of like
  requests, and a gap pays a miss only when the request that ends it needs a warm replica), or, in
  place of the recent requests, the kind with how long before it the request before it came and its
  tenant's request before it came (*session*: a short gap says a session is under way), or the kind
  and recent requests with how many requests came in the 10 minutes after the same time the day
  before (*recurrence*: traffic that repeats daily would keep a replica for its next request), or
  with how popular the call's checkpoint was over the day before it (*popularity*: a keep-alive per
  popularity class of model, where requests for a hot checkpoint might come back sooner). For a
  price per missed request, coordinate descent over the classes (from the best single keep-alive)
  chooses each class's keep-alive on one part of the trace; the other part scores it. The same
  keep-alives as one fixed value for every class are the plain reference.

Its cheapest held-out point at an SLO target, as a ratio to the lower bound, says how far above the
bound a policy that does not foresee arrivals starts: a reference, not a bound (a predictor that
knows more than these classes could do better).
"""

from __future__ import annotations

import argparse
import json
import time
from bisect import bisect_left
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks.report import provenance
from benchmarks.sim_bounds import bounds_row, least_cold_start, load_times, misses_from_cold_start, shared_replica_run
from benchmarks.sim_config import ModelReplay, a10_service_model, load_target
from benchmarks.simulate import load_arrivals
from benchmarks.traces import split_arrivals
from scheduler.simulation.bounds import BoundJob, LoadTimes, request_jobs
from scheduler.simulation.workload import TRACE_MEDIAN_COLD_START_S

#: Keep-alives a class may get, seconds (0: stop as soon as the call ends).
KEEP_ALIVES_S = (0.0, 15.0, 30.0, 45.0, 60.0, 90.0, 120.0, 180.0, 300.0, 600.0, 1200.0)
#: Prices of a missed request in replica-seconds, one tuning each: from cheap to near-every-request.
MISS_PRICES_S = (100.0, 200.0, 300.0, 500.0, 1000.0, 3000.0)
SLOT_S = 3 * 3600.0  # the time-of-day part of a class
RECENT_S = 600.0  # the load part: requests within this before a call's arrival (itself included)
MOST_RECENT = 5  # ... counted up to this


def _recent(jobs: Sequence[BoundJob]) -> list[int]:
    """Each job's requests in the last ``RECENT_S`` up to its arrival (itself included), capped at
    ``MOST_RECENT``. ``jobs`` in arrival order."""
    arrivals = [job.arrival for job in jobs]
    return [min(MOST_RECENT, i + 1 - bisect_left(arrivals, t - RECENT_S)) for i, t in enumerate(arrivals)]


def traffic_classes(jobs: Sequence[BoundJob], day_s: float = 86400.0) -> list[tuple[int, int]]:
    """Each job's traffic class, known when its call ends: (slot of the day, recent requests)."""
    return [(int((job.arrival % day_s) // SLOT_S), recent) for job, recent in zip(jobs, _recent(jobs))]


def request_kinds(jobs: Sequence[BoundJob], cold_start_s: float, loads: LoadTimes | None) -> list[tuple[int, int]]:
    """Each job's kind, known when it arrives: (1 if it could meet its window after a cold start
    else 0, recent requests)."""
    return [(int(not misses_from_cold_start(job, cold_start_s, loads)), recent)
            for job, recent in zip(jobs, _recent(jobs))]


#: The session class's gaps, seconds: each gap is put at the largest of these it reaches.
SESSION_GAPS_S = (0, 60, 300, 900)  # since the request before it, any tenant's
TENANT_GAPS_S = (0, 300, 3600)  # since its own tenant's request before it


def _since(gap_s: float, edges: Sequence[int]) -> int:
    return max(edge for edge in edges if gap_s >= edge)


def session_classes(jobs: Sequence[BoundJob], tenants: Sequence[str], cold_start_s: float,
                    loads: LoadTimes | None) -> list[tuple[int, ...]]:
    """Each job's session class, known when it arrives: (its kind as in :func:`request_kinds`, the
    gap since the request before it and since its tenant's request before it, each as the largest
    edge of ``SESSION_GAPS_S`` / ``TENANT_GAPS_S`` it reaches; a first request's gaps are endless).
    ``jobs`` in arrival order, ``tenants`` theirs."""
    classes: list[tuple[int, ...]] = []
    last_of: dict[str, float] = {}
    for i, (job, tenant) in enumerate(zip(jobs, tenants)):
        gap = job.arrival - jobs[i - 1].arrival if i else float("inf")
        own = job.arrival - last_of.get(tenant, -float("inf"))
        last_of[tenant] = job.arrival
        classes.append((int(not misses_from_cold_start(job, cold_start_s, loads)),
                        _since(gap, SESSION_GAPS_S), _since(own, TENANT_GAPS_S)))
    return classes


DAY_S = 86400.0
#: The recurrence class: requests in this long after the same time a day before, ...
RECURRENCE_S = 600.0
RECURRENCE_EDGES = (0, 1, 3)  # ... put at the largest of these they reach (0, 1–2, 3 or more)


def recurrence_classes(jobs: Sequence[BoundJob], earlier: Sequence[float], cold_start_s: float,
                       loads: LoadTimes | None) -> list[tuple[int, ...]]:
    """Each job's recurrence class, known when it arrives: its kind and recent requests as in
    :func:`request_kinds`, and the requests that arrived in the ``RECURRENCE_S`` after the same time
    one day before (all in the past), at the largest edge of ``RECURRENCE_EDGES`` they reach.
    ``earlier``: arrival times before the jobs' part, in the same time base (sorted), so the
    part's first day sees the day before it. ``jobs`` in arrival order."""
    times = [*earlier, *(job.arrival for job in jobs)]
    classes: list[tuple[int, ...]] = []
    for (kind, recent), job in zip(request_kinds(jobs, cold_start_s, loads), jobs):
        then = job.arrival - DAY_S
        count = bisect_left(times, then + RECURRENCE_S) - bisect_left(times, then)
        classes.append((kind, recent, max(edge for edge in RECURRENCE_EDGES if count >= edge)))
    return classes


#: The popularity class: the rank of a request's checkpoint by its requests in the day before it,
#: put at the largest of these it reaches (the most used; the 2nd to 5th; the 6th on, or none before)
POPULARITY_EDGES = (1, 2, 6)


def popularity_classes(jobs: Sequence[BoundJob], earlier: Sequence[tuple[float, str]], cold_start_s: float,
                       loads: LoadTimes | None) -> list[tuple[int, ...]]:
    """Each job's popularity class, known when it arrives: its kind and recent requests as in
    :func:`request_kinds`, and its checkpoint's rank among the checkpoints by their requests in the
    ``DAY_S`` before it, at the largest edge of ``POPULARITY_EDGES`` it reaches. ``earlier``: the
    (arrival, checkpoint) of the requests before the jobs' part, in the same time base, in order."""
    seen = [*earlier, *((job.arrival, job.model) for job in jobs)]
    counts: Counter[str] = Counter()
    first, ranks = 0, []
    for arrival, model in seen:
        while seen[first][0] < arrival - DAY_S:
            counts[seen[first][1]] -= 1
            first += 1
        own = counts[model]
        rank = 1 + sum(count > own for count in counts.values()) if own else POPULARITY_EDGES[-1]
        ranks.append(max(edge for edge in POPULARITY_EDGES if rank >= edge))
        counts[model] += 1
    return [(kind, recent, rank)
            for (kind, recent), rank in zip(request_kinds(jobs, cold_start_s, loads), ranks[len(earlier):])]


#: The class families tuned: name in the results → (label, what a class's key says).
FAMILIES = {"per_class": ("per class", "slot {0}, recent {1}"),
            "per_kind": ("per kind", "fits a cold start {0}, recent {1}"),
            "per_session": ("per session", "fits a cold start {0}, previous {1}+ s before, tenant's {2}+ s before"),
            "per_recurrence": ("per recurrence", "fits a cold start {0}, recent {1}, {2}+ a day before"),
            "per_popularity": ("per popularity", "fits a cold start {0}, recent {1}, its checkpoint ranked {2}+")}


def _objective(run: dict[str, Any], jobs: int, price_s: float) -> float:
    return run["replica_seconds"] + price_s * (1 - run["slo_attainment"]) * jobs


def tune_keep_alives(jobs: Sequence[BoundJob], classes: Sequence[tuple[int, ...]], cold_start_s: float, slo_s: float,
                     loads: LoadTimes | None, price_s: float, rounds: int = 2) -> dict[tuple[int, ...], float]:
    """Each class's keep-alive minimising replica-seconds + ``price_s`` per missed request on ``jobs``:
    the best single keep-alive for all, then ``rounds`` passes of coordinate descent over the
    classes. Never worse on ``jobs`` than the best single keep-alive (it starts there and only moves
    to a lower objective)."""
    def cost(choice: dict[tuple[int, ...], float]) -> float:
        run = shared_replica_run(jobs, [choice[c] for c in classes], cold_start_s, slo_s, loads)
        return _objective(run, len(jobs), price_s)

    kinds = sorted(set(classes))
    best_k = min(KEEP_ALIVES_S, key=lambda k: cost(dict.fromkeys(kinds, k)))
    choice = dict.fromkeys(kinds, best_k)
    best = cost(choice)
    for _ in range(rounds):
        for kind in kinds:
            for keep in KEEP_ALIVES_S:
                trial = {**choice, kind: keep}
                value = cost(trial)
                if value < best - 1e-9:
                    choice, best = trial, value
    return choice


def scored(jobs: Sequence[BoundJob], classes: Sequence[tuple[int, ...]], choice: dict[tuple[int, ...], float],
           default_s: float, cold_start_s: float, slo_s: float, loads: LoadTimes | None) -> dict[str, Any]:
    """``choice`` on ``jobs`` (a class it never saw keeps ``default_s``)."""
    return shared_replica_run(jobs, [choice.get(c, default_s) for c in classes], cold_start_s, slo_s, loads)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--trace", required=True)
    parser.add_argument("--window", help="START..END of the trace to use; default: all")
    parser.add_argument("--split-s", type=float, default=11 * 86400.0, help="where the first part ends (default: 11 days)")
    parser.add_argument("--config", default="configs/single.yaml", help="the config whose model settings the bound uses")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    ModelReplay.add_arguments(parser)
    parser.add_argument("--cold-start-s", type=float, default=TRACE_MEDIAN_COLD_START_S)
    parser.add_argument("--slo", type=float, default=30.0)
    parser.add_argument("--target", type=float, default=0.98, help="the SLO attainment whose cheapest point is reported")
    parser.add_argument("--out-dir", default="benchmarks/results")
    parser.add_argument("--name", default="sim-online-reference")
    parser.set_defaults(time_scale=1.0)


def _cheapest_at(rows: list[dict[str, Any]], target: float) -> dict[str, Any] | None:
    meeting = [r for r in rows if r["held_out"]["slo_attainment"] >= target]
    return min(meeting, key=lambda r: r["held_out"]["replica_seconds"]) if meeting else None


def main(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    arrivals = load_arrivals(args)
    parts = dict(zip(("first", "last"), split_arrivals(arrivals, args.split_s)))
    target = ModelReplay.from_args(args).apply(load_target(args.config, args.cold_start_s, args.overrides), arrivals)
    service, spec = a10_service_model(), target.spec
    cold, loads = least_cold_start(spec), load_times(spec)
    requests = {name: sorted(target.requests(a), key=lambda r: r.arrival_s) for name, a in parts.items()}
    jobs = {name: sorted(request_jobs(r, service, args.slo), key=lambda j: j.arrival) for name, r in requests.items()}
    classes = {"per_class": {name: traffic_classes(j) for name, j in jobs.items()},
               "per_kind": {name: request_kinds(j, cold, loads) for name, j in jobs.items()},
               "per_session": {name: session_classes(j, [r.tenant for r in requests[name]], cold, loads)
                               for name, j in jobs.items()},
               "per_recurrence": {
                   "first": recurrence_classes(jobs["first"], [], cold, loads),
                   "last": recurrence_classes(jobs["last"], [j.arrival - args.split_s for j in jobs["first"]], cold, loads)},
               "per_popularity": {
                   "first": popularity_classes(jobs["first"], [], cold, loads),
                   "last": popularity_classes(jobs["last"], [(j.arrival - args.split_s, j.model) for j in jobs["first"]],
                                              cold, loads)}}
    bounds = {}
    for name, part in requests.items():
        print(f"[online-reference] {name} part: {len(part)} requests; its bounds, with the bound for serving "
              f"{100 * args.target:g} % of them in time (a minute or two) ...", flush=True)
        row = bounds_row(part, service, spec, args.slo, warm=0, share=args.target)
        bounds[name] = {key: row[key] for key in ("lower_bound_replica_seconds", "offline_replica_seconds", "busy_seconds",
                                                  "share_lower_bound")}
        print(f"[online-reference] {name} part: lower bound {row['lower_bound_replica_seconds']:,.0f} replica-s, "
              f"{row['share_lower_bound']:,.0f} for {100 * args.target:g} %", flush=True)
    directions = []
    for tune, score in (("first", "last"), ("last", "first")):
        lower = bounds[score]["lower_bound_replica_seconds"]

        def row(label: str, of: dict[str, list[tuple[int, ...]]], choice: dict[tuple[int, ...], float],
                default_s: float) -> dict[str, Any]:
            result = {"label": label,
                      "tuned": scored(jobs[tune], of[tune], choice, default_s, cold, args.slo, loads),
                      "held_out": scored(jobs[score], of[score], choice, default_s, cold, args.slo, loads)}
            result["held_out"]["over_lower_bound"] = result["held_out"]["replica_seconds"] / lower
            result["held_out"]["over_share_bound"] = result["held_out"]["replica_seconds"] / bounds[score]["share_lower_bound"]
            return result

        direction: dict[str, Any] = {"tune": tune, "score": score,
                                     "fixed": [row(f"fixed {k:g}s", classes["per_class"], {}, k) for k in KEEP_ALIVES_S]}
        for family, (label, key) in FAMILIES.items():
            direction[family] = []
            for price in MISS_PRICES_S:
                choice = tune_keep_alives(jobs[tune], classes[family][tune], cold, args.slo, loads, price)
                direction[family].append({
                    **row(f"{label}, miss priced {price:g}s", classes[family], choice, max(choice.values())),
                    "keep_alives": {key.format(*c): k for c, k in sorted(choice.items())}})
                held = direction[family][-1]["held_out"]
                print(f"[online-reference] {label}, tuned on {tune}, miss priced {price:g}s: held out "
                      f"{100 * held['slo_attainment']:.2f} % at {held['over_lower_bound']:.2f}× the bound "
                      f"({time.perf_counter() - started:.0f}s)", flush=True)
        direction["cheapest_meeting_target"] = {family: _cheapest_at(direction[family], args.target)
                                                for family in ("fixed", *FAMILIES)}
        directions.append(direction)
    meta = {**provenance(), "simulated": True, "trace": args.trace, "window": args.window, "split_s": args.split_s,
            "slo_s": args.slo, "target": args.target, "cold_start_s": cold, "loads": None if loads is None else vars(loads),
            "wall_s": time.perf_counter() - started,
            "description": "SIMULATION: what not foreseeing arrivals costs. One shared replica's keep-alive, fixed, "
                           "per traffic class, per kind of request, per session class, per recurrence class or "
                           "per popularity class of its checkpoint, "
                           "tuned on one part of the trace and scored on the other"}
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{args.name}.json").write_text(json.dumps({"meta": meta, "bounds": bounds, "directions": directions}, indent=1))
    (out / f"{args.name}.md").write_text(report(args.name, meta, bounds, directions))
    print(f"[online-reference] wrote {out / args.name}.json and .md")
    return 0


def report(name: str, meta: dict[str, Any], bounds: dict[str, Any], directions: list[dict[str, Any]]) -> str:
    head = (f"# {name} (SIMULATION)\n\nSIMULATION. One replica that every request shares at once, for free; "
            f"checkpoint loads free; a request that finds it stopped waits for its cold start "
            f"({meta['cold_start_s']:g} s) and its LoRA loads. Its keep-alive after each call: one value, or one "
            f"per class of the call (requests in the last 10 minutes × the 3-hour slot of the day, or × whether "
            f"its request could have met the SLO after a cold start; or that × the gaps since the request before "
            f"it and since its tenant's request before it; or the kind and the recent requests × the requests "
            f"in the 10 minutes after the same time the day before, or × its checkpoint's rank by its requests "
            f"in the day before), tuned on one part for a price per miss, "
            f"scored on the other. A reference for what not foreseeing arrivals costs, not a bound. "
            f"SLO {meta['slo_s']:g} s.\n\n{meta['when']} · commit {meta['commit']} · `{meta['command']}`\n")
    parts = []
    for d in directions:
        lower = bounds[d["score"]]["lower_bound_replica_seconds"]
        offline = bounds[d["score"]]["offline_replica_seconds"]
        share = bounds[d["score"]]["share_lower_bound"]
        lines = [f"\n## Tuned on the {d['tune']} part, scored on the {d['score']}\n",
                 f"Held-out part: lower bound {lower:,.0f}, offline schedule {offline:,.0f} replica-seconds "
                 f"({offline / lower:.2f}×). Serving only {100 * meta['target']:g} % of it within the SLO (the rest "
                 f"shed or late) costs at least {share:,.0f} ({100 * (1 - share / lower):.1f} % under the lower bound).\n",
                 "| keep-alive | tuned: SLO, replica-s | held out: SLO | replica-s | ÷ lower bound | cold starts |",
                 "|---|---|---|---|---|---|"]
        for r in d["fixed"] + [r for family in FAMILIES for r in d[family]]:
            t, h = r["tuned"], r["held_out"]
            lines.append(f"| {r['label']} | {100 * t['slo_attainment']:.2f} %, {t['replica_seconds']:,.0f} | "
                         f"{100 * h['slo_attainment']:.2f} % | {h['replica_seconds']:,.0f} | "
                         f"{h['over_lower_bound']:.2f} | {h['cold_starts']:,} |")
        for family, best in d["cheapest_meeting_target"].items():
            lines.append(f"\nCheapest held-out point at {100 * meta['target']:g} % or more, {family.replace('_', ' ')} "
                         f"(chosen on the held-out part itself, which favours the reference): " + (
                f"{best['label']}, {100 * best['held_out']['slo_attainment']:.2f} % at "
                f"{best['held_out']['over_lower_bound']:.2f}× the lower bound, "
                f"{best['held_out']['over_share_bound']:.2f}× the bound for serving {100 * meta['target']:g} %." if best else "none."))
        parts.append("\n".join(lines) + "\n")
    return head + "".join(parts)
