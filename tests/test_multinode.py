"""Multi-node on one machine: a 3-node Ray cluster (fake GPUs) in a subprocess, so it cannot
collide with the session's cluster. See tests/multinode_child.py for the scenario."""

from __future__ import annotations

import json

import pytest

from scheduler.outcomes import Outcome
from tests.conftest import MULTINODE_CHILD, start_multinode_child

pytestmark = [pytest.mark.ray, pytest.mark.own_cluster]


def test_replicas_spread_over_nodes_and_survive_losing_one(request: pytest.FixtureRequest) -> None:
    """The child is started when the session's tests are collected (tests/conftest.py) and runs
    beside the tests without Ray; here it is waited for (or started, when it was not)."""
    child = request.config.stash.get(MULTINODE_CHILD, None) or start_multinode_child()
    returncode, stdout, stderr = child.result(timeout_s=300)
    lines = [line for line in stdout.splitlines() if line.startswith("{")]
    assert returncode == 0 and lines, stderr[-3000:]
    result = json.loads(lines[-1])
    assert result["replicas_per_node"] == {"worker-0": 2, "worker-1": 2}, result
    assert result["burst_statuses"] == [200] * 8 and result["burst_replicas"] == 4
    during = result["during_loss"]["statuses"]
    assert len(during) == 8 and all(s == 200 or 500 <= s < 600 for s in during), result
    assert all(code in ("replica_lost", Outcome.DEADLINE) for code in result["during_loss"]["codes"])
    assert result["after_loss_statuses"] == [200] * 4
    survivor = "worker-1" if result["lost_node"] == "worker-0" else "worker-0"
    assert set(result["replicas_after_loss"]) == {survivor}, result
