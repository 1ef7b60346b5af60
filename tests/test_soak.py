"""The soak in short (8 s of warm-up, 12 s of load; the full 10 minutes is ``sdserve-bench soak``,
result committed):
3× the CPU config's measured capacity with deadlines, hang-ups, invalid, oversize and broken bodies.
Sent = Σ counted outcomes exactly, only documented statuses, RSS growth < 10 %, serves after."""

from __future__ import annotations

import pytest

from benchmarks.soak import run_soak
from scheduler.outcomes import Outcome
from tests.conftest import Deployed


@pytest.mark.ray
@pytest.mark.slow
@pytest.mark.app("cpu", "queue.max_outstanding_per_client=null")  # one address drives it all
def test_half_a_minute_of_abuse_balances_the_books(app: Deployed) -> None:
    result = run_soak(app.url, app.app_name, duration_s=12, multiple=3.0, warmup_s=8)
    assert result["sent"] > 60, result
    assert result["server_counted"] == result["sent"], result["server_outcomes"]
    assert not result["undocumented_statuses"], result["undocumented_statuses"]
    assert result["rss_growth"] and max(result["rss_growth"].values()) < 0.10, result["rss_growth"]
    assert result["served_after"] == 200
    outcomes = result["server_outcomes"]
    for expected in (Outcome.OK, Outcome.INVALID, Outcome.CANCELLED):  # the mix really reached these paths
        assert outcomes.get(expected, 0) > 0, outcomes
    assert outcomes.get(Outcome.OVERLOADED, 0) + outcomes.get(Outcome.DEADLINE, 0) + outcomes.get(Outcome.SHED, 0) > 0
