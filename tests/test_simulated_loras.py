"""SIMULATION: LoRA adapters on the simulated backend (a load takes ``simulation.lora_load_time_s``;
kept as the diffusers pipeline keeps them), and ``sdserve-bench validate --loras`` sending them."""

from __future__ import annotations

import argparse

import pytest

from benchmarks.loadgen import RequestTemplate
from benchmarks.traces import Arrival
from benchmarks.validate import model_overrides
from models.request import GenerationRequest
from serve.settings import AppSettings


def _request(*loras: str, model: str = "") -> GenerationRequest:
    return GenerationRequest("p", 64, 64, 2, 1.0, 0, model=model, loras=tuple((name, 1.0) for name in loras))


def test_a_simulated_pipeline_loads_each_adapter_once_keeps_its_last_ones_and_says_so(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import models.simulated as simulated
    from serve.worker_setup import load_models

    slept: list[float] = []
    monkeypatch.setattr(simulated.time, "sleep", slept.append)
    settings = AppSettings.model_validate({
        "model": {"id": "a", "backend": "simulated", "catalog": {"b": "simulated"}, "resident_models": 1,
                  "loras": {"L1": "simulated", "L2": "simulated"}, "resident_loras": 1},
        "simulation": {"load_time_s": 0.5, "host_load_time_s": 0.1, "lora_load_time_s": 4.4, "time_scale": 2}})
    catalog = load_models(settings)
    slept.clear()  # the checkpoint's own load
    catalog.prepare(_request("L1", model="simulated:a"))
    assert slept == [2.2] and catalog.adapters() == {"simulated:a": ("L1",)}  # 4.4 s compressed 2×
    catalog.prepare(_request("L1", model="simulated:a"))
    assert slept == [2.2]  # loaded already
    catalog.generate([_request("L2", model="simulated:a")])
    assert slept[:2] == [2.2, 2.2] and catalog.adapters() == {"simulated:a": ("L2",)}  # L1 out: one kept
    catalog.prepare(_request(model="simulated:b"))  # "a" leaves the device, its adapters with it
    assert catalog.adapters() == {}


def test_without_a_lora_load_time_adapters_cost_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    import models.simulated as simulated
    from models.simulated import SimulatedGenerator, SimulationProfile

    slept: list[float] = []
    monkeypatch.setattr(simulated.time, "sleep", slept.append)
    generator = SimulatedGenerator(SimulationProfile(load_time_s=0.0), "x")
    result = generator.generate([_request("L1")])[0]
    assert generator.adapters() == {"simulated:x": ("L1",)} and set(slept) == {0.0}
    assert result.model_load_s < 0.05


def test_validate_declares_the_windows_adapters_and_sends_them() -> None:
    arrivals = [Arrival(0.0, model="M1", loras=("L2:1", "L1:0.5")), Arrival(1.0, model="M1"),
                Arrival(2.0, model="M2", loras=("L2:1",))]
    args = argparse.Namespace(resident_models=1, host_memory_gb=0.0, disk_load_s=35.0, host_load_s=2.8,
                              page_cache_models=4, lora_load_s=4.4)
    overrides = model_overrides(arrivals, args)
    assert overrides[-3:] == ["model.loras.L1=simulated", "model.loras.L2=simulated",
                              "simulation.lora_load_time_s=4.4"]
    assert not [o for o in model_overrides(arrivals[1:2], args) if "lora" in o]  # none asked: none declared
    sent = RequestTemplate(model_prefix="simulated:", loras=True).body(arrivals[0], 0)
    assert sent["model"] == "simulated:M1" and sent["loras"] == [{"id": "L2", "scale": 1.0}, {"id": "L1", "scale": 0.5}]
    assert "loras" not in RequestTemplate(model_prefix="simulated:").body(arrivals[0], 0)


def test_validate_compresses_the_just_in_time_and_urgency_times() -> None:
    """Just-in-time starts and an urgent-first queue given with ``--set`` (trace time) run k× faster
    live: the margin and the urgency horizon shrink with the objective, as the trace's times do."""
    from benchmarks.validate import compressed_overrides

    given = ["autoscaling.policy.just_in_time_margin_s=8", "queue.urgent_within_s=25"]
    overrides, deployment = compressed_overrides("configs/sim-single.yaml", 10.0, given)
    assert overrides[:2] == given  # first, so that the compressed values below win
    assert {"autoscaling.policy.just_in_time_margin_s=0.8", "autoscaling.policy.latency_objective_s=3.0",
            "queue.urgent_within_s=2.5"} <= set(overrides[2:])
    assert deployment == []
