"""The checkpoint catalog on a real Ray Serve: ``configs/cpu.yaml`` serves four tiny checkpoints
(the same architecture, weights from four seeds); a request picks one with ``model``."""

from __future__ import annotations

import base64
import functools
import time
from pathlib import Path

import pytest

from models.catalog import DISK, HOST, RESIDENT, CatalogGenerator, ModelUnavailable, UnknownModel
from models.generator import GroupedGenerator
from models.host_tier import HostTier, HostWeights, restore, snapshot
from models.request import GenerationRequest, GenerationResult
from tests.conftest import Deployed

CHECKPOINTS = ["tiny", "tiny-1", "tiny-2", "tiny-3"]
LORAS = ["tiny-lora-1", "tiny-lora-2", "tiny-lora-3"]


@pytest.mark.ray
@pytest.mark.app("cpu")
def test_the_catalog_is_listed_and_each_checkpoint_draws_its_own_image(app: Deployed) -> None:
    from openai import OpenAI

    client = OpenAI(base_url=f"{app.url}/v1", api_key="unused", max_retries=0)
    listed = client.models.list().data
    assert [(m.id, m.kind) for m in listed] == [(c, "checkpoint") for c in CHECKPOINTS] + [(n, "lora") for n in LORAS]

    def image(model: str) -> bytes:
        result = client.images.generate(prompt="a lighthouse", model=model, size="64x64", response_format="b64_json",
                                        extra_body={"seed": 7, "num_inference_steps": 4})
        return base64.b64decode(result.data[0].b64_json)

    images = {model: image(model) for model in CHECKPOINTS}
    assert len(set(images.values())) == len(CHECKPOINTS)  # every checkpoint draws its own
    assert image("tiny-2") == images["tiny-2"]  # and the same one twice
    response = app.client.post("/v1/images/generations", json={"prompt": "a", "model": "tiny-2", "size": "64x64",
                                                               "num_inference_steps": 2})
    assert response.status_code == 200 and response.headers["x-model"] == "tiny-2"
    unknown = app.client.post("/v1/images/generations", json={"prompt": "a", "model": "sd-xl"})
    assert unknown.status_code == 404
    error = unknown.json()["error"]
    assert (error["code"], error["param"]) == ("model_not_found", "model") and "tiny-3" in error["message"]


@pytest.mark.ray
@pytest.mark.app("cpu")
def test_a_lora_at_scale_0_is_the_base_image_at_scale_1_another_and_the_same_twice(app: Deployed) -> None:
    def image(loras: list[dict] | None, model: str = "tiny") -> str:
        response = app.client.post("/v1/images/generations", json={
            "prompt": "a lighthouse", "model": model, "size": "64x64", "seed": 5, "num_inference_steps": 3,
            **({"loras": loras} if loras is not None else {})})
        assert response.status_code == 200, response.text
        return response.json()["data"][0]["b64_json"]

    base = image(None)
    assert image([{"id": "tiny-lora-1", "scale": 0.0}]) == base
    one = image([{"id": "tiny-lora-1", "scale": 1.0}])
    assert one != base and image([{"id": "tiny-lora-1"}]) == one  # scale 1 by default; the same twice
    two = image([{"id": "tiny-lora-1"}, {"id": "tiny-lora-2", "scale": 0.8}])
    assert two not in (base, one)
    assert image(None) == base  # adapters off again for a request without them
    assert image([{"id": "tiny-lora-3"}], model="tiny-2") != image(None, model="tiny-2")
    unknown = app.client.post("/v1/images/generations", json={"prompt": "a", "loras": [{"id": "nope"}]})
    assert unknown.status_code == 404 and unknown.json()["error"]["param"] == "loras"
    # the replica's replies said which adapters it keeps loaded where: the dispatcher places by them
    replicas = app.client.get("/v1/scheduler").json()["replicas"]
    loaded = {adapter for replica in replicas.values() for adapter in replica["adapters"]}
    assert {"tiny/tiny-lora-1", "tiny/tiny-lora-2", "tiny-2/tiny-lora-3"} <= loaded, replicas
    cold_starts = app.client.get("/v1/scheduler").json()["cold_starts"]  # each replica's own, as it replied
    assert {c["replica"] for c in cold_starts} == set(replicas) and all(c["cold_start_s"] > 0 for c in cold_starts)


@pytest.mark.ray
@pytest.mark.side_run
@pytest.mark.app("cpu", "model.resident_models=1", "model.host_memory_gb=0.5", "model.catalog.broken=/tmp",
                 deployments={"DiffusionWorker": ["num_replicas=2"]})
def test_checkpoints_stay_where_they_are_and_come_back_from_host_memory_and_a_broken_one_fails_alone(
        app: Deployed) -> None:
    def idle() -> dict[str, dict]:
        """The dispatcher's view once both replicas are free (the previous call's slot released)."""
        for _ in range(100):
            replicas = app.client.get("/v1/scheduler").json()["replicas"]
            if len(replicas) == 2 and all(r["free_slots"] == 1 for r in replicas.values()):
                return replicas
            time.sleep(0.05)
        raise AssertionError(f"replicas never both free: {replicas}")

    def post(model: str, loras: list[dict] | None = None) -> tuple[str, str, str]:
        idle()
        response = app.client.post("/v1/images/generations", json={
            "prompt": "a lighthouse", "model": model, "size": "64x64", "seed": 3, "num_inference_steps": 2,
            **({"loras": loras} if loras else {})})
        assert response.status_code == 200, response.text
        return response.headers["x-model-load"], response.headers["x-replica-id"], response.json()["data"][0]["b64_json"]

    # both replicas start on the default: a LoRA's requests go where it is loaded, the others elsewhere
    lora = [post("tiny", loras=[{"id": "tiny-lora-1"}])[1], post("tiny")[1], post("tiny", loras=[{"id": "tiny-lora-1"}])[1]]
    assert lora[0] == lora[2] != lora[1], lora

    # two checkpoints alternate over two replicas that hold one each: each loads once, then stays
    served = [post(model) for model in ("tiny-1", "tiny-2") * 4]
    assert [load for load, _, _ in served] == ["disk", "disk"] + ["none"] * 6
    holder = {"tiny-1": served[0][1], "tiny-2": served[1][1]}
    assert holder["tiny-1"] != holder["tiny-2"]
    assert all(replica == holder[model] for (_, replica, _), model in zip(served, ("tiny-1", "tiny-2") * 4))
    assert len({image for _, _, image in served}) == 2  # each checkpoint its own image, the same each time

    # a third checkpoint goes to either; the one it displaces waits in that replica's host memory
    load, third_on, _ = post("tiny-3")
    displaced = next(model for model, replica in holder.items() if replica == third_on)
    assert load == "disk"
    load, replica, image = post(displaced)  # routed to the replica holding it in host memory
    assert (load, replica) == ("host", third_on) and image == served[0 if displaced == "tiny-1" else 1][2]
    residency = idle()[third_on]
    assert (residency["resident"], residency["host"]) == ([displaced], ["tiny", displaced, "tiny-3"])

    # a checkpoint that cannot load fails only its own requests, with the reason; the rest serve on
    broken = app.client.post("/v1/images/generations", json={"prompt": "a", "model": "broken", "size": "64x64"})
    assert broken.status_code == 500
    assert "checkpoint 'broken' could not be loaded" in broken.json()["error"]["message"]
    assert "no model_index.json" in broken.json()["error"]["message"]
    # (the broken load went to the replica whose checkpoint was wanted longest ago, and emptied its
    # device first: what it held comes back from host memory or disk)
    assert post("tiny-2")[0] in ("none", "host", "disk") and post("tiny")[0] in ("none", "host", "disk")
    metrics = app.client.get("/metrics").text
    counts = {tier: float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines()
              if line.startswith("sdserve_call_model_load_seconds_count") for tier in ("disk", "host")
              if f'tier="{tier}"' in line}
    assert counts["disk"] >= 3 and counts["host"] >= 1  # tiny-1, tiny-2, tiny-3 from disk; one from host
    # each of them was held nowhere when its first request queued: the ingress read it ahead
    read_ahead = {line.split('model="')[1].split('"')[0] for line in metrics.splitlines()
                  if line.startswith("sdserve_prefetches_total{") and not line.endswith(" 0.0")}
    assert {"tiny-1", "tiny-2", "tiny-3"} <= read_ahead, read_ahead


class _Fake(GroupedGenerator):
    """A checkpoint's generator that answers with its name; its "weights" are its name."""

    built: list[str] = []

    def __init__(self, name: str) -> None:
        self.model_name, self.device, self.counter, self.seen = name, "cpu", None, []
        _Fake.built.append(name)

    def export_weights(self) -> HostWeights:
        return HostWeights({"unet": {"w": self.model_name}}, nbytes=100)

    def swap_in(self, weights: HostWeights, model_name: str) -> None:
        if weights.tensors["unet"]["w"] == "other-architecture":
            raise ValueError("differs")
        self.model_name, self.seen = weights.tensors["unet"]["w"], []

    def _generate_group(self, group, should_stop, on_latents=None):
        self.seen.append([r.prompt for r in group])
        return [GenerationResult([self.model_name.encode()], 2, 2) for _ in group]


def _catalog(resident: int = 0, host_bytes: int = 0, broken: str = "") -> CatalogGenerator:
    _Fake.built = []

    def loader(name: str) -> _Fake:
        if name == broken:
            raise OSError(f"no weights for {name}")
        return _Fake(name)

    return CatalogGenerator({name: functools.partial(loader, name) for name in "abcd"}, "a", resident, host_bytes)


def _request(prompt: str, model: str = "") -> GenerationRequest:
    return GenerationRequest(prompt, 64, 64, 2, 1.0, 0, model=model)


def test_a_catalog_says_each_resident_checkpoints_adapters_and_forgets_an_evicted_ones() -> None:
    catalog = _catalog(resident=2)
    catalog.generate([_request("p", "b")])  # "a" (the start) and "b" resident
    catalog.loaded["a"].adapters = lambda: {"a": ("L1", "L2")}  # as a pipeline that loaded them says
    assert catalog.adapters() == {"a": ("L1", "L2")}  # "b", resident without adapters, is left out
    catalog.generate([_request("p", "c")])  # evicts "a", the least recently used
    assert "a" not in catalog.loaded and catalog.adapters() == {}


def test_a_catalog_sends_each_group_to_its_checkpoint_and_refuses_an_unknown_one() -> None:
    catalog = _catalog()
    assert _Fake.built == ["a", "b", "c", "d"]  # resident 0: all loaded at the start
    assert all(g.counter is catalog.counter for g in catalog.loaded.values())  # one call at a time
    results = catalog.generate([_request("p1"), _request("p2", "b"), _request("p3", "a"), _request("p4", "b")])
    assert [r.images[0] for r in results] == [b"a", b"b", b"a", b"b"]
    assert catalog.loaded["a"].seen == [["p1"], ["p3"]] and catalog.loaded["b"].seen == [["p2", "p4"]]
    assert {r.model_load for r in results} == {RESIDENT}
    with pytest.raises(UnknownModel):
        catalog.generate([_request("p", "z")])


def test_a_catalog_with_fewer_resident_loads_on_use_and_unloads_the_least_recently_used() -> None:
    catalog = _catalog(resident=2)
    assert _Fake.built == ["a"]
    tiers = [catalog.generate([_request("p", m)])[0].model_load for m in ("b", "a", "c", "a", "b")]
    assert tiers == [DISK, RESIDENT, DISK, RESIDENT, DISK]  # c evicted b (least recently used), b evicted c
    assert list(catalog.loaded) == ["a", "b"] and catalog.loads == {DISK: 3}


def test_the_host_tier_takes_what_leaves_the_device_and_gives_it_back_into_a_built_pipeline() -> None:
    catalog = _catalog(resident=2, host_bytes=250)  # room for two snapshots of 100 bytes
    served = [catalog.generate([_request("p", m)])[0] for m in ("b", "c", "a", "d", "b", "c")]
    # a and b come back from host memory; c had been dropped from it (two snapshots fit), so disk
    assert [r.model_load for r in served] == [DISK, DISK, HOST, DISK, HOST, DISK]
    assert [r.images[0] for r in served] == [b"b", b"c", b"a", b"d", b"b", b"c"]  # each call ran its own weights
    assert _Fake.built == ["a", "b", "c", "d", "c"]  # what came from host memory was not built again
    assert list(catalog.host.entries) == ["a", "d"] and catalog.loads == {DISK: 4, HOST: 2}


def test_weights_of_another_architecture_come_from_disk_instead() -> None:
    catalog = _catalog(resident=1, host_bytes=1000)
    catalog.host.put("b", HostWeights({"unet": {"w": "other-architecture"}}, nbytes=100))
    assert catalog.generate([_request("p", "b")])[0].model_load == DISK
    assert _Fake.built == ["a", "b"] and list(catalog.loaded) == ["b"]


def test_a_checkpoint_that_cannot_load_fails_its_calls_and_the_catalog_serves_on() -> None:
    catalog = _catalog(broken="c")  # resident 0: the whole catalog at the start, c failing
    assert list(catalog.loaded) == ["a", "b", "d"]
    with pytest.raises(ModelUnavailable, match="checkpoint 'c' could not be loaded: no weights for c"):
        catalog.generate([_request("p", "c")])
    assert [r.images[0] for r in catalog.generate([_request("p", "b"), _request("p", "a")])] == [b"b", b"a"]
    with pytest.raises(ModelUnavailable):
        _catalog(broken="a")  # but a replica without its default cannot start


def test_the_host_tier_keeps_within_its_measured_bytes_least_recently_used_out() -> None:
    tier = HostTier(budget_bytes=300)
    assert tier.put("a", HostWeights({}, 100)) == [] and tier.put("b", HostWeights({}, 150)) == []
    assert tier.get("a") is not None  # a is now the most recently used
    assert tier.put("c", HostWeights({}, 100)) == ["b"] and list(tier.entries) == ["a", "c"]
    assert tier.put("huge", HostWeights({}, 301)) == ["huge"] and tier.used_bytes == 200


def test_host_weights_copy_back_into_a_real_pipeline_exactly() -> None:
    import torch

    from models.loader import ModelSpec, load_pipeline

    one, two = load_pipeline(ModelSpec("tiny:1")), load_pipeline(ModelSpec("tiny:2"))
    weights = snapshot(one)
    assert weights.nbytes == sum(p.numel() * p.element_size() for c in ("unet", "vae", "text_encoder")
                                 for p in getattr(one, c).state_dict().values())
    restore(two, weights)
    assert all(torch.equal(a, b) for a, b in zip(one.unet.state_dict().values(), two.unet.state_dict().values()))
    two.unet.conv_in.weight.data += 1  # a copy, not shared storage
    assert not torch.equal(one.unet.conv_in.weight, two.unet.conv_in.weight)


@pytest.mark.parametrize(("spec", "seed"), [("tiny", 0), ("tiny:3", 3), ("tiny:x", None), ("tinyish", None),
                                            ("stable-diffusion-v1-5/stable-diffusion-v1-5", None)])
def test_tiny_specs_name_their_seed(spec: str, seed: int | None) -> None:
    from models.loader import tiny_seed

    assert tiny_seed(spec) == seed


@pytest.mark.parametrize(("source", "family"), [
    ("tiny-lora:2", ("tiny-lora", 2)), ("sd15-shaped-lora:1", ("sd15-shaped-lora", 1)), ("tiny-lora", None),
    ("sd15-shaped-lora:x", None), ("other-lora:1", None), ("/loras/style.safetensors", None)])
def test_built_lora_sources_name_their_family_and_seed(source: str, family: tuple[str, int] | None) -> None:
    from models.built_loras import built_lora_family

    assert built_lora_family(source) == family


def test_an_adapter_source_that_is_neither_built_nor_on_disk_is_refused_by_name(tmp_path: Path) -> None:
    from models.built_loras import resolve_lora

    with pytest.raises(FileNotFoundError, match="'missing.safetensors'.*sd15-shaped-lora:N"):
        resolve_lora("missing.safetensors", tmp_path)
    (tmp_path / "style.safetensors").write_bytes(b"")
    assert resolve_lora(str(tmp_path / "style.safetensors")) == str(tmp_path / "style.safetensors")


def test_a_worker_says_where_each_checkpoint_came_from_and_sheds_a_job_its_load_would_make_late() -> None:
    from scheduler.admission import ReplicaRules
    from scheduler.outcomes import Outcome
    from serve.execution import JobRunner
    from serve.protocol import EventKind, WorkerJob
    from tests.test_same_rules import STEP_S, Clock, SteppingBackend

    clock, load_s = Clock(), 5.0

    def loader(name: str) -> SteppingBackend:
        if name == "broken":
            raise OSError("weights truncated")
        clock.now += load_s
        return SteppingBackend(clock)

    names = ("a", "b", "c", "broken")
    catalog = CatalogGenerator({n: functools.partial(loader, n) for n in names}, "a", resident=1, clock=clock)
    runner = JobRunner(catalog, "r", ReplicaRules(shed_hopeless=True), clock=clock)
    started: dict[str, tuple[str, float]] = {}

    def run(job_id: str, model: str, steps: int, time_left: float | None = None) -> object:
        request = GenerationRequest(job_id, 64, 64, steps, 1.0, 0, model=model)
        job = WorkerJob(request, job_id, clock.now, None if time_left is None else clock.now + time_left, job_id=job_id)

        def notify(jid: str, event: object) -> None:
            if getattr(event, "kind", None) == EventKind.STARTED:
                started[jid] = (event.model_load, event.model_load_s)  # type: ignore[attr-defined]

        [reply] = runner.run([job], lambda j: False, notify)
        return reply

    for k, steps in enumerate((2, 4, 8, 2)):  # the replica learns its speed on its resident checkpoint
        assert run(f"warm{k}", "a", steps).outcome == Outcome.OK
    tight = 4 * STEP_S + 1.0  # enough for the call, not for a load as well
    first = run("b", "b", 4, tight)  # no load measured yet: nothing to shed it by; it loads and is late
    assert first.outcome == Outcome.DEADLINE and first.steps_done == 1  # stopped at its first step
    assert started["b"] == (DISK, load_s)  # the stream's started event says so before the first step
    shed = run("c", "c", 4, tight)  # now the replica knows a load from disk takes 5 s
    assert shed.outcome == Outcome.SHED and "loading its checkpoint" in shed.message
    again = run("b-again", "b", 4, tight)
    assert again.outcome == Outcome.OK and again.call.model_load == RESIDENT and started["b-again"] == (RESIDENT, 0.0)
    loaded = run("c-loose", "c", 4)
    assert (loaded.outcome, loaded.call.model_load, loaded.call.model_load_s) == (Outcome.OK, DISK, pytest.approx(load_s))
    failed = run("x", "broken", 4)
    assert failed.outcome == Outcome.ERROR and "checkpoint 'broken' could not be loaded: weights truncated" in failed.message
    assert "x" not in started and run("after", "c", 2).outcome == Outcome.OK  # the replica serves on


def test_a_pipeline_keeps_at_most_its_resident_loras_and_reloads_a_deleted_one_exactly(
        recwarn: pytest.WarningsRecorder) -> None:
    from models.built_loras import resolve_lora
    from models.generator import load_generator
    from models.loader import ModelSpec

    loras = {f"l{k}": resolve_lora(f"tiny-lora:{k}") for k in (1, 2)}
    generator = load_generator(ModelSpec("tiny", device="cpu"), loras=loras, resident_loras=1)

    def image(*names: str) -> bytes:
        request = GenerationRequest("a lighthouse", 64, 64, 2, 1.0, 5, loras=tuple((n, 1.0) for n in names))
        return generator.generate([request])[0].images[0]

    first = image("l1")
    assert image("l2") != first and list(generator.loaded_adapters) == ["l2"]  # l1 deleted for l2
    assert set(generator.pipeline.get_list_adapters()["unet"]) == {"l2"}
    assert image("l1", "l2") != first and list(generator.loaded_adapters) == ["l1", "l2"]  # a call's own stay
    assert image("l1") == first and list(generator.loaded_adapters) == ["l1"]  # l2 deleted; l1 as before
    assert generator.adapters() == {"tiny": ("l1",)}  # what its replica's replies say
    assert not [w for w in recwarn if "peft_config" in str(w.message)]  # several adapters are the design


def test_a_second_text_encoder_adapter_loads_without_a_false_missing_keys_report_and_touches_nothing(
        tmp_path: Path) -> None:
    """transformers reports every parameter a second text-encoder adapter's file lacks as MISSING,
    "newly initialized"; the generator drops that report, and nothing was in fact touched: the base
    weights and the first adapter's are as before, and each adapter still changes the image."""
    import logging

    import torch

    from models.adapters import TRANSFORMERS_PEFT_LOGGER
    from models.built_loras import LoraShape, build_lora
    from models.generator import load_generator
    from models.loader import ModelSpec
    from models.tiny import ensure_tiny_model

    shape = LoraShape("test", 4, ("to_q",), ("q_proj", "k_proj"), ensure_tiny_model, 0.5, False)
    for seed in (1, 2):
        build_lora(shape, seed, ensure_tiny_model(), tmp_path / f"te{seed}")
    generator = load_generator(ModelSpec("tiny", device="cpu"), loras={f"te{k}": str(tmp_path / f"te{k}") for k in (1, 2)})
    reports: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: reports.append(record.getMessage())  # type: ignore[method-assign]
    logging.getLogger(TRANSFORMERS_PEFT_LOGGER).addHandler(handler)

    def image(*names: str) -> bytes:
        request = GenerationRequest("a lighthouse", 64, 64, 2, 1.0, 5, loras=tuple((n, 1.0) for n in names))
        return generator.generate([request])[0].images[0]

    try:
        base = image()
        first = image("te1")
        text_encoder = generator.pipeline.text_encoder
        before = {k: v.clone() for k, v in text_encoder.state_dict().items()}
        second = image("te2")
        after = text_encoder.state_dict()
    finally:
        logging.getLogger(TRANSFORMERS_PEFT_LOGGER).removeHandler(handler)
    assert not [r for r in reports if "MISSING" in r]
    assert all(torch.equal(value, after[key]) for key, value in before.items())  # base and te1 untouched
    assert len({base, first, second}) == 3 and image("te1") == first


@pytest.mark.parametrize(("lines", "passes"), [
    (["encoder.layers.{0, 1}.self_attn.q_proj.base_layer.weight | MISSING |",
      "encoder.layers.{0, 1}.self_attn.k_proj.lora_B.te1.weight | MISSING |"], False),  # others' keys: false
    (["encoder.layers.{0, 1}.self_attn.k_proj.lora_B.te2.weight | MISSING |"], True),  # its own: real
    (["some other warning about te1"], True),  # not a missing-keys report
])
def test_only_missing_keys_reports_about_the_adapter_being_loaded_pass(lines: list[str], passes: bool) -> None:
    import logging

    from models.adapters import ForeignMissingKeys

    record = logging.LogRecord("transformers.integrations.peft", logging.WARNING, "", 0, "\n".join(lines), None, None)
    assert ForeignMissingKeys("te2").filter(record) is passes


def test_a_simulated_catalog_loads_from_disk_then_host_memory_with_its_profiles_times() -> None:
    """SIMULATION: the simulated backend with a catalog and one checkpoint on its 'GPU' brings the
    others in from disk (``simulation.load_time_s``) or host memory (``host_load_time_s``)."""
    from serve.settings import AppSettings
    from serve.worker_setup import load_models, preloads

    settings = AppSettings.model_validate({
        "model": {"id": "a", "backend": "simulated", "catalog": {"b": "simulated", "c": "simulated"},
                  "resident_models": 1, "host_memory_gb": 4.2},
        "simulation": {"load_time_s": 0.02, "host_load_time_s": 0.001, "checkpoint_gb": 2.1}})
    assert preloads(settings)
    catalog = load_models(settings, first="simulated:b")
    assert list(catalog.loaded) == ["simulated:b"]  # preloaded instead of the default
    tiers = [catalog.prepare(_request("x", model))[0] for model in
             ("simulated:a", "simulated:b", "simulated:c", "simulated:a", "simulated:b")]
    # a from disk (b to host), b from host (a to host), c from disk (b to host), a from host (c to
    # host: 4.2 GB hold two, and b was used least recently), so b comes from disk again
    assert tiers == [DISK, HOST, DISK, HOST, DISK]
    assert catalog.load_seconds[DISK] / catalog.loads[DISK] >= 0.02 > catalog.load_seconds[HOST] / catalog.loads[HOST]
