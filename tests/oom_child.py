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


if __name__ == "__main__":
    main()
