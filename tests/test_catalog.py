"""The checkpoint catalog on a real Ray Serve: ``configs/cpu.yaml`` serves four tiny checkpoints
(the same architecture, weights from four seeds); a request picks one with ``model``."""

from __future__ import annotations

import base64

import pytest

from models.catalog import CatalogGenerator, UnknownModel
from models.request import GenerationRequest
from tests.conftest import Deployed

CHECKPOINTS = ["tiny", "tiny-1", "tiny-2", "tiny-3"]


@pytest.mark.ray
@pytest.mark.app("cpu")
def test_the_catalog_is_listed_and_each_checkpoint_draws_its_own_image(app: Deployed) -> None:
    from openai import OpenAI

    client = OpenAI(base_url=f"{app.url}/v1", api_key="unused", max_retries=0)
    listed = client.models.list().data
    assert [m.id for m in listed] == CHECKPOINTS

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


def test_a_catalog_sends_each_group_to_its_checkpoint_and_refuses_an_unknown_one() -> None:
    class Fake:
        def __init__(self, name: str) -> None:
            self.model_name, self.device, self.counter, self.seen = name, "cpu", None, []

        def _generate_group(self, group, should_stop, on_latents=None):
            self.seen.append([r.prompt for r in group])
            return [self.model_name] * len(group)

    a, b = Fake("a"), Fake("b")
    catalog = CatalogGenerator({"a": a, "b": b}, "a")
    assert a.counter is catalog.counter is b.counter  # one replica, one call at a time
    requests = [GenerationRequest(p, 64, 64, 2, 1.0, 0, model=m) for p, m in
                (("p1", ""), ("p2", "b"), ("p3", "a"), ("p4", "b"))]
    assert catalog.generate(requests) == ["a", "b", "a", "b"]
    assert a.seen == [["p1"], ["p3"]] and b.seen == [["p2", "p4"]]  # "" is the default, "a" another key
    with pytest.raises(UnknownModel):
        catalog.generate([GenerationRequest("p", 64, 64, 2, 1.0, 0, model="c")])


@pytest.mark.parametrize(("spec", "seed"), [("tiny", 0), ("tiny:3", 3), ("tiny:x", None), ("tinyish", None),
                                            ("stable-diffusion-v1-5/stable-diffusion-v1-5", None)])
def test_tiny_specs_name_their_seed(spec: str, seed: int | None) -> None:
    from models.loader import tiny_seed

    assert tiny_seed(spec) == seed
