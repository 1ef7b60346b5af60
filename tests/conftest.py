"""Shared fixtures: one real Ray cluster per test session, and deployment of the shipped configs.

Ray is started once (``num_gpus=4`` fake GPUs, so GPU configs place their replicas on this CPU
machine) and every integration test deploys the real config files with the tiny model swapped in.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = ROOT / "configs"

#: What every integration test changes in a shipped config to run it on this CPU machine.
CPU_OVERRIDES = ["model.id=tiny", "model.torch_threads=1", "resources.num_cpus=0.25"]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def tiny_model_dir() -> Path:
    from models.tiny import ensure_tiny_model

    return ensure_tiny_model()


@pytest.fixture(scope="session")
def ray_cluster(tiny_model_dir: Path) -> Iterator[dict[str, Any]]:
    """A local Ray with fake GPUs and Serve's HTTP proxy on a free loopback port."""
    import ray
    from ray import serve

    ray.init(num_cpus=8, num_gpus=4, namespace="serve", include_dashboard=False)
    info = {"port": _free_port()}
    try:
        yield info
    finally:
        serve.shutdown()
        ray.shutdown()


class Deployed:
    """A running application and an HTTP client pointed at it."""

    def __init__(self, url: str, app_name: str) -> None:
        self.url = url
        self.app_name = app_name
        self.client = httpx.Client(base_url=url, timeout=120)

    def worker_replicas(self) -> dict[str, int]:
        """Worker replica counts by state, from ``serve.status()``."""
        from ray import serve

        app = serve.status().applications.get(self.app_name)
        if app is None:
            return {}
        states = app.deployments["DiffusionWorker"].replica_states
        return {str(getattr(k, "value", k)): v for k, v in states.items()}

    def worker_stats(self, replicas: int = 1) -> list[dict[str, Any]]:
        """Counters from ``replicas`` distinct worker replicas (asked until each has answered)."""
        from ray import serve

        handle = serve.get_deployment_handle("DiffusionWorker", app_name=self.app_name)
        seen: dict[str, dict[str, Any]] = {}
        for _ in range(50 * replicas):
            stats = handle.stats.remote().result()
            seen[stats["replica_id"]] = stats
            if len(seen) >= replicas:
                break
        return list(seen.values())


@contextlib.contextmanager
def deployed(
    cluster: dict[str, Any],
    name: str,
    overrides: list[str] | None = None,
    deployment_overrides: dict[str, list[str]] | None = None,
) -> Iterator[Deployed]:
    """Deploy ``configs/<name>.yaml`` with the CPU overrides; delete the application afterwards."""
    from ray import serve

    from serve.deploy import deploy, load_config

    config = load_config(
        CONFIGS / f"{name}.yaml", CPU_OVERRIDES + (overrides or []), deployment_overrides
    )
    config["http_options"]["port"] = cluster["port"]
    deploy(config, timeout_s=180)
    app = Deployed(f"http://127.0.0.1:{cluster['port']}", config["applications"][0]["name"])
    try:
        yield app
    finally:
        app.client.close()
        serve.delete(app.app_name)
