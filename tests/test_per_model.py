"""The naive per-model fleet (baseline (c)): one deployment per checkpoint, simulated apart (SIMULATION)."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.per_model import merge_runs, simulate_per_model
from benchmarks.sim_config import ModelReplay, load_target
from benchmarks.simulate import summarize_per_model
from benchmarks.traces import Arrival
from scheduler.simulation.records import Replica, RequestRecord, SimResult

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def test_each_checkpoint_gets_its_own_deployment_and_the_peak_counts_them_together() -> None:
    # two checkpoints' requests at the same moment: each deployment has its own replica (one warm at
    # the start, as ray-default.yaml's initial_replicas says)
    arrivals = [Arrival(float(k) * 0.1, model=m) for k in range(4) for m in ("A", "B")]
    arrivals.sort(key=lambda a: a.at)
    target = ModelReplay().apply(load_target(CONFIGS / "ray-default.yaml", cold_start_s=10), arrivals)
    run = simulate_per_model(target, arrivals)
    summary = summarize_per_model(run, slo_s=60)
    assert summary["deployments"] == 2
    assert summary["slo_attainment"] == 1.0  # 10 s cold start + the calls: all within 60 s
    assert summary["peak_replicas"] >= 2  # both deployments hold a GPU at once
    one = simulate_per_model(target, [Arrival(a.at, model="A") for a in arrivals])
    assert one.deployments == 1 and one.peak_replicas < run.peak_replicas
    # the fleet as one run: every request once, in arrival order, on a replica of its own deployment
    assert [r.index for r in run.result.records] == list(range(len(arrivals)))
    assert [r.arrival_s for r in run.result.records] == sorted(a.at for a in arrivals)
    assert len({r.id for r in run.result.replicas}) == len(run.result.replicas)


def test_merged_runs_pay_and_count_what_the_runs_did() -> None:
    """Two fleets run apart, merged: replica-seconds add up (each replica paid until its own
    fleet's last answer), the samples add up at every instant, requests interleave by arrival."""
    first = SimResult("a", [RequestRecord(0, 0.0, 1, "ok", 5.0, replica=0), RequestRecord(1, 4.0, 1, "ok", 8.0, replica=0)],
                      [Replica(0, 0.0, 2.0, 2.0)], [(0.0, 1, 0, 1), (2.0, 1, 1, 1), (8.0, 1, 1, 0)], 8.0, 3)
    second = SimResult("b", [RequestRecord(0, 1.0, 1, "ok", 20.0, replica=1)],
                       [Replica(0, 1.0, 3.0, 2.0, stopped_s=12.0), Replica(1, 1.0, 3.0, 2.0)],
                       [(1.0, 2, 0, 1), (3.0, 2, 2, 1), (12.0, 1, 1, 1), (20.0, 1, 1, 0)], 20.0, 4)
    merged = merge_runs([first, second], "both")
    assert merged.replica_seconds() == pytest.approx(first.replica_seconds() + second.replica_seconds())
    assert merged.replica_seconds() == pytest.approx(8.0 + 11.0 + 19.0)
    assert [(r.index, r.arrival_s, r.replica) for r in merged.records] == [(0, 0.0, 0), (1, 1.0, 2), (2, 4.0, 0)]
    assert merged.samples == [(0.0, 1, 0, 1), (1.0, 3, 0, 2), (2.0, 3, 1, 2), (3.0, 3, 3, 2), (8.0, 2, 2, 1),
                              (12.0, 1, 1, 1), (20.0, 0, 0, 0)]
    assert (merged.end_s, merged.policy_calls) == (20.0, 7)


def test_with_a_cold_start_in_parts_a_deployment_reads_its_checkpoint_from_disk_once() -> None:
    """Each deployment's checkpoint stays in the node's memory after its first read: its first cold
    start pays the read from disk, later ones the load from memory."""
    arrivals = [Arrival(0.0, model="A"), Arrival(5000.0, model="A")]
    replay = ModelReplay(host_load_s=3.0, disk_load_s=30.0, cold_start_overhead_s=5.0)
    at_zero = {"DiffusionWorker": ["autoscaling_config.initial_replicas=0"]}
    target = replay.apply(load_target(CONFIGS / "ray-default.yaml", cold_start_s=10, deployment_overrides=at_zero),
                          arrivals)
    run = simulate_per_model(target, arrivals)
    starts = [r.ready_s - r.started_s for r in run.result.replicas if r.cold_started]
    assert starts == pytest.approx([35.0, 8.0])
