"""The models layer on its own: the tiny model, sizes and counts, seeds and determinism."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from models.generator import DiffusionGenerator, group_by_batch_key, load_generator
from models.loader import ModelLoadError, ModelSpec
from models.request import GenerationRequest, GenerationStopped
from models.tiny import ensure_tiny_model


def _request(**overrides) -> GenerationRequest:
    fields = dict(prompt="a red fox", width=64, height=64, num_inference_steps=4,
                  guidance_scale=7.5, seed=7)
    fields.update(overrides)
    return GenerationRequest(**fields)


def _digest(directory: Path) -> dict[str, str]:
    return {
        str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(directory.rglob("*")) if p.is_file()
    }


def _pixels(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png))).astype(np.int16)


@pytest.fixture(scope="module")
def generator(tiny_model_dir: Path) -> DiffusionGenerator:
    return load_generator(ModelSpec(model="tiny", device="cpu"))


def test_tiny_model_builds_offline_and_byte_identically(tmp_path: Path) -> None:
    first = ensure_tiny_model(tmp_path / "a")
    second = ensure_tiny_model(tmp_path / "b")
    assert (first / "model_index.json").is_file()
    for part in ("unet", "vae", "text_encoder", "tokenizer", "scheduler"):
        assert (first / part).is_dir(), part
    assert _digest(first) == _digest(second)


def test_cached_build_is_reused(tmp_path: Path) -> None:
    built = ensure_tiny_model(tmp_path)
    marker = built / "model_index.json"
    before = marker.stat().st_mtime_ns
    assert ensure_tiny_model(tmp_path) == built
    assert marker.stat().st_mtime_ns == before


@pytest.mark.parametrize(("width", "height", "n"), [(64, 64, 1), (96, 64, 2), (64, 128, 3)])
def test_requested_size_and_count(generator: DiffusionGenerator, width: int, height: int, n: int) -> None:
    [result] = generator.generate([_request(width=width, height=height, n=n)])
    assert len(result.images) == n
    assert all(Image.open(io.BytesIO(png)).size == (width, height) for png in result.images)
    assert result.steps_done == result.steps_requested == 4


def test_same_seed_alone_gives_identical_bytes(generator: DiffusionGenerator) -> None:
    [a] = generator.generate([_request()])
    [b] = generator.generate([_request()])
    [c] = generator.generate([_request(seed=8)])
    assert a.images == b.images
    assert a.images != c.images


def test_same_seed_in_a_batch_gives_the_same_image_up_to_noise(generator: DiffusionGenerator) -> None:
    [alone] = generator.generate([_request()])
    batch = generator.generate([_request(prompt="x", seed=1), _request(), _request(seed=99, n=2)])
    assert [r.batch_images for r in batch] == [4, 4, 4]
    diff = np.abs(_pixels(alone.images[0]) - _pixels(batch[1].images[0]))
    assert diff.max() <= 3, diff.max()
    assert np.abs(_pixels(batch[0].images[0]) - _pixels(alone.images[0])).max() > 3


def test_mixed_sizes_never_share_a_pipeline_call(generator: DiffusionGenerator) -> None:
    before = generator.counter.snapshot()["calls"]
    requests = [_request(), _request(width=128), _request(seed=3), _request(num_inference_steps=2)]
    assert group_by_batch_key(requests) == [[0, 2], [1], [3]]
    results = generator.generate(requests)
    assert generator.counter.snapshot()["calls"] - before == 3
    assert [Image.open(io.BytesIO(r.images[0])).size for r in results] == [
        (64, 64), (128, 64), (64, 64), (64, 64)
    ]


def test_stop_check_stops_within_one_step(generator: DiffusionGenerator) -> None:
    with pytest.raises(GenerationStopped) as stopped:
        generator.generate(
            [_request(num_inference_steps=20)], should_stop=lambda done: "halt" if done >= 3 else None
        )
    assert stopped.value.steps_done == 3


def test_unknown_model_id_is_a_clear_error_without_network() -> None:
    with pytest.raises(ModelLoadError, match="not in the local Hugging Face cache"):
        load_generator(ModelSpec(model="nobody/no-such-model-xyz", device="cpu"))


def test_directory_without_model_index_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="not a diffusers model directory"):
        load_generator(ModelSpec(model=str(tmp_path), device="cpu"))


def test_a_model_missing_from_the_cache_fails_before_the_framework_imports() -> None:
    from models.loader import check_available

    with pytest.raises(ModelLoadError, match="not in the local Hugging Face cache.*hf download nobody/nothing"):
        check_available(ModelSpec(model="nobody/nothing"))
    check_available(ModelSpec(model="tiny"))  # built here: nothing to check
    check_available(ModelSpec(model="nobody/nothing", allow_download=True))  # the load itself will fetch it


def test_a_process_start_time_is_read_to_the_tick_not_to_the_boot_second() -> None:
    """A child's start as the worker reads it lies between the moments before and after spawning it
    (psutil's create_time can be off by up to a second)."""
    import subprocess
    import sys
    import time

    before = time.time()
    out = subprocess.run([sys.executable, "-c", "from serve.worker_setup import process_started_at; "
                          "print(process_started_at())"], capture_output=True, text=True, check=True)
    after = time.time()
    assert before - 0.02 <= float(out.stdout) <= after
