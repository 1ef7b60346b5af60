"""The held-out evaluation's Markdown and plots (``sdserve-bench heldout``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from benchmarks.heldout import SDSERVE, Point, strictly_beaten
from benchmarks.sim_bounds import describe_bounds, p50_p99_text
from benchmarks.sim_breakdown import describe
from benchmarks.sim_report import plot_pareto


def _pct(point: dict[str, Any]) -> str:
    return f"{100 * point['slo_attainment']:.2f}%"


#: The columns :func:`_row` fills, after the setting's (and the tuned part's) own.
COLUMNS = ("held out: SLO", "replica-s", "/ lower bound", "p50 / p99, s", "loads / request (host, disk; LoRA)",
           "cold starts")


def _loads(point: dict[str, Any]) -> str:
    """Checkpoint loads per request that ran, how many from host memory and from disk, and LoRA loads."""
    loads = point.get("loads")
    if not loads:
        return "-"
    return f"{loads['per_request']:.3f} ({loads['host']:,}, {loads['disk']:,}; {loads['lora']:,})"


def _row(point: dict[str, Any], lower: float) -> str:
    return (f"{_pct(point)} | {point['replica_seconds']:.0f} | {point['replica_seconds'] / lower:.2f} | "
            f"{p50_p99_text(point.get('p50_s'), point['p99_s'])} | {_loads(point)} | "
            f"{point['replica_starts']}" + (f" (peak: {point['peak_replicas']} replicas at once)"
                                            if point.get("peak_replicas") else ""))


def _header(*first: str) -> list[str]:
    columns = (*first, *COLUMNS)
    return ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]


def _matched_markdown(baseline: str, matched: list[dict[str, Any]], direction: dict[str, Any], tune: str,
                      score: str) -> list[str]:
    misses = [m for m in matched if m["sdserve"] is None]
    ours = [f["held_out"] for f in direction["fronts"][SDSERVE]]
    strictly = sum(strictly_beaten([Point(**p) for p in ours], Point(**m["baseline"])) for m in matched)
    lines = ["", f"{baseline}: its front on the {tune} ({len(matched)} settings), scored on the {score}; sdserve's "
             f"front (tuned the same way) matches {len(matched) - len(misses)} of {len(matched)} with at least the "
             f"SLO attainment at no more cost ({strictly} of {len(matched)} with a strictly higher one).", ""]
    if misses:
        lines += ["Where it does not:", "", f"| {baseline} setting | SLO | replica-s | sdserve's best at that cost |",
                  "|---|---|---|---|"]
        for miss in misses:
            theirs = miss["baseline"]
            cheaper = [p for p in ours if p["replica_seconds"] <= theirs["replica_seconds"]]
            best = max(cheaper, key=lambda p: p["slo_attainment"]) if cheaper else None
            said = "none as cheap" if best is None else f"{_pct(best)} at {best['replica_seconds']:.0f} ({best['label']})"
            lines.append(f"| {theirs['label']} | {_pct(theirs)} | {theirs['replica_seconds']:.0f} | {said} |")
        lines.append("")
    return lines


def _cheapest_at_share_markdown(direction: dict[str, Any], held: dict[str, Any]) -> list[str]:
    """Each policy's cheapest held-out point at the share's SLO attainment or more, against both bounds."""
    if "share_lower_bound" not in held or not direction.get("cheapest_at_share"):
        return []
    share, lower, bound = held["share"], held["lower_bound_replica_seconds"], held["share_lower_bound"]
    lines = ["", f"Cheapest held-out point at {100 * share:g} % or more (any setting, chosen on the held-out part "
             f"itself for every policy alike):", ""]
    for policy, point in direction["cheapest_at_share"].items():
        highest = direction.get("highest_below_share", {}).get(policy)
        if point is not None:
            said = (f"{point['label']}, {_pct(point)} at {point['replica_seconds']:,.0f} replica-s: "
                    f"{point['replica_seconds'] / lower:.2f}× the lower bound, {point['replica_seconds'] / bound:.2f}× "
                    f"the bound for serving {100 * share:g} %.")
        elif highest is not None:
            point, said = highest, (f"none; its highest, {highest['label']}, {_pct(highest)} at "
                                    f"{highest['replica_seconds']:,.0f} replica-s.")
        else:
            said = "none."
        lines.append(f"- {policy}: {said}" + (f" {describe(point['breakdown'])}." if point and point.get("breakdown") else ""))
    return lines


def direction_markdown(direction: dict[str, Any], bounds: dict[str, dict[str, Any]], target: float) -> str:
    tune, score = direction["tune"], direction["score"]
    held = bounds[score]
    lower = held["lower_bound_replica_seconds"]
    lines = [f"## Tuned on the {tune}, scored on the {score}", "",
             f"Held-out part. {describe_bounds(score, held, held.get('requests'))}", "",
             f"Each policy's choice: the cheapest setting with ≥ {100 * target:g}% on the {tune}.", "",
             *_header("policy", "setting", "tuned: SLO, replica-s")]
    policies = list(direction["fronts"])
    for policy in policies:
        choice = direction["choices"][policy]
        tuned = choice["tuned"]
        lines.append(f"| {policy} | {tuned['label']} | {_pct(tuned)}, {tuned['replica_seconds']:.0f} | "
                     f"{_row(choice['held_out'], lower)} |")
    for policy in policies:
        shipped = direction["shipped"][policy]
        lines.append(f"| {policy} | {shipped['label']} (not tuned here) | - | {_row(shipped, lower)} |")
    lines += _cheapest_at_share_markdown(direction, held)
    for baseline, matched in direction["matched"].items():
        lines += _matched_markdown(baseline, matched, direction, tune, score)
    for policy in policies:
        lines += [f"{policy}: front on the {tune}, held out", "", *_header("setting", "tuned: SLO, replica-s")]
        for entry in direction["fronts"][policy]:
            tuned = entry["tuned"]
            lines.append(f"| {tuned['label']} | {_pct(tuned)}, {tuned['replica_seconds']:.0f} | "
                         f"{_row(entry['held_out'], lower)} |")
        lines.append("")
    return "\n".join(lines)


def write_report(out_dir: Path, name: str, meta: dict[str, Any], bounds: dict[str, dict[str, Any]],
                 directions: list[dict[str, Any]]) -> list[Path]:
    written = []
    sections = []
    for k, direction in enumerate(directions, 1):
        plot = out_dir / f"{name}-{k}.png"
        curves = {f"{policy} (front tuned on the {direction['tune']})":
                  [{**e["held_out"], "label": ""} for e in direction["fronts"][policy]] for policy in direction["fronts"]}
        plot_pareto(curves, plot, {direction["score"]: bounds[direction["score"]]}, meta["slo_s"])
        written.append(plot)
        sections.append(direction_markdown(direction, bounds, meta["target"]) + f"\n![held out]({plot.name})\n")
    md = out_dir / f"{name}.md"
    md.write_text(f"# {name} (SIMULATION)\n\n{meta['description']}.\n\n`{meta['command']}` at {meta['commit']}, "
                  f"{meta['when']} ({meta['wall_s']:.0f}s).\n\n" + "\n".join(sections))
    return [md, *written]
