"""Outputs of a comparison: one JSON with every record and summary, a Markdown table, PNG plots."""

from __future__ import annotations

import json
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.sim_breakdown import causes, fleet_shares, uses
from benchmarks.sim_report import pyplot
from scheduler.outcomes import Outcome

ROWS = [
    ("sent", lambda s: s["sent"]),
    (" / ".join(Outcome),
     lambda s: " / ".join(str(s["outcomes"].get(k, 0)) for k in Outcome)),
    ("throughput, images/s", lambda s: s["throughput_images_per_s"]),
    ("throughput, requests/s", lambda s: s["throughput_requests_per_s"]),
    ("latency p50 / p90 / p99, s", lambda s: _triple(s["latency_s"])),
    ("queue wait p50 / p99, s", lambda s: _pair(s["queue_wait_s"])),
    ("service time p50 / p99, s", lambda s: _pair(s["service_time_s"])),
    ("SLO attainment", lambda s: f"{100 * s['slo_attainment']:.1f}% within {s['slo_s']:g}s"),
    ("replica-seconds", lambda s: s["replica_seconds"]),
    ("busy replica-seconds (the floor: calls' measured time)", lambda s: s["oracle_replica_seconds"]),
    ("replica-seconds / busy", lambda s: s["replica_seconds_over_oracle"]),
    ("images per replica-second", lambda s: s["images_per_replica_second"]),
    ("goodput: images within SLO per replica-second", lambda s: s.get("goodput_images_per_replica_second")),
    ("replica starts (cold starts)", lambda s: s["replica_starts"]),
    ("max replicas", lambda s: s["max_replicas"]),
    ("lower bound, replica-seconds (same cap, SLO, cold start)", lambda s: s.get("lower_bound_replica_seconds")),
    ("replica-seconds / lower bound", lambda s: s.get("replica_seconds_over_lower_bound")),
    ("offline schedule / lower bound (the optimum lies between)", lambda s: s.get("offline_over_lower_bound")),
    ("lower bound over the windows it kept", lambda s: s.get("own_lower_bound_replica_seconds")),
    ("checkpoint loads / request (from disk, from host); LoRA loads", lambda s: _loads(s.get("model_loads"))),
    ("replica-seconds by replicas up (simulation)", lambda s: s.get("breakdown") and fleet_shares(s["breakdown"])),
    ("replica-seconds by use (simulation)", lambda s: s.get("breakdown") and uses(s["breakdown"])),
    ("misses by cause (simulation)", lambda s: s.get("breakdown") and causes(s["breakdown"])),
    ("s from first request to 1st, 2nd, ... replica running",
     lambda s: ", ".join(f"{t:.1f}" for t in s.get("seconds_to_running_replicas", [])) or "-"),
]


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1000 else f"{value:.0f}"
    return str(value)


def _loads(loads: dict[str, Any] | None) -> str | None:
    if not loads:
        return None
    return f"{loads['per_request']:.3f} ({loads['disk']}, {loads['host']}); {loads['lora']}"


def _triple(p: dict[str, float | None]) -> str:
    return " / ".join(_fmt(p[k]) for k in ("p50", "p90", "p99"))


def _pair(p: dict[str, float | None]) -> str:
    return " / ".join(_fmt(p[k]) for k in ("p50", "p99"))


def command_line() -> str:
    """This process's command as someone would type it in the repo: program name, not a path."""
    import shlex
    import sys

    program = Path(sys.argv[0]).name
    program = "sdserve-bench" if program in ("sdserve-bench", "__main__.py", "cli.py") else program
    return " ".join(shlex.quote(a) for a in [program, *sys.argv[1:]])


def markdown_table(results: dict[str, dict[str, Any]]) -> str:
    names = list(results)
    lines = ["| | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for label, get in ROWS:
        if all(get(results[n]["summary"]) is None for n in names) and ("bound" in label or "loads" in label):
            continue
        lines.append(f"| {label} | " + " | ".join(_fmt(get(results[n]["summary"])) for n in names) + " |")
    return "\n".join(lines)


#: Committed measurements: a run that rewrote one (an earlier run of a series) ran the same code.
RESULTS_PATHSPEC = ":(exclude)benchmarks/results"


def git_commit(where: Path | None = None) -> str:
    """The commit the code (this checkout, or the one at ``where``) ran at, ``-dirty`` if it had
    uncommitted changes outside the committed results (``unknown`` outside git)."""
    import subprocess

    def git(*args: str, cwd: Path | str = where or Path(__file__).parent) -> str:
        return subprocess.run(["git", *args], capture_output=True, text=True, cwd=cwd, check=True).stdout.strip()

    try:
        root = git("rev-parse", "--show-toplevel")  # the pathspecs below are the whole checkout's
        changed = git("status", "--porcelain", "--untracked-files=no", "--", ".", RESULTS_PATHSPEC, cwd=root)
        return git("rev-parse", "HEAD") + ("-dirty" if changed else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def provenance() -> dict[str, str]:
    """What every result file records: the command as typed, when it ran, and at which commit."""
    return {"command": command_line(), "when": time.strftime("%Y-%m-%d %H:%M:%S"), "commit": git_commit()}


def write_result(out_dir: str | Path, name: str, results: Any, table: str, with_environment: bool = True) -> None:
    """``name.json`` (provenance, environment, results) and ``name.md`` (the command and ``table``)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    meta = {**provenance(), **({"environment": environment()} if with_environment else {})}
    (out / f"{name}.json").write_text(json.dumps({"meta": meta, "results": results}, indent=1, default=str))
    (out / f"{name}.md").write_text(f"# {name}\n\n`{meta['command']}` at {meta['commit']}, {meta['when']}\n\n{table}\n")
    print(table)


def environment() -> dict[str, Any]:
    import ray
    import torch

    return {"python": platform.python_version(), "platform": platform.platform(),
            "cpu_count": __import__("os").cpu_count(), "torch": torch.__version__, "ray": ray.__version__}


def _finish(fig: Any, ax: Any, path: Path) -> None:
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    pyplot().close(fig)


def plot_latency_cdf(results: dict[str, dict[str, Any]], path: Path) -> None:
    fig, ax = pyplot().subplots(figsize=(7, 4))
    for name, result in results.items():
        lat = np.sort([r["latency_s"] for r in result["records"] if r["outcome"] == Outcome.OK])
        if len(lat):
            ax.plot(lat, np.arange(1, len(lat) + 1) / result["summary"]["sent"], label=name)
    ax.set(xlabel="latency of successful requests (s)", ylabel="fraction of requests sent", title="Latency CDF")
    if not ax.lines:  # long simulations keep no per-request records: say so instead of an empty plot
        ax.text(0.5, 0.5, "per-request records not kept (see the table's percentiles)", ha="center",
                transform=ax.transAxes)
        ax.plot([], [], label="-")
    _finish(fig, ax, path)


def plot_fleet(results: dict[str, dict[str, Any]], path: Path) -> None:
    fig, axes = pyplot().subplots(len(results), 1, figsize=(8, 2.6 * len(results)), sharex=True, squeeze=False)
    for ax, (name, result) in zip(axes[:, 0], results.items()):
        t = [s["t"] for s in result["samples"]]
        ax.step(t, [s["replicas"] for s in result["samples"]], where="post", label="replicas (incl. starting)")
        ax.step(t, [s["running"] for s in result["samples"]], where="post", label="running", alpha=0.7)
        ax.plot(t, [s["outstanding"] for s in result["samples"]], label="requests outstanding", alpha=0.7)
        ax.set(title=name, ylabel="count")
        ax.grid(alpha=0.3)
        ax.legend(loc="upper right", fontsize=8)
    axes[-1, 0].set_xlabel("seconds since start")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    pyplot().close(fig)


def plot_sweep(results: dict[str, dict[str, Any]], path: Path) -> None:
    fig, ax = pyplot().subplots(figsize=(7, 4))
    for name, result in results.items():
        levels = result.get("levels") or []
        if levels:
            ax.plot([lv["concurrency"] for lv in levels], [lv["throughput_images_per_s"] for lv in levels],
                    marker="o", label=name)
    ax.set(xlabel="concurrent clients (offered load)", ylabel="images/s", title="Throughput vs offered load")
    _finish(fig, ax, path)


def outputs_markdown(stem: str, meta: dict[str, Any], table: str) -> str:
    """The Markdown of a result: its description, the table, and when, at which commit, by which command."""
    took = f" · {meta['wall_s']:.0f} s" if "wall_s" in meta else ""
    said = f"\n{meta['when']} · commit {meta['commit']} · `{meta['command']}`{took}\n" if "commit" in meta else ""
    from benchmarks.sim_bounds import describe_bounds  # the simulator's bounds, where a result has them

    bounds = "".join(f"\n{describe_bounds(key, row, row.get('requests'))}\n" for key, row in meta.get("bounds", {}).items())
    return f"# {stem}\n\n{meta.get('description', '')}\n\n{table}\n{bounds}{said}"


def write_outputs(results: dict[str, dict[str, Any]], meta: dict[str, Any], out_dir: Path, stem: str) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    table = markdown_table(results)
    paths = [out_dir / f"{stem}.json", out_dir / f"{stem}.md",
             out_dir / f"{stem}-latency-cdf.png", out_dir / f"{stem}-fleet.png"]
    paths[0].write_text(json.dumps({"meta": meta, "results": results}, indent=1, default=str))
    paths[1].write_text(outputs_markdown(stem, meta, table))
    plot_latency_cdf(results, paths[2])
    plot_fleet(results, paths[3])
    if any(r.get("levels") for r in results.values()):
        paths.append(out_dir / f"{stem}-throughput.png")
        plot_sweep(results, paths[-1])
    print(table)
    return paths
