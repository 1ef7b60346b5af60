"""Request validation, table-driven: every bad input maps to one status and names its field."""

from __future__ import annotations

import json

import pytest

from serve.openai_api import ApiError, parse_body, to_generation_request
from serve.settings import AppSettings, LimitSettings, apply_overrides

LIMITS = LimitSettings(default_size="64x64", max_width=512, max_height=512, max_steps=100, max_n=4)


def _validate(body: dict) -> object:
    return to_generation_request(parse_body(json.dumps(body).encode()), LIMITS, ["tiny", "tiny-1"], ["l1", "l2"])


BAD_BODIES = [
    ({"n": 1}, 422, "prompt"),
    ({"prompt": ""}, 422, "prompt"),
    ({"prompt": "   "}, 422, "prompt"),
    ({"prompt": "x" * 4001}, 422, "prompt"),
    ({"prompt": "a", "n": 0}, 422, "n"),
    ({"prompt": "a", "n": 5}, 422, "n"),
    ({"prompt": "a", "n": "two"}, 422, "n"),
    ({"prompt": "a", "size": "big"}, 422, "size"),
    ({"prompt": "a", "size": "100x64"}, 422, "size"),
    ({"prompt": "a", "size": "0x64"}, 422, "size"),
    ({"prompt": "a", "size": "1024x1024"}, 422, "size"),
    ({"prompt": "a", "num_inference_steps": 0}, 422, "num_inference_steps"),
    ({"prompt": "a", "num_inference_steps": 101}, 422, "num_inference_steps"),
    ({"prompt": "a", "guidance_scale": -1}, 422, "guidance_scale"),
    ({"prompt": "a", "guidance_scale": 31}, 422, "guidance_scale"),
    ({"prompt": "a", "model": "dall-e-3"}, 404, "model"),
    ({"prompt": "a", "loras": [{"id": "l9"}]}, 404, "loras"),
    ({"prompt": "a", "loras": [{"id": "l1", "scale": 3}]}, 422, "loras"),
    ({"prompt": "a", "loras": [{"id": "l1"}, {"id": "l1"}]}, 422, "loras"),
    ({"prompt": "a", "loras": [{"id": "l1"}] * 5}, 422, "loras"),
    ({"prompt": "a", "loras": [{"name": "l1"}]}, 422, "loras.0.id"),
    ({"prompt": "a", "response_format": "url"}, 422, "response_format"),
    ({"prompt": "a", "seed": -1}, 422, "seed"),
    ({"prompt": "a", "quality": "hd"}, 422, "quality"),
    ({"prompt": 5}, 422, "prompt"),
]


@pytest.mark.parametrize(("body", "status", "param"), BAD_BODIES)
def test_bad_input_is_a_4xx_naming_the_field(body: dict, status: int, param: str) -> None:
    with pytest.raises(ApiError) as error:
        _validate(body)
    assert (error.value.status, error.value.param) == (status, param)
    assert error.value.body()["error"]["param"] == param
    assert error.value.body()["error"]["message"]


@pytest.mark.parametrize(("name", "hint"), [
    ("steps", " (did you mean 'num_inference_steps'?)"),
    ("guidance", " (did you mean 'guidance_scale'?)"),
    ("sede", " (did you mean 'seed'?)"),
    ("colour", ""),  # no near miss to offer
    ("e", ""),  # in many field names, near none of them
])
def test_an_unknown_field_is_named_with_the_field_it_likely_meant(name: str, hint: str) -> None:
    with pytest.raises(ApiError) as error:
        _validate({"prompt": "a", name: 3})
    assert error.value.body()["error"]["message"] == f"unsupported parameter '{name}'{hint}"


@pytest.mark.parametrize("raw", [b"{", b"[1, 2]", b"\xff\xfe", b""])
def test_malformed_json_is_400(raw: bytes) -> None:
    with pytest.raises(ApiError) as error:
        parse_body(raw)
    assert error.value.status == 400


def test_defaults_come_from_the_limits() -> None:
    request = _validate({"prompt": "a cat", "model": "tiny", "response_format": "b64_json"})
    assert (request.width, request.height, request.n) == (64, 64, 1)
    assert request.num_inference_steps == LIMITS.default_steps
    assert request.guidance_scale == LIMITS.default_guidance_scale
    assert 0 <= request.seed < 2**31


def test_explicit_fields_are_honoured() -> None:
    request = _validate({"prompt": "a", "size": "128x96", "n": 2, "seed": 5,
                         "num_inference_steps": 3, "guidance_scale": 0, "negative_prompt": "b"})
    assert (request.width, request.height, request.n, request.seed) == (128, 96, 2, 5)
    assert (request.num_inference_steps, request.guidance_scale, request.negative_prompt) == (3, 0.0, "b")


def test_overrides_set_nested_keys_as_yaml_values() -> None:
    args = {"model": {"id": "sd"}, "resources": {"num_gpus": 1}}
    result = apply_overrides(args, ["model.id=tiny", "resources.num_gpus=0", "limits.max_n=2"])
    assert result == {"model": {"id": "tiny"}, "resources": {"num_gpus": 0}, "limits": {"max_n": 2}}
    assert args["model"]["id"] == "sd"
    settings = AppSettings.model_validate(result)
    assert (settings.model.id, settings.limits.max_n) == ("tiny", 2)


@pytest.mark.parametrize("bad", ["model.id", "=x"])
def test_malformed_override_is_refused(bad: str) -> None:
    with pytest.raises(ValueError, match="KEY=VALUE"):
        apply_overrides({}, [bad])


def test_unknown_setting_is_refused_by_name() -> None:
    with pytest.raises(ValueError, match="max_batchsize"):
        AppSettings.model_validate({"batching": {"max_batchsize": 4}})


def test_a_request_names_its_checkpoint_and_adapters() -> None:
    request = _validate({"prompt": "a", "model": "tiny-1", "loras": [{"id": "l2", "scale": 0.8}, {"id": "l1"}]})
    assert (request.model, request.loras) == ("tiny-1", (("l2", 0.8), ("l1", 1.0)))
    assert _validate({"prompt": "a", "model": "tiny"}).model == ""  # the default is the default
