"""Checkpoints in the simulator: residency tiers, and both placements keeping each checkpoint where
it is while a replica holding it is free (SIMULATION)."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import pytest

from scheduler.simulation.fleet import simulate
from scheduler.simulation.models import DISK, HOST, NONE, Residency
from scheduler.simulation.policies import FixedFleet, Observation, _CountsOnly
from scheduler.simulation.records import Replica
from scheduler.simulation.replicas import least_loss_first
from scheduler.simulation.workload import FleetSpec, SimRequest


def test_a_replica_keeps_its_checkpoints_in_tiers_least_recently_used_out() -> None:
    spec = FleetSpec(models_per_replica=1, host_models_per_replica=1, model_load_host_s=3, model_load_disk_s=30)
    shelf = Residency()
    loads = [shelf.load(model, spec) for model in ("A", "B", "A", "A", "C", "B")]
    assert loads == [(DISK, 30), (DISK, 30), (HOST, 3), (NONE, 0), (DISK, 30), (DISK, 30)]
    assert list(shelf.device) == ["B"] and list(shelf.host) == ["C"]


@pytest.mark.parametrize("dispatch", [True, False])
def test_two_checkpoints_alternating_over_two_replicas_load_once_each(dispatch: bool) -> None:
    spec = FleetSpec(initial_replicas=2, gpu_slots=2, max_queued_requests=-1, dispatch=dispatch,
                     shed_hopeless=False, models_per_replica=1, model_load_disk_s=10)
    requests = [SimRequest(20.0 * k, timeout_s=600, model="AB"[k % 2]) for k in range(20)]
    result = simulate(requests, spec, lambda images, pixels, steps: 1.0, FixedFleet(2))
    loads = [r.model_load for r in result.records]
    assert loads[:2] == [DISK, DISK] and set(loads[2:]) == {NONE}
    by_model = {m: {r.replica for r, q in zip(result.records, requests) if q.model == m} for m in "AB"}
    assert len(by_model["A"]) == len(by_model["B"]) == 1 and by_model["A"] != by_model["B"]


def test_models_off_changes_nothing() -> None:
    requests = [SimRequest(float(k), timeout_s=600, model="AB"[k % 2]) for k in range(10)]
    spec = FleetSpec(initial_replicas=1, gpu_slots=1, shed_hopeless=False)
    result = simulate(requests, spec, lambda images, pixels, steps: 0.5, FixedFleet(1))
    assert {r.model_load for r in result.records} == {None}
    assert [r.done_s for r in result.records] == [0.5 + k for k in range(10)]


@pytest.mark.parametrize("preload", [False, True])
def test_replicas_started_for_a_burst_preload_the_checkpoint_it_queues_for(preload: bool) -> None:
    """Two checkpoints' bursts reach a fleet at zero: with preloading each new replica's cold start
    loads a checkpoint the queue asks for, so its first calls load nothing; without, every replica
    starts with the default and the first call for A or B on it loads from disk."""
    from scheduler.autoscaling import AutoscalerConfig
    from scheduler.simulation.policies import SdserveLoop

    spec = FleetSpec(initial_replicas=0, gpu_slots=4, max_queued_requests=-1, dispatch=True, shed_hopeless=False,
                     models_per_replica=1, model_load_disk_s=30, default_model="D", model_preload=preload,
                     cold_start_s=20)
    requests = [SimRequest(0.01 * k, timeout_s=600, model="AB"[k % 2]) for k in range(8)]
    policy = SdserveLoop("sdserve", AutoscalerConfig(min_replicas=0, max_replicas=4))
    result = simulate(requests, spec, lambda images, pixels, steps: 1.0, policy)
    first_calls = {}
    for record in sorted(result.records, key=lambda r: r.start_s):
        first_calls.setdefault(record.replica, record.model_load)
    assert len(first_calls) >= 2  # the burst started several replicas
    assert set(first_calls.values()) == ({NONE} if preload else {DISK})


@pytest.mark.parametrize("own_host_memory, recency", [
    (0, ["B", "C"]),  # the node's page cache only: B's files were last used when B was read, before C
    (1, ["C", "B"]),  # replicas keep what leaves their GPU in host memory: B, evicted last, is newest
])
def test_a_nodes_host_memory_is_shared_by_its_replicas_and_keeps_a_copy(own_host_memory: int,
                                                                        recency: list[str]) -> None:
    spec = FleetSpec(models_per_replica=1, host_models_per_node=2, model_load_host_s=3, model_load_disk_s=30,
                     host_models_per_replica=own_host_memory)
    first, second, third = Residency(), Residency(), Residency()
    second.host = third.host = first.host  # one node
    assert first.load("A", spec) == (DISK, 30) and list(first.host) == ["A"]  # the node keeps what it read
    assert second.load("A", spec, now=10) == (DISK, pytest.approx(20 + 3))  # while it is read: waits for the read
    assert third.load("A", spec, now=30) == (HOST, 3)  # once read, another replica copies it from there
    assert first.load("B", spec, now=40) == (DISK, 30)
    assert first.load("C", spec, now=80) == (DISK, 30)  # the two most recently used stay: B and C
    assert list(first.host) == recency and second.load("B", spec, now=120) == (HOST, 3)


def test_a_checkpoint_in_the_nodes_memory_loads_where_the_coldest_checkpoints_are() -> None:
    """C is in the node's memory, so every replica would copy it from there: the copy goes to the
    replica whose checkpoint was wanted longest ago (B), not the one holding the hot A."""
    from scheduler.simulation.models import dispatcher_choice

    node: OrderedDict[str, float] = OrderedDict(C=0.0)
    hot, cold = (Replica(k, 0.0, 0.0, 0.0, models=Residency(device=OrderedDict({m: 0.0}), host=node))
                 for k, m in enumerate("AB"))
    assert dispatcher_choice([hot, cold], "C", last_sent={"A": 50.0, "B": 10.0}) is cold
    assert dispatcher_choice([hot, cold], "A", last_sent={"A": 50.0, "B": 10.0}) is hot


def test_loras_load_once_per_checkpoint_and_leave_with_it() -> None:
    spec = FleetSpec(models_per_replica=1, loras_per_replica=2, lora_load_s=4)
    shelf = Residency()
    shelf.load("A", spec)
    assert shelf.load_loras("A", ("L1:1", "L2:0.8"), spec) == (2, 8)
    assert shelf.load_loras("A", ("L1:0.5",), spec) == (0, 0)  # another scale, the same adapter
    assert ("A", "L2") in shelf.loras and ("A", "L3") not in shelf.loras
    assert shelf.load_loras("A", ("L3:1",), spec) == (1, 4) and list(shelf.loras) == [("A", "L1"), ("A", "L3")]
    shelf.load("B", spec)  # A leaves the GPU: its adapters with it
    assert not shelf.loras


@pytest.mark.parametrize("blind", [False, True])
def test_the_dispatcher_sends_a_lora_request_where_its_adapter_is(blind: bool) -> None:
    """Two replicas hold the same checkpoint; one has loaded L1. Requests alternate between L1 and
    none: the dispatcher keeps L1 on the replica that has it (one LoRA load); the model-blind
    baseline sends each to the first free replica and loads L1 wherever it lands."""
    spec = FleetSpec(initial_replicas=2, gpu_slots=2, max_queued_requests=-1, dispatch=True, shed_hopeless=False,
                     models_per_replica=1, loras_per_replica=4, lora_load_s=4, default_model="A",
                     model_blind=blind)
    requests = [SimRequest(10.0 * k, timeout_s=600, model="A", loras=("L1:1",) if k % 2 else ()) for k in range(12)]
    # two at a time so both replicas are free and chosen between
    requests += [SimRequest(200.0 + 10.0 * k + d, timeout_s=600, model="A", loras=("L1:1",) if d else ())
                 for k in range(6) for d in (0, 0.001)]
    result = simulate(requests, spec, lambda images, pixels, steps: 1.0, FixedFleet(2))
    lora_loads = sum(r.lora_loads for r in result.records)
    assert lora_loads == (2 if blind else 1)


def test_a_prefetched_checkpoint_loads_from_host_memory_once_its_read_is_done() -> None:
    """``prefetch`` starts a disk read into the node's memory: a load before it completes waits for
    the rest of the read (still a disk load), one after it is a host load; a copy there already is
    not read again."""
    from collections import OrderedDict

    from scheduler.simulation.models import prefetch

    spec = FleetSpec(models_per_replica=1, host_models_per_node=2, model_load_host_s=3, model_load_disk_s=30)
    node: OrderedDict[str, float] = OrderedDict()
    early, late = Residency(host=node), Residency(host=node)
    assert prefetch(node, "A", 100.0, spec) and prefetch(node, "B", 100.0, spec)
    assert not prefetch(node, "A", 110.0, spec)  # being read already
    assert early.load("A", spec, now=110.0) == (DISK, pytest.approx(17 + 3))  # 27 s read, 10 s of it gone
    assert late.load("B", spec, now=200.0) == (HOST, 3)
    assert prefetch(node, "C", 200.0, spec) and "A" not in node  # least recently used out


@pytest.mark.parametrize("prefetching", [False, True])
def test_a_request_waiting_for_a_start_has_its_checkpoint_read_meanwhile(prefetching: bool) -> None:
    """One request for B reaches a fleet at zero (every replica starts with D): with the prefetch its
    checkpoint is read while the replica starts (20 s), so the load after the start takes the last
    7 s of the 27 s read plus the 3 s copy; without it, the whole 30 s from disk."""
    from scheduler.autoscaling import AutoscalerConfig
    from scheduler.simulation.policies import SdserveLoop

    spec = FleetSpec(initial_replicas=0, gpu_slots=2, max_queued_requests=-1, dispatch=True, shed_hopeless=False,
                     models_per_replica=1, host_models_per_node=4, model_load_host_s=3, model_load_disk_s=30,
                     default_model="D", cold_start_s=20, cold_start_jitter_s=0, host_prefetch=prefetching)
    policy = SdserveLoop("sdserve", AutoscalerConfig(min_replicas=0, max_replicas=2))
    result = simulate([SimRequest(0.0, timeout_s=600, model="B")], spec, lambda images, pixels, steps: 1.0, policy)
    record = result.records[0]
    assert record.model_load == DISK
    assert record.done_s - spec.request_overhead_s == pytest.approx(20.0 + (10.0 if prefetching else 30.0) + 1.0,
                                                                    abs=0.5)


@pytest.mark.parametrize("config, sdserve_features", [("single.yaml", True), ("ray-default.yaml", False),
                                                      ("single.yaml#blind#queue.model_aware=false", False)])
def test_only_sdserves_dispatcher_preloads_and_prefetches(config: str, sdserve_features: bool) -> None:
    """Ray cannot tell a new replica what to load, nor read a checkpoint ahead (live, both are the
    ingress dispatcher's): the simulated Ray baseline and the model-blind one get neither."""
    from benchmarks.config_spec import parse_config_spec
    from benchmarks.sim_config import load_target
    from tests.conftest import CONFIGS

    parsed = parse_config_spec(str(CONFIGS / config), [], [])
    spec = load_target(parsed.path, 22.7, parsed.overrides, parsed.deployment_overrides).spec
    assert (spec.model_preload, spec.host_prefetch) == (sdserve_features, sdserve_features)


@pytest.mark.parametrize("told", [True, False])
def test_a_request_behind_a_load_from_disk_gets_a_replica_of_its_own(told: bool) -> None:
    """One warm replica; a call for X loads from disk (30 s, as a call for Y showed before), then a
    request for the resident D queues behind it. Told where each request's checkpoint comes from,
    the loop starts a replica for D (ready in 10 s); not told (``autoscaling.per_request_loads``
    false), D waits the 30 s out."""
    from scheduler.autoscaling import AutoscalerConfig
    from scheduler.simulation.policies import SdserveLoop

    spec = FleetSpec(initial_replicas=1, gpu_slots=2, max_queued_requests=-1, dispatch=True, shed_hopeless=False,
                     models_per_replica=3, model_load_disk_s=30, default_model="D", cold_start_s=10,
                     per_request_loads=told)
    requests = [SimRequest(0.0, timeout_s=600, model="Y"), SimRequest(100.0, timeout_s=600, model="X"),
                SimRequest(101.0, timeout_s=600, model="D")]
    policy = SdserveLoop("sdserve", AutoscalerConfig(max_replicas=2, latency_objective_s=30, default_cold_start_s=10,
                                                     scale_to_zero_after_s=600))
    result = simulate(requests, spec, lambda images, pixels, steps: 1.0, policy)
    assert [r.model_load for r in result.records[:2]] == [DISK, DISK]
    assert policy.driver.collector.tier_load[DISK].value == pytest.approx(30.0)
    latency = result.records[2].latency_s
    assert (latency < 15 and result.replica_starts() == 1) if told else (latency > 30 and result.replica_starts() == 0)


@pytest.mark.parametrize("wait_for_reads", [True, False])
def test_a_request_behind_one_whose_checkpoint_is_read_does_not_wait_for_the_read(wait_for_reads: bool) -> None:
    """One replica holding D, never stopped; a request for X arrives (read from disk: 27 s, then a
    3 s copy), then one for D a second later. Waiting in the queue for its read, X leaves the replica
    to D, which is done at 2 s, and goes once its read ends (27 + 3 + 1 s: no later than it would
    have); sent at once, X holds the replica through its read, D waits behind it and then copies D
    back (X took its place): done at 35 s. Either way X's checkpoint was read from disk for it."""
    spec = FleetSpec(initial_replicas=1, gpu_slots=1, max_queued_requests=-1, dispatch=True, shed_hopeless=False,
                     models_per_replica=1, host_models_per_node=4, model_load_host_s=3, model_load_disk_s=30,
                     default_model="D", host_prefetch=True, wait_for_reads=wait_for_reads)
    requests = [SimRequest(0.0, timeout_s=600, model="X"), SimRequest(1.0, timeout_s=600, model="D")]
    result = simulate(requests, spec, lambda images, pixels, steps: 1.0, FixedFleet(1))
    x, d = result.records
    assert x.model_load == DISK and d.model_load == (NONE if wait_for_reads else HOST)
    assert x.done_s == pytest.approx(31.0, abs=0.1)
    assert d.done_s == pytest.approx(2.0 if wait_for_reads else 35.0, abs=0.1)
    assert x.waited_for_read is wait_for_reads


def _holding(rid: int, *models: str, busy: bool = False) -> Replica:
    return Replica(rid, 0.0, 0.0, 0.0, busy=busy, models=Residency(device=OrderedDict.fromkeys(models)))


@pytest.mark.parametrize("replicas, uses, expected", [
    # newest first in; the one whose own checkpoint saw fewer requests in the last hour goes first
    ([_holding(2, "B"), _holding(1, "A")], {"A": [1000.0], "B": [3000.0, 3500.0]}, [1, 2]),
    # a checkpoint another replica holds too is no loss: 2 loses nothing
    ([_holding(2, "B"), _holding(1, "A", "B")], {"A": [3500.0], "B": [3000.0, 3500.0]}, [2, 1]),
    # requests more than an hour old do not count: both lose nothing, Ray's order stands
    ([_holding(2, "B"), _holding(1, "A")], {"A": [100.0], "B": [200.0, 300.0]}, [2, 1]),
    # busy or idle does not count: the busy one holds nothing wanted, it goes first (it drains)
    ([_holding(2, "B", busy=True), _holding(1, "A")], {"A": [3000.0] * 5}, [2, 1]),
    ([_holding(2, "B"), _holding(1, "A", busy=True)], {"B": [3000.0] * 5}, [1, 2]),
])
def test_least_loss_first(replicas: list[Replica], uses: dict[str, list[float]], expected: list[int]) -> None:
    assert [r.id for r in least_loss_first(replicas, uses, now=4000.0)] == expected


@dataclass
class _TwoThenOne(_CountsOnly):
    """Two replicas until ``at_s``, then one."""

    at_s: float
    name: str = "two-then-one"

    def __call__(self, obs: Observation) -> int:
        return 2 if obs.now < self.at_s else 1

    def review_at(self, now: float) -> float | None:
        return self.at_s if now < self.at_s else None


@pytest.mark.parametrize("stop_order, last_load", [("ray", DISK), ("least-loss", NONE)])
def test_a_scale_down_stops_the_newest_replica_or_the_one_whose_checkpoint_is_least_wanted(
        stop_order: str, last_load: str) -> None:
    """Both replicas start with A; the newer one serves B four times, the older one A once. Ray
    stops the newer and B's next request loads it from disk again; ``least-loss`` stops the older."""
    spec = FleetSpec(initial_replicas=2, gpu_slots=2, max_queued_requests=-1, dispatch=True, shed_hopeless=False,
                     models_per_replica=1, default_model="A", model_load_disk_s=10, stop_order=stop_order)
    requests = [SimRequest(0.0, timeout_s=600, model="A")] + [
        SimRequest(t, timeout_s=600, model="B") for t in (0.1, 20.0, 40.0, 60.0, 200.0)]
    result = simulate(requests, spec, lambda images, pixels, steps: 1.0, _TwoThenOne(100.0))
    assert [r.replica for r in result.records[:5]] == [0, 1, 1, 1, 1]
    assert [r.model_load for r in result.records[:5]] == [NONE, DISK, NONE, NONE, NONE]
    assert result.records[5].model_load == last_load
    assert result.records[5].replica == (0 if stop_order == "ray" else 1)


def test_an_unknown_stop_order_is_refused() -> None:
    with pytest.raises(ValueError, match="stop_order"):
        FleetSpec(stop_order="oldest")


@pytest.mark.parametrize("counted", [False, True])
def test_the_control_loop_is_told_each_requests_adapters_when_it_counts_them(counted: bool) -> None:
    """With ``per_request_adapters`` each accepted request tells the loop how many adapters it
    names (else nothing), and each reply how many its call's request named, either way."""
    accepted: dict[str, int | None] = {}
    replied: list[int] = []

    @dataclass
    class Listening(FixedFleet):
        def accepted(self, key, job) -> None:  # type: ignore[no-untyped-def]
            accepted[key] = job.adapters

        def replied(self, call) -> None:  # type: ignore[no-untyped-def]
            replied.append(call.adapters)

    spec = FleetSpec(initial_replicas=1, gpu_slots=1, models_per_replica=1, loras_per_replica=4,
                     default_model="a", per_request_adapters=counted)
    requests = [SimRequest(0.0, model="a", loras=("x:1.0", "y:0.5")), SimRequest(5.0, model="a")]
    simulate(requests, spec, lambda images, pixels, steps: 1.0, Listening(1))
    assert accepted == ({"0": 2, "1": 0} if counted else {"0": None, "1": None})
    assert replied == [2, 0]
