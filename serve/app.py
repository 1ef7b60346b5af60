"""The application builder: ``import_path: serve.app:build_app`` in every config file.

It validates the ``args:`` section into :class:`AppSettings`, checks a GPU config can be placed at
all, and composes the ingress with the worker deployment (routed by the dispatcher's choice when
``queue.dispatch`` is on).
"""

from __future__ import annotations

import os
from typing import Any

import ray
from ray.serve import Application
from ray.serve.config import RequestRouterConfig

from serve.ingress import Ingress
from serve.routing import DispatchedRouter
from serve.settings import (
    OVERRIDES_ENV,
    AppSettings,
    ResourceSettings,
    apply_overrides,
    parse_assignments,
)
from serve.worker import DiffusionWorker

#: Ray 2.60 runs replica code on a second event loop by default; cancelling a request (client gone,
#: ingress timer) then frees the replica's slot at once, while the pipeline thread is still in its
#: step, VAE decode or PNG encode — the router sends the next request to a busy replica and it waits
#: there, invisible to Ray and to the autoscaler. On Ray's own loop the cancellation reaches
#: ``DiffusionWorker._run``, which holds the slot until the pipeline thread has returned
#: (tests/test_replica_slot.py measures both views). The worker awaits its pipeline thread, so
#: Ray's loop stays free for health checks and metrics.
WORKER_ENV = {"RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD": "0"}


class NoGPUError(RuntimeError):
    """A GPU config was deployed on a cluster that has no GPU; Ray would wait forever."""


def check_gpus_exist(resources: ResourceSettings) -> None:
    """Fail the deploy at once, with the fix in the message, instead of a replica pending forever."""
    if resources.num_gpus <= 0 or not resources.fail_fast_without_gpu or not ray.is_initialized():
        return
    available = ray.cluster_resources().get("GPU", 0)
    if available < resources.num_gpus:
        raise NoGPUError(
            f"this config asks for {resources.num_gpus} GPU per worker replica but the Ray cluster "
            f"has {available:g} GPU(s). Run it on a GPU host, or on CPU with the tiny model: "
            "make run CONFIG=configs/cpu.yaml (docs/operations.md, 'A GPU config on CPU'). On an "
            "autoscaling cluster that adds GPU nodes on demand set resources.fail_fast_without_gpu: false."
        )


def build_app(args: dict[str, Any]) -> Application:
    args = apply_overrides(args or {}, parse_assignments(os.environ.get(OVERRIDES_ENV, "")))
    settings = AppSettings.model_validate(args)
    check_gpus_exist(settings.resources)
    plain = settings.model_dump()
    routing = {"request_router_config": RequestRouterConfig(request_router_class=DispatchedRouter)} \
        if settings.queue.dispatch else {}
    worker = DiffusionWorker.options(
        ray_actor_options={
            "num_cpus": settings.resources.num_cpus,
            "num_gpus": settings.resources.num_gpus,
            "runtime_env": {"env_vars": WORKER_ENV},
        },
        **routing,
    ).bind(plain)
    return Ingress.bind(plain, worker)
