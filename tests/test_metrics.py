"""Observability: after a scripted mix of requests every counter moved by exactly what happened,
histograms counted the right things, the text parses, and each request wrote one JSON log line."""

from __future__ import annotations

import json
import re
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from scheduler.outcomes import Outcome
from tests.conftest import ROOT, Deployed

pytestmark = pytest.mark.ray

URL = "/v1/images/generations"
DASHBOARD = ROOT / "deploy" / "grafana" / "sdserve-dashboard.json"


def _scrape(client: Any) -> tuple[dict[tuple[str, tuple], float], str]:
    text = client.get("/metrics").text
    values = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            values[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return values, text


def _value(values: dict, name: str, **labels: str) -> float:
    wanted = set(labels.items())
    return sum(v for (n, ls), v in values.items() if n == name and wanted <= set(ls))


def _ingress_log_lines(request_ids: set[str]) -> list[dict[str, Any]]:
    import ray

    logs = Path(ray._private.worker.global_worker.node.get_logs_dir_path()) / "serve"
    found = []
    for path in logs.glob("replica_*Ingress*.log"):
        for line in path.read_text(errors="replace").splitlines():
            match = re.search(r"(\{\"event\": \"sdserve_request\".*\})", line)
            if match:
                record = json.loads(match.group(1))
                if record["request_id"] in request_ids:
                    found.append(record)
    return found


@pytest.mark.app("cpu", "testing.inject_oom_marker=POISON", "deadlines.shed_hopeless=false",
                 "memory.measure_every_n_calls=1", "queue.max_outstanding_per_client=null")  # one address
def test_counters_histograms_and_logs_account_for_every_request(app: Deployed) -> None:
    before, _ = _scrape(app.client)
    sent: list[tuple[str, int]] = []

    def post(body: dict[str, Any], rid: str) -> int:
        status = app.client.post(URL, json=body, headers={"X-Request-Id": rid}).status_code
        sent.append((rid, status))
        return status

    assert post({"prompt": "ok one", "num_inference_steps": 2}, "m-ok-1") == 200
    assert post({"prompt": "ok two", "num_inference_steps": 2}, "m-ok-2") == 200
    assert post({"prompt": ""}, "m-bad") == 422
    assert post({"prompt": "slow", "size": "128x128", "num_inference_steps": 100, "timeout_s": 1}, "m-late") == 504
    assert post({"prompt": "POISON", "num_inference_steps": 2}, "m-oom") == 507
    crowd = {"prompt": "crowd", "num_inference_steps": 40, "timeout_s": 120}
    with ThreadPoolExecutor(14) as pool:
        codes = list(pool.map(lambda i: post(crowd, f"m-crowd-{i}"), range(14)))
    assert set(codes) <= {200, 503} and 503 in codes

    after, text = _scrape(app.client)
    statuses = Counter(status for _, status in sent)

    def delta(name: str, **labels: str) -> float:
        return _value(after, name, **labels) - _value(before, name, **labels)

    expected = {Outcome.OK: statuses[200], Outcome.INVALID: 1, Outcome.DEADLINE: 1, Outcome.OUT_OF_MEMORY: 1,
                Outcome.OVERLOADED: statuses[503]}
    for outcome, count in expected.items():
        assert delta("sdserve_requests_total", outcome=outcome) == count, outcome
    assert delta("sdserve_requests_total", outcome=Outcome.DEADLINE, phase="running") == 1
    assert delta("sdserve_requests_total") == len(sent)  # the accounting identity
    assert delta("sdserve_request_latency_seconds_count", outcome=Outcome.OK) == statuses[200]
    assert delta("sdserve_queue_wait_seconds_count") == statuses[200]
    assert delta("sdserve_service_time_seconds_count") == statuses[200]
    assert delta("sdserve_batch_images_count") == statuses[200]  # one call per request here
    assert delta("sdserve_step_time_seconds_count") == statuses[200]
    assert delta("sdserve_memory_estimate_over_peak_ratio_count") == statuses[200]  # every call measured
    assert delta("sdserve_oom_events_total") == 1
    assert _value(after, "sdserve_replica_cold_starts_total") >= 1
    assert _value(after, "sdserve_replica_cold_start_seconds_count") >= 1
    assert "# TYPE sdserve_requests_total counter" in text

    lines = _ingress_log_lines({rid for rid, _ in sent})
    by_id = {line["request_id"]: line for line in lines}
    assert len(lines) == len(sent) == len(by_id)  # exactly one line per request
    assert by_id["m-ok-1"]["outcome"] == Outcome.OK and by_id["m-ok-1"]["steps_done"] == 2
    assert by_id["m-late"]["outcome"] == Outcome.DEADLINE and by_id["m-late"]["steps_done"] < 100
    assert by_id["m-oom"]["outcome"] == Outcome.OUT_OF_MEMORY and by_id["m-oom"]["replica_id"]
    assert by_id["m-bad"]["status"] == 422

    families = {f.name for f in text_string_to_metric_families(text)}
    names = {name for name, _ in after} | families  # labelled gauges show before first set
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    used = {m for e in exprs for m in re.findall(r"sdserve_[a-z_]+", e)}
    assert used and used <= names, used - names
    assert {"Queue depth", "Replicas", "Latency", "Outcomes", "Cold starts", "Out-of-memory"} <= {
        word for p in dashboard["panels"] for word in
        ("Queue depth", "Replicas", "Latency", "Outcomes", "Cold starts", "Out-of-memory") if word in p["title"]
    }
