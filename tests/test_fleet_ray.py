"""``ServeFleet`` against a real Serve controller: a replica Serve stops before any node ran it is
found and ended, where Ray alone would hold it for the deployment's graceful_shutdown_timeout_s."""

from __future__ import annotations

import asyncio
import time

import pytest

from tests.conftest import Deployed

pytestmark = pytest.mark.ray


@pytest.mark.app("cpu")  # the session's Serve, as the pool started it; this test adds an application beside it
def test_a_replica_no_node_ran_is_ended_once_serve_stops_it(app: Deployed) -> None:
    """As the scaling loop meets it: a replica asked for where no node has room (here: a resource
    no node has), then scaled away."""
    from ray import serve

    from serve.fleet import ServeFleet

    @serve.deployment(ray_actor_options={"num_cpus": 0, "resources": {"nowhere": 1}}, num_replicas=1,
                      graceful_shutdown_timeout_s=600)
    class Unplaceable:
        def __call__(self) -> str:
            return "never"

    name = "unplaceable"
    serve._run(Unplaceable.bind(), name=name, route_prefix=None, _blocking=False, external_scaler_enabled=True)
    fleet = ServeFleet(name, "Unplaceable")

    def status():  # noqa: ANN202
        return asyncio.run(fleet.status())

    def until(condition, what: str, within_s: float = 30.0):  # noqa: ANN001, ANN202 - a test's poll
        deadline = time.monotonic() + within_s
        while time.monotonic() < deadline:
            if value := condition():
                return value
            time.sleep(0.2)
        raise AssertionError(f"not {what} within {within_s:g}s")

    try:
        until(lambda: status().counts.starting == 1, "starting")
        assert status().unplaced_stopping == ()  # waiting for room, not stopping: left alone
        asyncio.run(fleet.scale(0))
        stopping = until(lambda: status().unplaced_stopping, "stopping")
        assert len(stopping) == 1 and stopping[0].startswith("SERVE_REPLICA::unplaceable#Unplaceable#")
        time.sleep(2.0)
        assert status().unplaced_stopping == stopping  # Ray alone holds it (for 600 s here)
        assert serve.status().applications[name].status != "RUNNING"
        assert asyncio.run(fleet.cancel(stopping)) == 1
        until(lambda: status().unplaced_stopping == () and serve.status().applications[name].status == "RUNNING",
              "stopped")
        assert asyncio.run(fleet.cancel(stopping)) == 0  # gone already
    finally:
        serve.delete(name, _blocking=False)
