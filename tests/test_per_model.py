"""The naive per-model fleet (baseline (c)): one deployment per checkpoint, simulated apart (SIMULATION)."""

from __future__ import annotations

from pathlib import Path

from benchmarks.per_model import simulate_per_model
from benchmarks.sim_config import ModelReplay, load_target
from benchmarks.traces import Arrival

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def test_each_checkpoint_gets_its_own_deployment_and_the_peak_counts_them_together() -> None:
    # two checkpoints' requests at the same moment: each deployment has its own replica (one warm at
    # the start, as ray-default.yaml's initial_replicas says)
    arrivals = [Arrival(float(k) * 0.1, model=m) for k in range(4) for m in ("A", "B")]
    arrivals.sort(key=lambda a: a.at)
    target = ModelReplay().apply(load_target(CONFIGS / "ray-default.yaml", cold_start_s=10), arrivals)
    summary = simulate_per_model(target, arrivals, slo_s=60)
    assert summary["deployments"] == 2
    assert summary["slo_attainment"] == 1.0  # 10 s cold start + the calls: all within 60 s
    assert summary["peak_replicas"] >= 2  # both deployments hold a GPU at once
    one = simulate_per_model(target, [Arrival(a.at, model="A") for a in arrivals], slo_s=60)
    assert one["deployments"] == 1 and one["peak_replicas"] < summary["peak_replicas"]
