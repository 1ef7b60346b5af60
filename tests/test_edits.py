"""``POST /v1/images/edits`` on a real Ray Serve with the tiny catalog: image-to-image and inpainting
through the ``openai`` SDK, OpenAI's mask convention, streaming, and every bad input a clear 4xx."""

from __future__ import annotations

import base64
import io
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.conftest import Deployed

pytestmark = [pytest.mark.ray, pytest.mark.app("cpu")]
SIDE = 64
URL = "/v1/images/edits"


def _png(array: np.ndarray, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=fmt)
    return buffer.getvalue()


SOURCE = np.random.default_rng(1).integers(0, 256, (SIDE, SIDE, 3), dtype=np.uint8)
EDIT_AREA = (slice(16, 48), slice(8, 40))  # rows, columns OpenAI's mask makes transparent


def _mask(side: int = SIDE, mode: str = "RGBA") -> bytes:
    rgba = np.full((side, side, 4), 255, dtype=np.uint8)
    rgba[EDIT_AREA[0], EDIT_AREA[1], 3] = 0  # fully transparent: the area to edit
    return _png(rgba if mode == "RGBA" else rgba[..., :3])


def _pixels(b64: str) -> np.ndarray:
    return np.array(Image.open(io.BytesIO(base64.b64decode(b64))).convert("RGB"))


def _client(app: Deployed) -> Any:
    from openai import OpenAI

    return OpenAI(base_url=f"{app.url}/v1", api_key="unused", max_retries=0)


def test_image_to_image_and_inpainting_through_the_openai_sdk(app: Deployed) -> None:
    client = _client(app)

    def edit(strength: float | None = None, mask: bytes | None = None, seed: int = 4) -> np.ndarray:
        extra = {"seed": seed, "num_inference_steps": 6, **({"strength": strength} if strength is not None else {})}
        result = client.images.edit(image=("in.png", _png(SOURCE), "image/png"), prompt="a lighthouse",
                                    model="tiny-1", response_format="b64_json", extra_body=extra,
                                    **({"mask": ("mask.png", mask, "image/png")} if mask else {}))
        [image] = result.data
        return _pixels(image.b64_json)

    img2img = edit()
    assert img2img.shape == (SIDE, SIDE, 3) and not np.array_equal(img2img, SOURCE)
    assert np.array_equal(edit(), img2img)  # the same seed, the same image
    assert not np.array_equal(edit(seed=5), img2img)
    assert not np.array_equal(edit(strength=0.5), img2img)  # strength changes the image

    inpainted = edit(mask=_mask())
    outside = np.ones((SIDE, SIDE), dtype=bool)
    outside[EDIT_AREA] = False
    assert np.array_equal(inpainted[outside], SOURCE[outside])  # unmasked pixels exactly the input's
    assert (inpainted[~outside] != SOURCE[~outside]).mean() > 0.5  # the transparent area is repainted
    assert np.array_equal(edit(mask=_mask()), inpainted)


def test_an_edit_streams_openai_edit_events(app: Deployed) -> None:
    stream = _client(app).images.edit(image=("in.png", _png(SOURCE), "image/png"), prompt="a lighthouse",
                                      stream=True, partial_images=1,
                                      extra_body={"seed": 2, "num_inference_steps": 6, "strength": 1.0})
    events = list(stream)
    types = [event.type for event in events]
    assert [t for t in types if t.startswith("image_")] == ["image_edit.partial_image", "image_edit.completed"]
    assert types[:2] == ["sdserve.queued", "sdserve.started"] and types[-1] == "sdserve.done"
    completed = events[types.index("image_edit.completed")]
    assert _pixels(completed.b64_json).shape == (SIDE, SIDE, 3)


def _post(app: Deployed, files: dict[str, Any], data: dict[str, Any] | None = None, **kwargs: Any) -> httpx.Response:
    return app.client.post(URL, files=files, data={"prompt": "a lighthouse", "num_inference_steps": "4", **(data or {})},
                           **kwargs)


def _total_requests(app: Deployed) -> float:
    return sum(float(line.rsplit(" ", 1)[1]) for line in app.client.get("/metrics").text.splitlines()
               if line.startswith("sdserve_requests_total"))


@pytest.mark.parametrize(("files", "data", "status", "param", "words"), [
    ({"image": ("x.png", b"not an image at all", "image/png")}, {}, 400, "image", "is not an image"),
    ({"image": ("x.png", _png(SOURCE)[:200], "image/png")}, {}, 400, "image", "corrupt or truncated"),
    ({"image": ("x.gif", _png(SOURCE, "GIF"), "image/gif")}, {}, 400, "image", "PNG, JPEG, WEBP"),
    ({"image": ("x.png", _png(np.zeros((1024, 1024, 3), np.uint8)), "image/png")}, {}, 422, "image",
     "at most 262,144 pixels (512x512"),
    ({"image": ("x.png", _png(SOURCE), "image/png"), "mask": ("m.png", _mask(32), "image/png")}, {}, 422, "mask",
     "mask is 32x32, the image 64x64"),
    ({"image": ("x.png", _png(SOURCE), "image/png"), "mask": ("m.png", _mask(mode="RGB"), "image/png")}, {}, 422,
     "mask", "alpha channel"),
    ({"image": ("x.png", _png(SOURCE), "image/png")}, {"strength": "0"}, 422, "strength", "(0, 1]"),
    ({"image": ("x.png", _png(SOURCE), "image/png")}, {"strength": "1.5"}, 422, "strength", "(0, 1]"),
    ({"image": ("x.png", _png(SOURCE), "image/png")}, {"strength": "0.1"}, 422, "strength", "gives no step"),
    ({"image": ("x.png", _png(SOURCE), "image/png")}, {"prompt": ""}, 422, "prompt", "must not be empty"),
    ({"other": ("x.png", _png(SOURCE), "image/png")}, {}, 422, "image", "'image' is required"),
    ({"image": ("x.png", _png(SOURCE), "image/png")}, {"model": "sd-xl"}, 404, "model", "does not exist"),
    ({"image": ("x.png", _png(SOURCE), "image/png")}, {"loras": "[{\"id\": \"nope\"}]"}, 404, "loras", "nope"),
    ({"image": ("x.png", _png(SOURCE), "image/png")}, {"colour": "red"}, 422, "colour", "unsupported parameter"),
])
def test_bad_edits_get_a_4xx_naming_the_field(app: Deployed, files: dict, data: dict, status: int, param: str,
                                              words: str) -> None:
    before = _total_requests(app)
    response = _post(app, files, data)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["param"] == param and words in error["message"], error
    assert _total_requests(app) == before + 1  # counted once, nothing lost


def test_a_wrong_content_type_and_an_oversize_body_are_refused(app: Deployed) -> None:
    response = app.client.post(URL, json={"prompt": "a", "image": "x"})
    assert response.status_code == 415 and "multipart/form-data" in response.json()["error"]["message"]
    big = _post(app, {"image": ("x.png", b"\0" * (16 * 2**20 + 1), "image/png")})
    assert big.status_code == 413 and big.json()["error"]["code"] == "request_too_large"
    counts = {line.split("{")[1]: float(line.rsplit(" ", 1)[1]) for line in app.client.get("/metrics").text.splitlines()
              if line.startswith("sdserve_requests_by_kind_total")}
    assert any('kind="edit"' in labels and 'outcome="invalid"' in labels for labels in counts), counts
    assert any('kind="inpaint"' in labels and 'outcome="ok"' in labels for labels in counts), counts
