"""Plots and helpers for simulator outputs: a long fleet timeline made plottable, and the
SLO-attainment vs replica-seconds (Pareto) chart."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def pyplot() -> Any:
    """matplotlib's pyplot on the file-only Agg backend, imported on first use: it takes about half
    a second, which every ``sdserve-bench`` command (and ``--help``) would pay otherwise."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


#: Fleet samples kept per result in JSON and plots (a 23-day timeline has ~10⁵ change points).
MAX_SAMPLES = 4000


def downsample(samples: list[dict[str, float]], limit: int = MAX_SAMPLES) -> list[dict[str, float]]:
    """At most ``limit`` change points, keeping each bucket's peak so bursts stay visible."""
    if len(samples) <= limit:
        return samples
    span = samples[-1]["t"] - samples[0]["t"] or 1.0
    buckets: dict[int, dict[str, float]] = {}
    for sample in samples:
        key = int((sample["t"] - samples[0]["t"]) / span * (limit - 1))
        kept = buckets.get(key)
        if kept is None:
            buckets[key] = dict(sample)
        else:
            for field in ("replicas", "running", "outstanding"):
                kept[field] = max(kept[field], sample[field])
    return [buckets[k] for k in sorted(buckets)]


def plot_pareto(curves: dict[str, list[dict[str, Any]]], path: Path, bounds: dict[str, dict[str, Any]],
                slo_s: float) -> None:
    """One line (or point) per policy: SLO attainment against replica-seconds; each mode's lower
    bound (dashed) and offline schedule (dotted) as vertical lines."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    for name, summaries in curves.items():
        points = sorted((s["replica_seconds"], 100 * s["slo_attainment"], s.get("label", "")) for s in summaries)
        xs, ys, labels = zip(*points)
        ax.plot(xs, ys, marker="o", label=name)
        for x, y, label in points:
            if label:
                ax.annotate(label, (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
    for k, (mode, row) in enumerate(bounds.items()):
        color = f"C{7 + k % 3}"
        ax.axvline(row["lower_bound_replica_seconds"], color=color, linestyle="--", label=f"lower bound, {mode}")
        ax.axvline(row["offline_replica_seconds"], color=color, linestyle=":", label=f"offline schedule, {mode}")
    ax.set(xlabel="replica-seconds (cost)", ylabel=f"% of requests within {slo_s:g}s",
           title="SLO attainment vs cost (SIMULATION)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
