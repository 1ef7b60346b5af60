"""A synthetic bursty trace: quiet stretches, then bursts that arrive at a fleet scaled to zero.

The production trace is mostly gentle (a GPU ~7 % busy); this one stresses what it rarely shows:
many requests at once after long idle periods, with a deadline-sensitive mix of sizes. Seeded, so
the committed CSV (``benchmarks/traces/synthetic-bursty.csv``) is reproducible:
``python -m benchmarks.synthetic --out benchmarks/traces/synthetic-bursty.csv``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np


def bursty_trace(hours: float = 24.0, seed: int = 7, mean_gap_s: float = 900.0,
                 burst_sizes: tuple[int, ...] = (1, 2, 4, 8, 16, 32)) -> list[tuple[float, int, int]]:
    """(time, n, steps) rows: burst starts with exponential gaps (mean ``mean_gap_s``); each burst
    has a size from ``burst_sizes`` and arrivals spread over its first ~10 s; n and steps from the
    production trace's mix (mostly 1–4 images, 30 steps)."""
    rng = np.random.default_rng(seed)
    rows: list[tuple[float, int, int]] = []
    t = 0.0
    while True:
        t += rng.exponential(mean_gap_s)
        if t > hours * 3600:
            break
        size = int(rng.choice(burst_sizes, p=[0.3, 0.2, 0.2, 0.15, 0.1, 0.05]))
        offsets = np.sort(rng.uniform(0, 10, size))
        for offset in offsets:
            n = int(rng.choice([1, 2, 4, 8], p=[0.45, 0.25, 0.25, 0.05]))
            steps = int(rng.choice([20, 30, 50], p=[0.2, 0.7, 0.1]))
            rows.append((round(t + float(offset), 3), n, steps))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--hours", type=float, default=24.0)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--out", default="benchmarks/traces/synthetic-bursty.csv")
    args = parser.parse_args(argv)
    rows = bursty_trace(args.hours, args.seed)
    Path(args.out).write_text("timestamp,n,steps\n" + "".join(f"{t},{n},{s}\n" for t, n, s in rows))
    print(f"wrote {args.out}: {len(rows)} requests over {args.hours:g} h")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
