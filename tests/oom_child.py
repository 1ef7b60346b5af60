"""Run in a subprocess by test_oom.py: a real CPU allocation failure under an address-space cap.

Loads the tiny model, caps RLIMIT_AS at the current VmSize + a margin, then sends one request far
too large for the cap and one normal request through the worker's JobRunner. Prints one JSON line.
"""

from __future__ import annotations

import json
import re
import resource
import sys
import time

from models.generator import GroupedGenerator


def main() -> None:
    import torch

    torch.set_num_threads(1)
    from models.generator import load_generator
    from models.loader import ModelSpec
    from models.request import GenerationRequest
    from serve.execution import JobRunner
    from serve.protocol import WorkerJob

    runner = JobRunner(load_generator(ModelSpec(model="tiny", device="cpu")), "child")
    small = GenerationRequest("fits", 64, 64, 2, 7.5, seed=1)
    runner.run([WorkerJob(small, "warm", time.time())], lambda job: False)  # warm caches first
    vm_size = int(re.search(r"VmSize:\s+(\d+) kB", open("/proc/self/status").read()).group(1)) * 1024
    margin = int(sys.argv[1]) * 2**20
    resource.setrlimit(resource.RLIMIT_AS, (vm_size + margin, vm_size + margin))
    huge = GenerationRequest("too big", 256, 256, 1, 7.5, seed=2, n=4)
    replies = runner.run(
        [WorkerJob(huge, "huge", time.time()), WorkerJob(small, "after", time.time())], lambda job: False
    )
    print(json.dumps({"outcomes": [r.outcome for r in replies], "messages": [r.message for r in replies],
                      "oom_count": runner.oom_count, "unhealthy": runner.unhealthy_reason}))


CHUNK_MB = 48  # per image, per allocation


class AllocatingGenerator(GroupedGenerator):
    """A pipeline stand-in that really allocates, as a diffusion call does: activations for every
    image in the call (held in a local, as the UNet's are), then a second buffer of the same size
    (the VAE's). Under the cap, a call of 2 images fails on the second buffer while its first one
    (2 chunks) is still alive in the failed frame; a retry of 1 image fits only if that memory
    was really released."""

    model_name = "allocating"
    device = "cpu"

    def __init__(self) -> None:
        from models.generator import CallCounter

        self.counter = CallCounter()

    def generate(self, requests, should_stop=None, on_latents=None):  # type: ignore[no-untyped-def]
        import torch

        from models.request import GenerationResult

        images = sum(r.n for r in requests)
        activations = torch.ones(images * CHUNK_MB * 2**18)  # float32: 4 bytes each
        decoded = torch.ones(images * CHUNK_MB * 2**18)
        del activations, decoded
        return [GenerationResult(images=[b"png"] * r.n, steps_done=r.num_inference_steps, batch_images=images,
                                 steps_requested=r.num_inference_steps) for r in requests]


def held() -> None:
    """A batch of two that runs out of memory: both halves must succeed on retry."""
    import torch

    torch.set_num_threads(1)
    from models.request import GenerationRequest
    from scheduler.admission import ReplicaRules
    from serve.execution import JobRunner
    from serve.protocol import WorkerJob

    runner = JobRunner(AllocatingGenerator(), "child", ReplicaRules(shed_hopeless=False))  # type: ignore[arg-type]
    jobs = [WorkerJob(GenerationRequest(f"r{i}", 64, 64, 2, 7.5, seed=i), f"r{i}", time.time()) for i in range(2)]
    runner.run(jobs[:1], lambda job: False)  # warm the allocator at the size of one image
    vm_size = int(re.search(r"VmSize:\s+(\d+) kB", open("/proc/self/status").read()).group(1)) * 1024
    limit = vm_size + 3 * CHUNK_MB * 2**20  # room for 3 chunks: a batch of 2 needs 4, one image 2
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    replies = runner.run(jobs, lambda job: False)
    print(json.dumps({"outcomes": [r.outcome for r in replies], "messages": [r.message for r in replies],
                      "oom_count": runner.oom_count, "unhealthy": runner.unhealthy_reason}))


if __name__ == "__main__":
    held() if sys.argv[1] == "held" else main()
