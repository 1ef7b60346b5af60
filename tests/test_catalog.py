"""The checkpoint catalog on a real Ray Serve: ``configs/cpu.yaml`` serves four tiny checkpoints
(the same architecture, weights from four seeds); a request picks one with ``model``."""

from __future__ import annotations

import base64

import httpx
import pytest

from models.catalog import DISK, RESIDENT, CatalogGenerator, UnknownModel
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


@pytest.mark.ray
@pytest.mark.app("cpu", "model.resident_models=2")
def test_beyond_the_resident_budget_a_checkpoint_loads_on_use_and_says_so(app: Deployed) -> None:
    def post(model: str) -> httpx.Response:
        response = app.client.post("/v1/images/generations", json={
            "prompt": "a lighthouse", "model": model, "size": "64x64", "seed": 3, "num_inference_steps": 2})
        assert response.status_code == 200, response.text
        return response

    first = post("tiny")
    loads = [post(m).headers["x-model-load"] for m in ("tiny-1", "tiny", "tiny-2", "tiny-1", "tiny")]
    assert loads == ["disk", "none", "disk", "disk", "disk"]  # two resident: the least recently used goes
    again = post("tiny")
    assert again.headers["x-model-load"] == "none" and float(again.headers["x-model-load-seconds"]) == 0
    assert again.json()["data"][0]["b64_json"] == first.json()["data"][0]["b64_json"]  # reloaded, same weights
    metrics = app.client.get("/metrics").text
    [count] = [line for line in metrics.splitlines() if line.startswith("sdserve_call_model_load_seconds_count")
               and 'tier="disk"' in line]
    assert float(count.rsplit(" ", 1)[1]) == 4  # tiny-1, tiny-2, tiny-1, tiny from disk


class _Fake:
    """A checkpoint's generator that answers with its name."""

    built: list[str] = []

    def __init__(self, name: str) -> None:
        self.model_name, self.device, self.counter, self.seen = name, "cpu", None, []
        _Fake.built.append(name)

    def _generate_group(self, group, should_stop, on_latents=None):
        self.seen.append([r.prompt for r in group])
        return [GenerationResult([self.model_name.encode()], 2, 2) for _ in group]


def _catalog(resident: int = 0) -> CatalogGenerator:
    _Fake.built = []
    return CatalogGenerator({name: (lambda name=name: _Fake(name)) for name in "abc"}, "a", resident)


def _request(prompt: str, model: str = "") -> GenerationRequest:
    return GenerationRequest(prompt, 64, 64, 2, 1.0, 0, model=model)


def test_a_catalog_sends_each_group_to_its_checkpoint_and_refuses_an_unknown_one() -> None:
    catalog = _catalog()
    assert _Fake.built == ["a", "b", "c"]  # resident 0: all loaded at the start
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
    assert list(catalog.loaded) == ["a", "b"] and catalog.loads == 3


@pytest.mark.parametrize(("spec", "seed"), [("tiny", 0), ("tiny:3", 3), ("tiny:x", None), ("tinyish", None),
                                            ("stable-diffusion-v1-5/stable-diffusion-v1-5", None)])
def test_tiny_specs_name_their_seed(spec: str, seed: int | None) -> None:
    from models.loader import tiny_seed

    assert tiny_seed(spec) == seed
