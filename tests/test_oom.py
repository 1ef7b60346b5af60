"""Out-of-memory isolation without Ray: a real CPU allocation failure, batch bisection, the
memory model and admission."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from models.generator import DiffusionGenerator, load_generator
from models.loader import ModelSpec
from models.oom import InjectedOOM, is_device_fatal, is_out_of_memory
from models.request import GenerationRequest
from scheduler.admission import ReplicaRules
from scheduler.memory import MemoryModel, MemoryProbe, largest_that_fits, split_to_fit
from scheduler.outcomes import Outcome
from serve.execution import JobRunner
from serve.protocol import WorkerJob

ROOT = Path(__file__).resolve().parent.parent


def _job(prompt: str, size: int = 64, n: int = 1, steps: int = 2) -> WorkerJob:
    return WorkerJob(GenerationRequest(prompt, size, size, steps, 7.5, seed=1, n=n), prompt, time.time())


@pytest.fixture(scope="module")
def generator(tiny_model_dir: Path) -> DiffusionGenerator:
    return load_generator(ModelSpec(model="tiny", device="cpu"))


def _run_child(mode: str) -> dict:
    """Run tests/oom_child.py (which caps its own address space) and read its JSON line."""
    child = subprocess.run(
        [sys.executable, str(ROOT / "tests" / "oom_child.py"), mode],
        capture_output=True, text=True, timeout=300, cwd=ROOT,
    )
    assert child.returncode == 0, child.stderr[-2000:]
    return json.loads(child.stdout.strip().splitlines()[-1])


def test_real_cpu_allocation_failure_fails_only_that_request() -> None:
    """In a subprocess capped with RLIMIT_AS (never without a cap), a request too large for the
    cap gets the OOM outcome and a normal request right after succeeds in the same process."""
    result = _run_child("32")
    assert result["outcomes"] == [Outcome.OUT_OF_MEMORY, Outcome.OK], result
    assert result["oom_count"] == 1 and result["unhealthy"] is None


def test_a_failed_batch_releases_its_memory_before_the_halves_run() -> None:
    """The failed call's tensors live in its frames, which the exception's traceback keeps alive
    while an ``except`` block runs: retrying from inside it runs the halves with that memory still
    held, so they fail too. Under an RLIMIT_AS cap with room for one image but not two, both
    halves must succeed."""
    result = _run_child("held")
    assert result["outcomes"] == [Outcome.OK, Outcome.OK], result
    assert result["oom_count"] == 1 and result["unhealthy"] is None


def test_batch_with_one_poisoned_request_bisects_to_three_ok_one_oom(generator: DiffusionGenerator) -> None:
    runner = JobRunner(InjectedOOM(generator, "POISON"), "r1")
    jobs = [_job("a"), _job("b POISON"), _job("c"), _job("d")]
    replies = runner.run(jobs, lambda job: False)
    assert [r.outcome for r in replies] == [Outcome.OK, Outcome.OUT_OF_MEMORY, Outcome.OK, Outcome.OK]
    assert all(len(r.images) == 1 for r in replies if r.outcome == Outcome.OK)
    assert runner.oom_count == 3  # the batch of 4, the half with the poison, the poison alone
    assert runner.unhealthy_reason is None
    assert runner.run([_job("after")], lambda job: False)[0].outcome == Outcome.OK


def test_repeated_oom_on_requests_that_should_fit_marks_the_replica_unhealthy(
    generator: DiffusionGenerator,
) -> None:
    generous = MemoryModel(0, 1, 0, budget_bytes=1e12)
    runner = JobRunner(InjectedOOM(generator, "POISON"), "r1", ReplicaRules(memory=generous), max_oom_strikes=2)
    runner.run([_job("POISON 1")], lambda job: False)
    assert runner.unhealthy_reason is None
    runner.run([_job("POISON 2")], lambda job: False)
    assert runner.unhealthy_reason and "out-of-memory" in runner.unhealthy_reason


def test_never_fitting_request_is_refused_without_touching_the_pipeline(
    generator: DiffusionGenerator,
) -> None:
    tight = MemoryModel(0, 100, 0, budget_bytes=64 * 64 * 100 * 2)  # two 64x64 images
    runner = JobRunner(generator, "r1", ReplicaRules(memory=tight))
    calls = generator.counter.snapshot()["calls"]
    [reply] = runner.run([_job("big", size=128)], lambda job: False)
    assert (reply.outcome, reply.code) == (Outcome.INVALID, "exceeds_memory_budget")
    assert "largest that fits: up to 88x88 with n=1" in reply.message, reply.message
    assert generator.counter.snapshot()["calls"] == calls
    assert reply.replica.memory is not None and reply.replica.memory["budget_bytes"] == tight.budget_bytes


def test_batches_are_split_to_fit_the_budget(generator: DiffusionGenerator) -> None:
    tight = MemoryModel(0, 100, 0, budget_bytes=64 * 64 * 100 * 2)
    runner = JobRunner(generator, "r1", ReplicaRules(memory=tight))
    before = len(generator.counter.snapshot()["batch_sizes"])
    replies = runner.run([_job(p) for p in "abcde"], lambda job: False)
    assert [r.outcome for r in replies] == [Outcome.OK] * 5
    assert generator.counter.snapshot()["batch_sizes"][before:] == [2, 2, 1]


def test_memory_model_fits_probes_and_answers_what_fits() -> None:
    def peak(w: int, h: int, n: int) -> float:
        return 1e6 + n * (100 * w * h + 0.001 * (w * h) ** 2)

    probes = [MemoryProbe(w, h, n, peak(w, h, n)) for w, h, n in [(64, 64, 1), (128, 128, 1), (128, 128, 2), (192, 192, 1)]]
    model = MemoryModel.fit(probes, budget_bytes=peak(256, 256, 2) * 1.001)
    assert model.estimate(320, 320, 1) == pytest.approx(peak(320, 320, 1), rel=1e-6)
    assert model.fits(256, 256, 2) and not model.fits(256, 256, 3)
    assert model.max_images(256, 256) == 2
    assert model.max_square_side(2) == 256
    message = largest_that_fits(model, 256, 256, 4)
    assert "n <= 2 at 256x256" in message and "up to 256x256 with n=4" not in message


def test_memory_model_never_fits_negative_coefficients() -> None:
    noisy = [MemoryProbe(64, 64, 1, 5e6), MemoryProbe(128, 128, 1, 4e6), MemoryProbe(128, 128, 2, 8e6)]
    model = MemoryModel.fit(noisy, 1e9)
    assert min(model.fixed_bytes, model.per_pixel_bytes, model.per_pixel_sq_bytes) >= 0


@pytest.mark.parametrize(
    ("sizes", "budget_images", "expected"),
    [([1, 1, 1, 1], 4, [[0, 1, 2, 3]]), ([1, 1, 1, 1], 2, [[0, 1], [2, 3]]),
     ([2, 1, 2], 3, [[0, 1], [2]]), ([4, 1], 2, [[0], [1]])],
)
def test_split_to_fit(sizes: list[int], budget_images: int, expected: list[list[int]]) -> None:
    model = MemoryModel(0, 1, 0, budget_bytes=budget_images * 64 * 64)
    assert split_to_fit(sizes, 64, 64, model) == expected
    assert split_to_fit(sizes, 64, 64, None) == [list(range(len(sizes)))]


def test_oom_classification() -> None:
    assert is_out_of_memory(torch.OutOfMemoryError("CUDA out of memory"))
    assert torch.cuda.OutOfMemoryError is torch.OutOfMemoryError
    assert is_out_of_memory(RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried"))
    assert not is_out_of_memory(RuntimeError("shape mismatch"))
    assert is_device_fatal(RuntimeError("CUDA error: an illegal memory access was encountered"))
    assert not is_device_fatal(torch.OutOfMemoryError("CUDA out of memory"))
