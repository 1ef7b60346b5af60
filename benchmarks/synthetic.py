"""Synthetic bursty traces: quiet stretches, then bursts that arrive at a fleet scaled to zero.

The production trace is mostly gentle (a GPU ~7 % busy); this one stresses what it rarely shows:
many requests at once after long idle periods, with a deadline-sensitive mix of sizes. With
``--models K`` each burst is for one checkpoint drawn from a Zipf popularity over K (a user's session
keeps its checkpoint), and a request applies a LoRA with the production trace's frequency (17 %),
drawn from a Zipf over ``--loras``: the many-model mix for the tests. Seeded, so the committed CSVs
are reproducible: ``python -m benchmarks.synthetic --out benchmarks/traces/synthetic-bursty.csv`` and
``python -m benchmarks.synthetic --hours 6 --models 12 --loras 20 --out benchmarks/traces/synthetic-models.csv``.
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
    return [(t, n, steps) for t, n, steps, _ in _bursts(hours, np.random.default_rng(seed), mean_gap_s, burst_sizes)]


def _zipf_choice(rng: np.random.Generator, count: int, exponent: float) -> int:
    weights = 1.0 / np.arange(1, count + 1) ** exponent
    return int(rng.choice(count, p=weights / weights.sum()))


def many_model_trace(hours: float = 6.0, seed: int = 7, models: int = 12, loras: int = 20, exponent: float = 1.1,
                     lora_share: float = 0.17, mean_gap_s: float = 900.0) -> list[tuple[float, int, int, str, str]]:
    """(time, n, steps, checkpoint, loras) rows: the bursts of :func:`bursty_trace`, each for one
    checkpoint (``M00`` most popular); a request's LoRA (``L00:1``…) with probability ``lora_share``."""
    rng = np.random.default_rng(seed)
    rows, burst_model = [], {}
    for t, n, steps, burst in _bursts(hours, rng, mean_gap_s, (1, 2, 4, 8, 16, 32)):
        if burst not in burst_model:
            burst_model[burst] = f"M{_zipf_choice(rng, models, exponent):02d}"
        lora = f"L{_zipf_choice(rng, loras, exponent):02d}:1" if loras and rng.random() < lora_share else ""
        rows.append((t, n, steps, burst_model[burst], lora))
    return rows


def _bursts(hours: float, rng: np.random.Generator, mean_gap_s: float,
            burst_sizes: tuple[int, ...]) -> list[tuple[float, int, int, int]]:
    """(time, n, steps, burst index) rows."""
    rows: list[tuple[float, int, int, int]] = []
    t, burst = 0.0, 0
    while True:
        t += rng.exponential(mean_gap_s)
        if t > hours * 3600:
            break
        size = int(rng.choice(burst_sizes, p=[0.3, 0.2, 0.2, 0.15, 0.1, 0.05]))
        offsets = np.sort(rng.uniform(0, 10, size))
        for offset in offsets:
            n = int(rng.choice([1, 2, 4, 8], p=[0.45, 0.25, 0.25, 0.05]))
            steps = int(rng.choice([20, 30, 50], p=[0.2, 0.7, 0.1]))
            rows.append((round(t + float(offset), 3), n, steps, burst))
        burst += 1
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--hours", type=float, default=24.0)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--models", type=int, default=0, help="checkpoints (Zipf popularity); 0: none named")
    parser.add_argument("--loras", type=int, default=0, help="LoRA adapters (Zipf popularity)")
    parser.add_argument("--out", default="benchmarks/traces/synthetic-bursty.csv")
    args = parser.parse_args(argv)
    if args.models:
        rows = many_model_trace(args.hours, args.seed, args.models, args.loras)
        text = "timestamp,n,steps,tenant,model,loras\n" + "".join(
            f"{t},{n},{s},,{m},{lora}\n" for t, n, s, m, lora in rows)
    else:
        rows = bursty_trace(args.hours, args.seed)
        text = "timestamp,n,steps\n" + "".join(f"{t},{n},{s}\n" for t, n, s in rows)
    Path(args.out).write_text(text)
    print(f"wrote {args.out}: {len(rows)} requests over {args.hours:g} h")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
