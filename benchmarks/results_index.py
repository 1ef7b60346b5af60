"""``sdserve-bench index``: write ``benchmarks/results/README.md``, one row per committed result.

Each row names the result, what it measured (its own description, or its report's first line), when
and at which commit it was measured, and the command that made it — all read from the result file.
Files from before results recorded their commit show the commit that committed them instead
(marked "committed in"); a result that recorded no command shows the settings it recorded.
``tests/test_benchmarks.py`` checks the committed index lists every result file.
"""

from __future__ import annotations

import argparse
import json
import subprocess
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"
INDEX = RESULTS / "README.md"
#: What each command measures, for results that did not describe themselves.
WHAT = {"cold-start": "a worker replica's cold start, phase by phase",
        "soak": "minutes of mixed abuse at a multiple of capacity: accounting, statuses, memory",
        "stream": "streaming: time to the first event, a preview's cost against a step",
        "pareto": "SIMULATION: SLO attainment against replica-seconds, sweeping keep-alive knobs",
        "deadlines": "GPU time spent past deadlines: sdserve against a plain Ray Serve sync handler",
        "memory": "the memory estimate against the measured peak, per shape"}
#: Files that are not the output of a command, and what they are.
NOT_RESULTS = {"README.md": "this index",
               "ui-page.png": "screenshot of the web page at a phone's width (tiny model on CPU)"}
PLOTS = ("-fleet.png", "-latency-cdf.png", "-throughput.png", "-slo-vs-cost.png", ".png")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--check", action="store_true", help="fail if the committed index is not current")


def _git(*args: str) -> str:
    return subprocess.run(["git", *args], capture_output=True, text=True, cwd=RESULTS).stdout.strip()


def _meta(data: dict[str, Any]) -> dict[str, Any]:
    return data.get("meta") if isinstance(data.get("meta"), dict) else data


def _command(meta: dict[str, Any]) -> str:
    """The command as recorded; for older files that recorded only their settings (or nothing),
    the command rebuilt from them, marked as such."""
    if meta.get("command") and str(meta["command"]).startswith("sdserve-bench"):
        return str(meta["command"])
    settings = {k: v for k, v in (meta.get("settings") or {}).items() if k not in ("func", "command", "out")}
    name = (meta.get("settings") or {}).get("command") or meta.get("command") or "memory"
    flags = " ".join(f"--{k.replace('_', '-')} {v}" for k, v in sorted(settings.items()))
    return f"sdserve-bench {name} {flags}".strip() + " (rebuilt: the file records its settings, not its command)"


def _description(stem: str, meta: dict[str, Any], command: str) -> str:
    if meta.get("description"):
        return str(meta["description"]).split(". ")[0].rstrip(".")
    return WHAT.get(command.split()[1], "")


def row(path: Path) -> str:
    """One table row for the result ``path`` (a JSON file)."""
    meta = _meta(json.loads(path.read_text()))
    when = meta.get("when") or _git("log", "-1", "--diff-filter=A", "--format=%ad", "--date=short", "--", path.name)
    commit = str(meta["commit"])[:12] if meta.get("commit") else (
        f"committed in {_git('log', '-1', '--format=%h', '--', path.name)}")
    command = _command(meta)
    files = sorted(p.name for p in RESULTS.glob(f"{path.stem}*") if p.stem == path.stem or
                   any(p.name == f"{path.stem}{suffix}" for suffix in PLOTS))
    links = ", ".join(f"[{name.split(path.stem, 1)[1] or name}]({name})" for name in files)
    return (f"| {path.stem} | {_description(path.stem, meta, command)} | {when} | {commit} | "
            f"`{command.replace('|', '&#124;')}` | {links} |")


def render() -> str:
    rows = [row(path) for path in sorted(RESULTS.glob("*.json"))]
    others = "\n".join(f"- `{name}`: {what}" for name, what in NOT_RESULTS.items() if name != "README.md")
    return (
        "# Committed results\n\n"
        "Every measurement in this folder, as its own file records it: what it measured, when, at which commit "
        "(\"committed in\": a file from before results recorded their commit, shown with the commit that added "
        "it), and the command that made it, as typed in the repository. Results marked SIMULATION come from "
        "the fleet simulator; the others are live runs on the machine their file names (`cpu-`: a 2-core "
        "machine with no GPU). A result describes the code at its commit: rerun the command to measure today's. "
        "Simulations of `alibaba-genai-2026-lora_request_trace.csv` from before e7d9a4a (2026-12-02 11:25) "
        "read it as one checkpoint; today the reader keeps each request's checkpoint, and the same run takes "
        "`--one-checkpoint`.\n\n"
        "Regenerate with `sdserve-bench index`.\n\n"
        "| result | what | date | commit | command | files |\n|---|---|---|---|---|---|\n"
        + "\n".join(rows) + f"\n\nOther files:\n\n{others}\n"
    )


def main(args: argparse.Namespace) -> int:
    text = render()
    if args.check:
        if INDEX.read_text() != text:
            print(f"{INDEX} is not current: run sdserve-bench index")
            return 1
        return 0
    INDEX.write_text(text)
    print(f"wrote {INDEX} ({text.count(chr(10))} lines)")
    return 0
