"""Summary statistics of one benchmark run (numpy), with the accounting identity checked.

Replica-seconds integrate the polled replica count over the run: the cost a GPU owner pays. The
oracle is the least that could have been paid: every image's share of its pipeline call's measured
service time, summed (a perfectly packed fleet with no idle or start-up time).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from benchmarks.loadgen import Record
from scheduler.outcomes import Outcome


class AccountingError(AssertionError):
    """Requests sent != sum of outcomes: a request was lost, which must never happen."""


def percentiles(values: list[float], qs: tuple[int, ...] = (50, 90, 99)) -> dict[str, float | None]:
    if not values:
        return {f"p{q}": None for q in qs}
    points = np.percentile(np.asarray(values, dtype=float), qs)
    return {f"p{q}": float(v) for q, v in zip(qs, points)}


def replica_seconds(samples: list[dict[str, float]], key: str = "replicas") -> float:
    """Trapezoid integral of ``key`` over the samples' ``t``."""
    if len(samples) < 2:
        return 0.0
    t = np.array([s["t"] for s in samples], dtype=float)
    y = np.array([s[key] for s in samples], dtype=float)
    return float(np.sum((y[1:] + y[:-1]) / 2 * np.diff(t)))


def replica_starts(samples: list[dict[str, float]], key: str = "replicas") -> int:
    """Cold starts seen: the sum of increases of the replica count between polls."""
    counts = [s[key] for s in samples]
    return int(sum(max(0, b - a) for a, b in zip(counts, counts[1:])))


def summarize(records: list[Record], samples: list[dict[str, float]], slo_s: float,
              paid_s: float | None = None, starts: int | None = None) -> dict[str, Any]:
    """``paid_s`` and ``starts``: exact replica-seconds and replica starts where they are known
    (the simulator), instead of integrating and differencing the polled samples."""
    counts = {outcome: sum(r.outcome == outcome for r in records) for outcome in Outcome}
    if sum(counts.values()) != len(records):
        raise AccountingError(f"sent {len(records)} but outcomes add to {sum(counts.values())}: {counts}")
    ok = [r for r in records if r.outcome == Outcome.OK]
    duration = max((r.done_s for r in records), default=0.0) - min((r.sent_s for r in records), default=0.0)
    images = sum(r.n for r in ok)
    oracle = sum(
        r.service_time_s * r.n / r.batch_images for r in ok if r.service_time_s and r.batch_images
    )
    paid = replica_seconds(samples) if paid_s is None else paid_s
    return {
        "sent": len(records),
        "outcomes": counts,
        "duration_s": duration,
        "throughput_images_per_s": images / duration if duration > 0 else 0.0,
        "throughput_requests_per_s": len(ok) / duration if duration > 0 else 0.0,
        "latency_s": percentiles([r.latency_s for r in ok]),
        "queue_wait_s": percentiles([r.queue_wait_s for r in ok if r.queue_wait_s is not None]),
        "service_time_s": percentiles([r.service_time_s for r in ok if r.service_time_s is not None]),
        "slo_s": slo_s,
        "slo_attainment": sum(r.latency_s <= slo_s for r in ok) / len(records) if records else 0.0,
        "replica_seconds": paid,
        "images_per_replica_second": images / paid if paid > 0 else None,
        # goodput: images delivered within the SLO per replica-second paid
        "goodput_images_per_replica_second": (
            sum(r.n for r in ok if r.latency_s <= slo_s) / paid if paid > 0 else None),
        "oracle_replica_seconds": oracle,
        "replica_seconds_over_oracle": paid / oracle if oracle > 0 else None,
        "replica_starts": replica_starts(samples) if starts is None else starts,
        "max_replicas": max((s["replicas"] for s in samples), default=0),
        "max_outstanding": max((s["outstanding"] for s in samples), default=0),
    }


def time_to_replicas(samples: list[dict[str, float]], start_s: float) -> list[float]:
    """Seconds after ``start_s`` at which the running replica count first reached 1, 2, 3, ..."""
    reached: list[float] = []
    for sample in samples:
        if sample["t"] < start_s:
            continue
        while sample["running"] > len(reached):
            reached.append(sample["t"] - start_s)
    return reached
