"""Shared fixtures: one real Ray cluster per test session, and one deployed application at a time.

Ray is started once (``num_gpus=4`` fake GPUs, so GPU configs place their replicas on this CPU
machine). Integration tests name the shipped config file they need and their overrides with the
``app`` marker; the :class:`AppPool` keeps the application deployed between tests and redeploys only
when the config or its ``args`` change. Overrides of live settings (``serve/settings.py:
LIVE_KEYS``) go to the deployments' ``user_config``, which Ray applies to the running replicas
through ``reconfigure`` — no restart, no cold start. Tests are ordered by the application they need,
so each distinct one is deployed once per session.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

ROOT = Path(__file__).resolve().parent.parent
MULTINODE_TEST = "test_multinode.py::test_replicas_spread_over_nodes_and_survive_losing_one"
MULTINODE_CHILD = pytest.StashKey["MultinodeChild"]()
#: In one of pytest-xdist's workers: each collects every test.
IN_XDIST_WORKER = bool(os.environ.get("PYTEST_XDIST_WORKER"))
#: This process runs every selected test: no xdist, or its only worker (``make test``'s side run).
RUNS_EVERY_TEST = not IN_XDIST_WORKER or os.environ.get("PYTEST_XDIST_WORKER_COUNT") == "1"


class MultinodeChild:
    """tests/multinode_child.py's scenario, running; its output goes to files (a pipe nobody reads
    yet would stall it)."""

    def __init__(self) -> None:
        self.stdout, self.stderr = tempfile.TemporaryFile("w+"), tempfile.TemporaryFile("w+")
        self.process = subprocess.Popen([sys.executable, str(ROOT / "tests" / "multinode_child.py")], cwd=ROOT,
                                        text=True, stdout=self.stdout, stderr=self.stderr)

    def result(self, timeout_s: float) -> tuple[int, str, str]:
        """(exit status, stdout, stderr), once it ended; killed past ``timeout_s``."""
        try:
            self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            raise
        self.stdout.seek(0)
        self.stderr.seek(0)
        return self.process.returncode, self.stdout.read(), self.stderr.read()


def start_multinode_child() -> MultinodeChild:
    return MultinodeChild()


def pytest_unconfigure(config: pytest.Config) -> None:
    child = config.stash.get(MULTINODE_CHILD, None)
    if child is not None and child.process.poll() is None:  # the session ended before its test
        child.process.kill()
CONFIGS = ROOT / "configs"

#: What every integration test changes in a shipped config to run it on this CPU machine.
CPU_OVERRIDES = ["model.id=tiny", "model.torch_threads=1", "resources.num_cpus=0.25"]
#: The simulated backend's load time in every simulated integration test (one deploy serves them all).
SIM_ARGS = ["simulation.load_time_s=0.5"]
#: The tiny CPU app with shedding off, so long requests always start, no per-client cap, so one
#: address may send everything, and an out-of-memory error for any request whose prompt says POISON:
#: shared by the tests that need these (one deploy serves them all).
CPU_PLAIN = pytest.mark.app("cpu", "deadlines.shed_hopeless=false", "queue.max_outstanding_per_client=null",
                            "testing.inject_oom_marker=POISON")
#: Live settings of simulated tests that watch one replica: fixed step times, one replica, no shedding.
ONE_SIM_REPLICA = ["simulation.scale_with_pixels=false", "autoscaling.policy.min_replicas=1",
                   "autoscaling.policy.max_replicas=1", "deadlines.shed_hopeless=false"]


def free_port() -> int:
    """A loopback port no one listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Deployed:
    """A running application and an HTTP client pointed at it."""

    def __init__(self, url: str, app_name: str) -> None:
        self.url = url
        self.app_name = app_name
        self.client = httpx.Client(base_url=url, timeout=120)

    def worker_replicas(self) -> dict[str, int]:
        """Worker replica counts by state, from ``serve.status()``."""
        from ray import serve

        from serve.fleet import state_name
        from serve.settings import WORKER_DEPLOYMENT

        app = serve.status().applications.get(self.app_name)
        if app is None:
            return {}
        return {state_name(k): v for k, v in app.deployments[WORKER_DEPLOYMENT].replica_states.items()}

    def outcome_counts(self) -> dict[str, float]:
        """``sdserve_requests_total`` by outcome, as the server counts them now."""
        from benchmarks.soak import server_counts

        return server_counts(self.url)

    def wait_for_workers(self, running: int, timeout_s: float = 60) -> None:
        """Until exactly ``running`` worker replicas run and none is starting or stopping (a test
        after another one that scaled the fleet)."""
        import time

        deadline = time.monotonic() + timeout_s
        while (states := self.worker_replicas()) != ({"RUNNING": running} if running else {}):
            if time.monotonic() > deadline:
                raise AssertionError(f"worker replicas {states}, wanted {running} running")
            time.sleep(0.2)

    def worker_stats(self, replicas: int = 1) -> list[dict[str, Any]]:
        """Counters from ``replicas`` distinct worker replicas (asked until each has answered)."""
        from ray import serve

        from serve.settings import WORKER_DEPLOYMENT

        handle = serve.get_deployment_handle(WORKER_DEPLOYMENT, app_name=self.app_name)
        seen: dict[str, dict[str, Any]] = {}
        for _ in range(50 * replicas):
            stats = handle.stats.remote().result()
            seen[stats["replica_id"]] = stats
            if len(seen) >= replicas:
                break
        return list(seen.values())


def split_overrides(overrides: list[str]) -> tuple[list[str], dict[str, Any]]:
    """``key=value`` overrides → (those of ``args``, the live ones as a ``user_config`` tree)."""
    import yaml

    from serve.settings import LIVE_KEYS

    args, live = [], {}
    for assignment in overrides:
        key, _, raw = assignment.partition("=")
        if not any(key == k or key.startswith(f"{k}.") for k in LIVE_KEYS):
            args.append(assignment)
            continue
        node = live
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = yaml.safe_load(raw)
    return args, live


class AppPool:
    """The session's one deployed application, redeployed only when its config or ``args`` change."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.key: tuple[str, tuple[str, ...]] | None = None
        self.live: Any = None  # (user_config, deployment overrides) applied to the current deployment
        self.app: Deployed | None = None

    def get(self, name: str, overrides: list[str] | tuple[str, ...] = (),
            deployments: dict[str, list[str]] | None = None, fresh: bool = False, wait: bool = True) -> Deployed:
        """``configs/<name>.yaml`` with the CPU overrides and ``overrides``; ``fresh``: a new
        deployment even if the same one runs; ``wait``: until it serves (else at once)."""
        from serve.deploy import deploy
        from serve.dispatcher import POLL_S
        from serve.settings import INGRESS_DEPLOYMENT, WORKER_DEPLOYMENT, load_config

        args, user_config = split_overrides(list(overrides))
        key = (name, tuple(sorted(args)))
        live = (user_config, sorted((deployments or {}).items()))
        if key == self.key and live == self.live and not fresh:
            return self.app  # type: ignore[return-value]
        if fresh or key != self.key:
            self.release()
        config = load_config(CONFIGS / f"{name}.yaml", CPU_OVERRIDES + args, deployments)
        config["http_options"]["port"] = self.port
        app_config = config["applications"][0]
        for deployment in app_config["deployments"]:
            if deployment["name"] in (WORKER_DEPLOYMENT, INGRESS_DEPLOYMENT):
                deployment["user_config"] = user_config
        limits_changed = self.live is not None and self.live[1] != live[1]
        self.key, self.live = None, None  # until it is known to run
        deploy(config, timeout_s=180, wait=wait)
        if limits_changed:  # the dispatcher reads the worker's limits every POLL_S: let it see the new ones
            time.sleep(2 * POLL_S)
        self.key, self.live = key, live
        if self.app is None or self.app.app_name != app_config["name"]:
            self.app = Deployed(f"http://127.0.0.1:{self.port}", app_config["name"])
        return self.app

    def release(self) -> None:
        """Delete the application (before another config takes the same name and route)."""
        from ray import serve

        if self.app is not None:
            self.app.client.close()
            serve.delete(self.app.app_name)
        self.app, self.key, self.live = None, None, None


@pytest.fixture(scope="session")
def tiny_model_dir() -> Path:
    from models.tiny import ensure_tiny_model

    return ensure_tiny_model()


@pytest.fixture(scope="session")
def ray_cluster(tiny_model_dir: Path) -> Iterator[dict[str, Any]]:
    """A local Ray with fake GPUs and Serve's HTTP proxy on a free loopback port."""
    import ray
    from ray import serve

    # "local": a new cluster, never one that ray.init() would otherwise find on the machine (the
    # 3-node test's, whose address Ray's Cluster writes to /tmp/ray while it runs)
    ray.init(address="local", num_cpus=8, num_gpus=4, namespace="serve", include_dashboard=False)
    info = {"port": free_port()}
    try:
        yield info
    finally:
        serve.shutdown()
        ray.shutdown()


@pytest.fixture(scope="session")
def app_pool(ray_cluster: dict[str, Any]) -> Iterator[AppPool]:
    pool = AppPool(ray_cluster["port"])
    yield pool
    pool.release()


@pytest.fixture
def app(request: pytest.FixtureRequest, app_pool: AppPool) -> Deployed:
    """The application the test's ``app`` marker names: ``@pytest.mark.app("cpu", "key=value", ...,
    deployments={"DiffusionWorker": ["max_queued_requests=3"]})``."""
    marker = request.node.get_closest_marker("app")
    assert marker is not None, "the app fixture needs @pytest.mark.app(config, *overrides)"
    name, *overrides = marker.args
    return app_pool.get(name, overrides, marker.kwargs.get("deployments"))


def _deployment_key(item: pytest.Item) -> tuple[str, tuple[str, ...]] | None:
    marker = item.get_closest_marker("app")
    if marker is None:
        return None
    name, *overrides = marker.args
    args, _ = split_overrides(overrides)
    return name, tuple(sorted(args))


def split_applications(items: list[pytest.Item]) -> list[tuple[str, tuple[str, ...]]]:
    """The applications some of whose tests are marked ``side_run`` and some not."""
    side_run: dict[tuple[str, tuple[str, ...]], set[bool]] = {}
    for item in items:
        if (key := _deployment_key(item)) is not None:
            side_run.setdefault(key, set()).add(item.get_closest_marker("side_run") is not None)
    return [key for key, runs in side_run.items() if len(runs) > 1]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests without Ray first; then Ray's, grouped by the application they deploy (each deployed
    once), first-come order otherwise; the 3-node test last (its cluster starts at collection and
    runs beside the others), or first among several xdist workers (one of them waits on it while
    the others run). Tests that use the cluster are marked ``ray``. An application's tests are all
    marked ``side_run`` or none are, else both of ``make test``'s runs would deploy it."""
    first_seen: dict[Any, int] = {}
    for item in items:
        if "ray_cluster" in getattr(item, "fixturenames", ()) and item.get_closest_marker("ray") is None:
            item.add_marker(pytest.mark.ray)
        first_seen.setdefault(_deployment_key(item), len(first_seen))
    if split := split_applications(items):  # both of make test's runs would deploy them
        raise pytest.UsageError(f"mark every test of an application side_run, or none: {split}")

    def order(indexed: tuple[int, pytest.Item]) -> tuple[int, int, int, int]:
        index, item = indexed
        if item.get_closest_marker("own_cluster"):
            return (2 if RUNS_EVERY_TEST else -1), 0, 0, index
        if item.get_closest_marker("ray") is None:
            return 0, 0, 0, index
        marker = item.get_closest_marker("app")
        fresh = marker is not None and marker.kwargs.get("fresh", False)  # first: its deploy is the group's
        return 1, first_seen[_deployment_key(item)], 0 if fresh else 1, index

    items[:] = [item for _, item in sorted(enumerate(items), key=order)]


def pytest_collection_finish(session: pytest.Session) -> None:
    """When the 3-node test is among the tests that will run (after ``-m``/``-k`` selection), start its
    cluster now, in a subprocess: it runs beside the other tests instead of after them; the test,
    last, reads its result. Not where several xdist workers each collect every test: there the
    test starts it itself."""
    if not RUNS_EVERY_TEST:
        return
    if any(item.nodeid.endswith(MULTINODE_TEST) for item in session.items) and not session.config.option.collectonly:
        session.config.stash[MULTINODE_CHILD] = start_multinode_child()
