"""The baseline users get from plain Ray Serve: a sync ``def`` handler with ``request_timeout_s``.

Ray's proxy answers 408 at the timeout, but a sync handler is not stopped: its thread runs the
pipeline to the end while the replica, its slot released, takes the next request. This deployment
runs the same tiny pipeline that way and records when each call really ended, so the benchmark can
count the compute spent after the client was told it timed out.
"""

import time
from typing import Any

from fastapi import Body, FastAPI, Header
from ray import serve

from models.generator import load_generator
from models.loader import ModelSpec
from models.request import GenerationRequest

api = FastAPI()


@serve.deployment(name="PlainSyncWorker", max_ongoing_requests=1, ray_actor_options={"num_cpus": 0.5})
@serve.ingress(api)
class PlainSyncWorker:
    def __init__(self) -> None:
        import torch

        torch.set_num_threads(1)
        self.generator = load_generator(ModelSpec(model="tiny", device="cpu"))
        self.ended: dict[str, float] = {}

    @api.post("/v1/images/generations")
    def generate(self, body: dict[str, Any] = Body(...), x_bench_id: str = Header("")) -> dict[str, Any]:
        width, height = (int(v) for v in body.get("size", "64x64").split("x"))
        generation = GenerationRequest(
            prompt=body["prompt"], width=width, height=height,
            num_inference_steps=int(body.get("num_inference_steps", 10)),
            guidance_scale=7.5, seed=int(body.get("seed", 0)),
        )
        self.generator.generate([generation])
        self.ended[x_bench_id] = time.time()
        return {"ok": True}

    @api.get("/report")
    def report(self) -> dict[str, Any]:
        import psutil

        cpu = psutil.Process().cpu_times()
        return {"ended": dict(self.ended), "process_cpu_s": cpu.user + cpu.system,
                **self.generator.counter.snapshot()}
