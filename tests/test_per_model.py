"""The naive per-model fleet (baseline (c)): one deployment per checkpoint, simulated apart (SIMULATION)."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.per_model import merge_runs, simulate_per_model
from benchmarks.sim_breakdown import replica_seconds_by_use
from benchmarks.sim_config import ModelReplay, load_target
from benchmarks.simulate import summarize_per_model
from benchmarks.traces import Arrival
from scheduler.simulation.gpus import GpuSlots
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


def test_merged_runs_scored_from_a_time_keep_each_request_on_its_own_replica() -> None:
    """Scored after a warm-up, a run keeps only the replicas alive then, so its ids have gaps (here
    0 and 3, of 0–3): merged, no two replicas share an id and each request still names the replica
    that served it, so the views by replica (misses by cause, replica-seconds by use) read the
    right one."""
    first = SimResult("a", [RequestRecord(0, 10.0, 1, "ok", 15.0, start_s=12.0, replica=3, call_s=3.0)],
                      [Replica(0, 0.0, 2.0, 2.0, stopped_s=30.0), Replica(3, 9.0, 11.0, 2.0, stopped_s=16.0)], [], 30.0, 0)
    second = SimResult("b", [RequestRecord(0, 12.0, 1, "ok", 20.0, start_s=14.0, replica=1, call_s=6.0)],
                       [Replica(0, 1.0, 3.0, 2.0, stopped_s=4.0), Replica(1, 5.0, 7.0, 2.0, stopped_s=25.0)], [], 25.0, 0)
    merged = merge_runs([first, second], "both")
    ids = [r.id for r in merged.replicas]
    assert len(set(ids)) == len(ids) == 4
    by_id = {r.id: r for r in merged.replicas}
    assert [(rec.arrival_s, by_id[rec.replica].started_s) for rec in merged.records] == [(10.0, 9.0), (12.0, 5.0)]
    assert sum(replica_seconds_by_use(merged).values()) == pytest.approx(merged.replica_seconds())


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


def _two_models(initial: int) -> tuple[list[Arrival], object]:
    """A's requests at 0 and 2 s, B's at 1 s; Ray's default policy, scaling down after 30 s idle."""
    arrivals = [Arrival(0.0, model="A"), Arrival(1.0, model="B"), Arrival(2.0, model="A")]
    start = {"DiffusionWorker": [f"autoscaling_config.initial_replicas={initial}", "autoscaling_config.max_replicas=1",
                                 "autoscaling_config.downscale_delay_s=30"]}
    return arrivals, ModelReplay().apply(load_target(CONFIGS / "ray-default.yaml", cold_start_s=10,
                                                     deployment_overrides=start), arrivals)


def test_deployments_sharing_the_gpus_wait_for_each_other() -> None:
    """With one GPU shared, B's replica waits PENDING while A's holds the GPU, and starts the moment
    A's stops; apart, B starts at once. Every request is still answered (or expires) exactly once."""
    arrivals, target = _two_models(initial=0)
    apart = simulate_per_model(target, arrivals)
    shared = simulate_per_model(target, arrivals, shared_gpus=True)
    assert apart.peak_replicas == 2 and shared.peak_replicas == 1
    a_replica, b_replica = sorted(shared.result.replicas, key=lambda r: r.started_s)
    assert a_replica.stopped_s is not None and b_replica.started_s == pytest.approx(a_replica.stopped_s)
    assert b_replica.started_s > 30  # A's replica keeps its GPU through the downscale delay
    b_apart = [r for r in apart.result.replicas if r.started_s == 1.0]
    assert len(b_apart) == 1 and b_apart[0].ready_s == pytest.approx(11.0)  # apart: B starts when asked for
    assert [r.outcome for r in apart.result.records] == [r.outcome for r in shared.result.records] == ["ok"] * 3
    b_waits = shared.result.records[1].latency_s
    assert b_waits > apart.result.records[1].latency_s + 30


def test_enough_shared_gpus_change_nothing() -> None:
    """A shared cap no deployment reaches gives every request the same fate as running apart."""
    arrivals = [Arrival(float(k) * 37.0, model="ABC"[k % 3]) for k in range(30)]
    target = ModelReplay().apply(load_target(CONFIGS / "ray-default.yaml", cold_start_s=10), arrivals)
    apart = simulate_per_model(target, arrivals)
    shared = simulate_per_model(target.with_overrides(spec={"gpu_slots": 100}), arrivals, shared_gpus=True)
    assert [(r.arrival_s, r.outcome, r.done_s) for r in shared.result.records] == \
        [(r.arrival_s, r.outcome, r.done_s) for r in apart.result.records]


def test_warm_replicas_at_the_start_go_to_the_most_used_checkpoints_as_far_as_the_gpus_go() -> None:
    arrivals = [Arrival(100.0 + k, model=m) for k, m in enumerate("BBBAAC")]
    target = ModelReplay().apply(load_target(CONFIGS / "ray-default.yaml", cold_start_s=10), arrivals)
    shared = simulate_per_model(target.with_overrides(spec={"gpu_slots": 2}), arrivals, shared_gpus=True)
    assert shared.alive_at_start == 2  # initial_replicas 1 each: B's and A's, not C's
    b_and_a, c = shared.result.records[:5], shared.result.records[5]
    assert all(r.outcome == "ok" and not shared.result.replicas[r.replica].cold_started for r in b_and_a)
    assert c.outcome != "ok" and c.replica is None  # both GPUs held (Ray's 600 s downscale delay): C waits out its time


def test_a_gpu_let_go_starts_the_replica_that_waited_longest_in_any_pool() -> None:
    class Pool:
        def __init__(self) -> None:
            self.sim, self.started = None, []

        def start_pending(self, replica: Replica, now: float) -> None:
            self.started.append((replica.id, now))

    first, second = Pool(), Pool()
    gpus = GpuSlots(1)
    assert gpus.take() and not gpus.take()
    gpus.wait(second, Replica(1, 1.0, 0.0, 0.0))
    gpus.wait(first, Replica(2, 2.0, 0.0, 0.0))
    gpus.wait(first, cancelled := Replica(3, 3.0, 0.0, 0.0))
    gpus.cancel(cancelled)
    gpus.let_go(10.0)
    gpus.let_go(20.0)
    assert (second.started, first.started, gpus.held) == ([(1, 10.0)], [(2, 20.0)], 1)
    gpus.let_go(30.0)  # nobody waits: the GPU stays free
    assert gpus.held == 0 and gpus.take(force=True) and gpus.take(force=True) and gpus.held == 2
