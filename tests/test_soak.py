"""The soak in short (60 s; the full 10 minutes is ``sdserve-bench soak``, result committed):
3× the CPU config's measured capacity with deadlines, hang-ups, invalid, oversize and broken bodies.
Sent = Σ counted outcomes exactly, only documented statuses, RSS growth < 10 %, serves after."""

from __future__ import annotations

from typing import Any

from benchmarks.soak import run_soak
from tests.conftest import deployed


def test_sixty_seconds_of_abuse_balance_the_books(ray_cluster: dict[str, Any]) -> None:
    with deployed(ray_cluster, "cpu") as app:
        result = run_soak(app.url, app.app_name, duration_s=60, multiple=3.0, warmup_s=10)
    assert result["sent"] > 100, result
    assert result["server_counted"] == result["sent"], result["server_outcomes"]
    assert not result["undocumented_statuses"], result["undocumented_statuses"]
    assert result["rss_growth"] and max(result["rss_growth"].values()) < 0.10, result["rss_growth"]
    assert result["served_after"] == 200
    outcomes = result["server_outcomes"]
    for expected in ("ok", "invalid", "cancelled"):  # the mix really reached these paths
        assert outcomes.get(expected, 0) > 0, outcomes
    assert outcomes.get("overloaded", 0) + outcomes.get("deadline_exceeded", 0) + outcomes.get("shed", 0) > 0
