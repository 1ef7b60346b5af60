"""``sdserve-bench soak``: hours-in-minutes abuse of a real server, and the books must balance.

Open-loop Poisson load at a multiple of the server's measured capacity, mixing what production
sends: normal requests, tight deadlines (504), clients that hang up mid-request (499), invalid
bodies (422), oversize bodies (413) and broken JSON (400). Afterwards:

- **accounting**: requests sent = Σ the server's ``sdserve_requests_total`` increase, exactly;
- **status codes**: nothing outside the documented set (no 500);
- **memory**: RSS of the ingress and worker processes after a warm-up vs at the end (< 10 %);
- **still serving**: a normal request after the storm gets 200.

``make test`` runs 45 s of it (tests/test_soak.py); the full 10 minutes is this command.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import psutil
from prometheus_client.parser import text_string_to_metric_families
from tqdm import tqdm

from benchmarks.report import environment, provenance
from serve.settings import INGRESS_DEPLOYMENT, WORKER_DEPLOYMENT

PATH = "/v1/images/generations"
#: Every status the documented error table allows under this mix (README, "Errors").
DOCUMENTED = {200, 400, 408, 413, 422, 429, 503, 504, 507}
NORMAL = {"prompt": "a soak test", "size": "64x64", "num_inference_steps": 4, "timeout_s": 30}
#: kind → (weight, body or raw bytes, client timeout in seconds)
MIX: dict[str, tuple[float, Any, float]] = {
    "normal": (0.55, NORMAL, 60.0),
    "tight_deadline": (0.15, {**NORMAL, "num_inference_steps": 30, "timeout_s": 0.3}, 60.0),
    # streams, and hangs up at its first event: the server surely has it (a plain request cut off
    # earlier may never get past Ray's proxy, and the server cannot count what it never saw)
    "disconnect": (0.10, {**NORMAL, "num_inference_steps": 30, "stream": True}, 60.0),
    "bad_input": (0.10, {"prompt": "", "n": 99}, 60.0),
    "oversize": (0.05, {"prompt": "x" * 100_000}, 60.0),
    "broken_json": (0.05, b'{"prompt": ', 60.0),
}


def server_counts(url: str, headers: dict[str, str] | None = None) -> dict[str, float]:
    """The server's request counts by outcome (Prometheus text from /metrics)."""
    text = httpx.get(f"{url}/metrics", headers=headers, timeout=30).text
    counts: Counter[str] = Counter()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "sdserve_requests_total":
                counts[sample.labels["outcome"]] += sample.value
    return dict(counts)


def process_rss(app_name: str) -> dict[str, int]:
    """RSS bytes of this application's ingress and worker replica processes, by deployment."""
    rss: dict[str, int] = {}
    for process in psutil.process_iter(["cmdline", "memory_info"]):
        line = " ".join(process.info["cmdline"] or [])
        for deployment in (INGRESS_DEPLOYMENT, WORKER_DEPLOYMENT):
            if deployment in line and app_name in line and process.info["memory_info"]:
                rss[deployment] = rss.get(deployment, 0) + process.info["memory_info"].rss
    return rss


async def _one(client: httpx.AsyncClient, kind: str) -> str:
    _, body, timeout = MIX[kind]
    try:
        if kind == "disconnect":
            async with client.stream("POST", PATH, json=body, timeout=timeout) as response:
                if response.status_code != 200:
                    return str(response.status_code)
                async for line in response.aiter_lines():
                    if line.startswith("data: "):
                        return "hung_up"
            return "200"
        if isinstance(body, bytes):
            response = await client.post(PATH, content=body, timeout=timeout,
                                         headers={"Content-Type": "application/json"})
        else:
            response = await client.post(PATH, json=body, timeout=timeout)
    except httpx.TimeoutException:
        return "hung_up"
    except httpx.HTTPError as exc:
        return f"transport:{type(exc).__name__}"
    return str(response.status_code)


async def storm(url: str, rate_per_s: float, duration_s: float, seed: int, label: str) -> Counter[tuple[str, str]]:
    """Send the mix at ``rate_per_s`` (Poisson) for ``duration_s``; (kind, status) counts."""
    rng = random.Random(seed)
    kinds, weights = list(MIX), [w for w, _, _ in MIX.values()]
    results: Counter[tuple[str, str]] = Counter()
    limits = httpx.Limits(max_connections=512, max_keepalive_connections=64)
    async with httpx.AsyncClient(base_url=url, limits=limits) as client:
        tasks = []
        started = time.monotonic()
        next_at = 0.0
        with tqdm(total=int(duration_s), desc=label, unit="s", leave=False) as bar:
            while next_at < duration_s:
                await asyncio.sleep(max(0.0, started + next_at - time.monotonic()))
                kind = rng.choices(kinds, weights)[0]
                tasks.append((kind, asyncio.ensure_future(_one(client, kind))))
                bar.n = int(next_at)
                bar.refresh()
                next_at += rng.expovariate(rate_per_s)
            for kind, task in tasks:
                results[(kind, await task)] += 1
    return results


def measure_capacity(url: str, samples: int = 5) -> float:
    """Normal requests per second one worker serves (sequential, after one warm-up call)."""
    with httpx.Client(base_url=url, timeout=120) as client:
        client.post(PATH, json=NORMAL)
        started = time.monotonic()
        for _ in range(samples):
            assert client.post(PATH, json=NORMAL).status_code == 200
        return samples / (time.monotonic() - started)


class RssSampler:
    """RSS of the application's processes every ``every_s`` while the soak runs: growth that goes on
    through the second half is a leak; growth that levels off is warm-up."""

    def __init__(self, app_name: str, every_s: float) -> None:
        self.app_name, self.every_s = app_name, every_s
        self.samples: list[dict[str, Any]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        started = time.monotonic()
        while not self._stop.wait(self.every_s):
            self.samples.append({"t": round(time.monotonic() - started, 1), **process_rss(self.app_name)})

    def __enter__(self) -> "RssSampler":
        self._thread.start()
        return self

    def __exit__(self, *_: Any) -> None:
        self._stop.set()
        self._thread.join()


def run_soak(url: str, app_name: str, duration_s: float, multiple: float, warmup_s: float = 10.0,
             seed: int = 0) -> dict[str, Any]:
    """Warm up, then soak; returns the figures and whether every check held."""
    capacity = measure_capacity(url)
    rate = multiple * capacity
    before = server_counts(url)
    warm = asyncio.run(storm(url, rate, warmup_s, seed, "warm-up"))
    time.sleep(2.0)
    rss_before = process_rss(app_name)
    with RssSampler(app_name, max(5.0, duration_s / 20)) as sampler:
        soaked = asyncio.run(storm(url, rate, duration_s, seed + 1, "soak"))
    sent = sum(warm.values()) + sum(soaked.values())
    deadline = time.monotonic() + 60
    while True:  # answers to hung-up clients are counted when the server notices
        delta = {k: v - before.get(k, 0) for k, v in server_counts(url).items()}
        if sum(delta.values()) >= sent or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    rss_after = process_rss(app_name)
    after = httpx.post(f"{url}{PATH}", json=NORMAL, timeout=120).status_code
    statuses = Counter(status for (_, status), n in (warm + soaked).items() for _ in range(n))
    undocumented = {s: n for s, n in statuses.items() if s != "hung_up" and (not s.isdigit() or int(s) not in DOCUMENTED)}
    growth = {name: (rss_after.get(name, 0) - rss) / rss for name, rss in rss_before.items() if rss}
    middle = sampler.samples[len(sampler.samples) // 2] if sampler.samples else rss_before
    second_half = {name: (rss_after.get(name, 0) - middle.get(name, 0)) / middle[name]
                   for name in rss_before if middle.get(name)}
    counted = sum(delta.values())
    return {
        "capacity_requests_per_s": capacity, "rate_per_s": rate, "multiple": multiple,
        "warmup_s": warmup_s, "duration_s": duration_s, "sent": sent, "server_counted": counted,
        "server_outcomes": {k: v for k, v in delta.items() if v}, "client_statuses": dict(statuses),
        "by_kind": {f"{kind} → {status}": n for (kind, status), n in sorted((warm + soaked).items())},
        "undocumented_statuses": undocumented, "rss_before_bytes": rss_before, "rss_after_bytes": rss_after,
        "rss_growth": growth, "rss_growth_second_half": second_half, "rss_samples": sampler.samples,
        "served_after": after,
        "checks": {"sent_equals_counted": counted == sent, "only_documented_statuses": not undocumented,
                   "rss_growth_under_10_percent": bool(growth) and max(growth.values()) < 0.10,
                   "serves_after": after == 200},
    }


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default="configs/cpu.yaml")
    parser.add_argument("--set", dest="overrides", action="append", default=["queue.max_outstanding_per_client=null"],
                        metavar="KEY=VALUE", help="args overrides (the per-client cap is off: one address sends it all)")
    parser.add_argument("--duration", type=float, default=600.0, help="seconds of soak after the warm-up")
    parser.add_argument("--multiple", type=float, default=3.0, help="load as a multiple of measured capacity")
    parser.add_argument("--warmup", type=float, default=60.0, help="seconds of the same load before RSS is taken")
    parser.add_argument("--out-dir", default="benchmarks/results")
    parser.add_argument("--name", default="cpu-soak")


def main(args: argparse.Namespace) -> int:
    from benchmarks.runner import Target, _start, _stop

    url, app_name = _start(Target(args.name, config=args.config, overrides=args.overrides))
    try:
        result = run_soak(url, app_name or "", args.duration, args.multiple, warmup_s=args.warmup)
    finally:
        _stop(app_name)
    meta = {**provenance(), "environment": environment(),
            "config": args.config, "overrides": args.overrides}
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{args.name}.json").write_text(json.dumps({"meta": meta, "result": result}, indent=1))
    lines = [f"# {args.name}: soak at {args.multiple:g}× measured capacity", "", f"`{meta['command']}`", "",
             f"{meta['when']}; {meta['environment']}", "", "| figure | value |", "|---|---|"]
    rows = {
        "measured capacity": f"{result['capacity_requests_per_s']:.2f} requests/s",
        "offered load": f"{result['rate_per_s']:.2f} requests/s for {result['warmup_s']:g} s warm-up + {result['duration_s']:g} s",
        "sent / counted by the server": f"{result['sent']} / {result['server_counted']:.0f}",
        "server outcomes": ", ".join(f"{k} {v:.0f}" for k, v in sorted(result["server_outcomes"].items())),
        "client statuses": ", ".join(f"{k}: {v}" for k, v in sorted(result["client_statuses"].items())),
        "RSS growth over the second half": ", ".join(f"{k} {100 * v:+.1f}%" for k, v in result["rss_growth_second_half"].items()),
        "RSS growth after warm-up": ", ".join(f"{k} {100 * v:+.1f}% ({result['rss_before_bytes'][k] / 2**20:.0f} → "
                                              f"{result['rss_after_bytes'].get(k, 0) / 2**20:.0f} MiB)"
                                              for k, v in result["rss_growth"].items()),
        "a normal request afterwards": str(result["served_after"]),
    }
    lines += [f"| {k} | {v} |" for k, v in rows.items()]
    lines += ["", "Checks: " + ", ".join(f"{k} {'✓' if v else '✗'}" for k, v in result["checks"].items()), ""]
    (out / f"{args.name}.md").write_text("\n".join(lines))
    print("\n".join(lines))
    return 0 if all(result["checks"].values()) else 1
