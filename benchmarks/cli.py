"""``sdserve-bench`` / ``python -m benchmarks``: the benchmark commands."""

from __future__ import annotations

import argparse

from benchmarks import deadline_waste, memory_calibration


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sdserve-bench", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    waste = commands.add_parser("deadlines", help="compute run past deadlines: sdserve vs plain Ray")
    waste.add_argument("--sdserve-config", default="configs/cpu.yaml")
    waste.add_argument("--requests", type=int, default=50)
    waste.add_argument("--rate", type=float, default=2.0, help="arrivals per second (open loop)")
    waste.add_argument("--timeout", type=float, default=1.5, help="deadline per request, seconds")
    waste.add_argument("--size", default="128x128")
    waste.add_argument("--steps", type=int, default=20)
    waste.add_argument("--out", default="benchmarks/results/cpu-deadlines.json")
    waste.set_defaults(func=deadline_waste.main)

    memory = commands.add_parser("memory", help="memory estimate vs measured peak, per shape")
    memory.add_argument("--model", default="tiny")
    memory.add_argument("--device", default="auto")
    memory.add_argument("--threads", type=int, default=1)
    memory.add_argument("--out", default="benchmarks/results/cpu-memory-calibration.json")
    memory.set_defaults(func=memory_calibration.main)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    return args.func(args)
