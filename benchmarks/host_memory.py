"""``sdserve-bench host-memory``: how much host memory a node needs for a trace's checkpoints.

For each size (in checkpoints), the requests that would read their checkpoint from disk under LRU
and the fewest any eviction rule can (``scheduler/simulation/host_memory.py``); between them, what
other online rules read (LRU-K, fewest uses in a recent window), and how many of LRU's reads were
for a checkpoint the same tenant had asked for before. A read from disk
takes longer than a 30 s SLO, so this is a floor under the misses that no keep-alive lifts. A pure
count over the trace's sequence of checkpoints: no GPUs, no timing (the counts take a fraction of a second; the command, with its imports, seconds).
"""

from __future__ import annotations

import argparse

from benchmarks.report import write_result
from benchmarks.simulate import load_arrivals
from scheduler.simulation.host_memory import ONLINE_RULES, host_memory_misses, rule_misses, tenant_returns


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--trace", required=True, help="a trace naming checkpoints (the production trace, or a "
                        "plain CSV with a model column)")
    parser.add_argument("--window", help="START..END; default: all")
    parser.add_argument("--sizes", default="10,20,40,60,87", help="host memory sizes, in checkpoints")
    parser.add_argument("--checkpoint-gb", type=float, default=2.1, help="one checkpoint's size (SD 1.5, fp16)")
    parser.add_argument("--count-from-s", type=float, default=0.0, help="count only requests from this many "
                        "seconds into the window on (the earlier ones fill the memory): 950400 scores days 12-23")
    parser.add_argument("--out-dir", default="benchmarks/results")
    parser.add_argument("--name", default="host-memory")
    parser.set_defaults(time_scale=1.0)


def main(args: argparse.Namespace) -> int:
    arrivals = load_arrivals(args)
    models = [a.model for a in arrivals]
    if not any(models):
        raise SystemExit(f"{args.trace} names no checkpoints (a 'checkpoint_model_version_id' or 'model' column)")
    count_from = sum(a.at < args.count_from_s for a in arrivals)
    if count_from == len(arrivals):
        raise SystemExit(f"--count-from-s {args.count_from_s:g} leaves no request to count")
    sizes = sorted({int(size) for size in args.sizes.split(",")})
    if sizes[0] < 1:
        raise SystemExit(f"--sizes {args.sizes}: a host memory holds at least one checkpoint")
    rows = [host_memory_misses(models, size, count_from) for size in sizes]
    counted = rows[0].requests
    requests = [(a.at, a.model) for a in arrivals]
    online = {size: {rule: rule_misses(requests, size, score, count_from) for rule, score in ONLINE_RULES.items()}
              for size in sizes}
    tenants = [a.tenant for a in arrivals]
    returns = {size: tenant_returns(models, tenants, size, count_from) for size in sizes} if any(tenants) else {}
    lines = [
        f"{counted:,} requests counted ({count_from:,} earlier ones only fill the memory) over "
        f"{len(set(models)):,} checkpoints; {rows[0].first_uses} of them ask for a checkpoint for the first time.",
        "",
        "| host memory, checkpoints | GB | from disk under LRU | % | fewest any eviction rule can | % |",
        "|---|---|---|---|---|---|",
    ] + [f"| {r.capacity} | {r.capacity * args.checkpoint_gb:.0f} | {r.lru:,} | {100 * r.lru / counted:.2f} | "
         f"{r.fewest:,} | {100 * r.fewest / counted:.2f} |" for r in rows]
    lines += ["", "Requests read from disk by other online eviction rules (each reads a checkpoint only when "
              "a request asks for it), beside LRU and the fewest possible:", "",
              "| host memory, checkpoints | LRU | " + " | ".join(ONLINE_RULES) + " | fewest possible |",
              "|---" * (len(ONLINE_RULES) + 3) + "|"]
    lines += [f"| {r.capacity} | {r.lru:,} | " + " | ".join(f"{online[r.capacity][rule]:,}" for rule in ONLINE_RULES)
              + f" | {r.fewest:,} |" for r in rows]
    if returns:
        lines += ["", "Of LRU's reads from disk, those for a checkpoint the same tenant had asked for before "
                  "(the most a read ahead on each tenant's own history could save): "
                  + ", ".join(f"{returns[r.capacity]:,} of {r.lru:,} with room for {r.capacity}" for r in rows) + "."]
    write_result(args.out_dir, args.name, {"counted_from_request": count_from, "rows": [r.__dict__ for r in rows],
                                           "online_rules": online, "tenant_returns": returns},
                 "\n".join(lines), with_environment=False)
    return 0
