"""The benchmark: statistics and trace reading (unit), and a smoke run against a real server."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import cli
from benchmarks.loadgen import Record, RequestTemplate, classify
from benchmarks.report import write_outputs
from benchmarks.runner import Target, Workload, run_target
from benchmarks.stats import (
    AccountingError,
    percentiles,
    replica_seconds,
    replica_starts,
    summarize,
    time_to_replicas,
)
from benchmarks.traces import Arrival, TraceError, busiest_window, parse_window, read_trace, split_arrivals
from benchmarks.workloads import burst, poisson
from scheduler.outcomes import Outcome
from tests.conftest import CPU_PLAIN, ROOT, Deployed

SYNTHETIC = ROOT / "benchmarks" / "traces" / "synthetic-20.csv"


def _production_csv(tmp_path: Path) -> Path:
    path = tmp_path / "prod.csv"
    path.write_text(
        "gmt_create,predict_type,predict_status,exec_time_seconds,groupId,prompt_length,"
        "negative_prompt_length,num_images_per_prompt,num_inference_steps,checkpoint_model_version_id,num_lora\n"
        "2024-11-15 16:57:50,TXT_2_IMG,SUCCEED,32.0,G0,63.0,26.0,1.0,30.0,M0,0\n"
        "2024-11-15 16:58:10,TXT_2_IMG,SUCCEED,43.0,G1,93.0,,4.0,,M1,0\n"
        "2024-11-15 16:59:50,IMG_2_IMG,SUCCEED,36.0,G1,93.0,,,40.0,M1,0\n"
        "2024-11-15 18:00:00,TXT_2_IMG,SUCCEED,36.0,G1,93.0,,8.0,40.0,M1,0\n"
    )
    return path


def test_production_trace_window_time_scale_and_missing_fields(tmp_path: Path) -> None:
    path = _production_csv(tmp_path)
    arrivals = read_trace(path, "2024-11-15 16:57:50..2024-11-15 17:00:00", time_scale=10)
    assert arrivals == [Arrival(0.0, 1, 30, "G0", "M0"), Arrival(2.0, 4, None, "G1", "M1"),
                        Arrival(12.0, 1, 40, "G1", "M1", "img2img")]
    assert len(read_trace(path)) == 4
    assert read_trace(path, "2024-11-15 17:00:00..")[0] == Arrival(3600.0, 8, 40, "G1", "M1")  # from the window start
    assert busiest_window(path) == "2024-11-15 16:00:00..2024-11-15 17:00:00"


def test_lora_ids_and_named_model_columns_are_read(tmp_path: Path) -> None:
    production = tmp_path / "loras.csv"
    production.write_text(
        "gmt_create,predict_type,groupId,num_images_per_prompt,num_inference_steps,checkpoint_model_version_id,"
        "num_lora,lora_ids\n"
        "2024-11-15 16:57:50,TXT_2_IMG,G0,1.0,30.0,M0,2,L0018:0.8;L0077:1\n"
        "2024-11-15 16:58:00,TXT_2_IMG,G0,1.0,30.0,M1,0,\n")
    assert [(a.model, a.loras) for a in read_trace(production)] == [("M0", ("L0018:0.8", "L0077:1")), ("M1", ())]
    plain = tmp_path / "plain.csv"
    plain.write_text("timestamp,n,steps,model,loras\n0,2,20,M3,L1:1\n1.5,1,,M4,\n")
    assert read_trace(plain) == [Arrival(0.0, 2, 20, "", "M3", loras=("L1:1",)), Arrival(1.5, 1, None, "", "M4")]
    first, rest = split_arrivals(read_trace(production), 5.0)  # the split keeps every field
    assert (first[0].loras, rest[0].at, rest[0].model, rest[0].tenant) == (("L0018:0.8", "L0077:1"), 5.0, "M1", "G0")


def test_the_simulator_replays_an_edit_with_the_steps_its_strength_runs(tmp_path: Path) -> None:
    from benchmarks.sim_config import load_target

    arrivals = read_trace(_production_csv(tmp_path), "2024-11-15 16:57:50..2024-11-15 17:00:00")
    requests = load_target("configs/single.yaml", cold_start_s=10).requests(arrivals)
    # text keeps its 30 steps; the image-to-image row runs 80 % of its 40 (diffusers' default strength)
    assert [(r.kind, r.steps) for r in requests] == [("text", 30), ("text", 25), ("img2img", 32)]


def test_plain_trace_and_window_parsing() -> None:
    arrivals = read_trace(SYNTHETIC)
    assert len(arrivals) == 20 and arrivals[0].at == 0.0
    assert all(b.at >= a.at for a, b in zip(arrivals, arrivals[1:]))
    assert {a.n for a in arrivals} <= {1, 2}
    halved = read_trace(SYNTHETIC, time_scale=2.0)
    assert halved[-1].at == pytest.approx(arrivals[-1].at / 2)
    assert parse_window("10..20") == (10.0, 20.0) and parse_window(None) == (None, None)
    with pytest.raises(TraceError, match="START..END"):
        parse_window("10-20")
    day, next_day = parse_window("2024-12-06..2024-12-07 00:00")  # seconds and time may be left out
    assert next_day - day == 86400
    with pytest.raises(TraceError, match="'2024-13-01'"):
        parse_window("2024-13-01..")


def test_a_bad_trace_row_names_its_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.csv"
    path.write_text("timestamp,n\n0,1\nsoon,2\n")
    with pytest.raises(TraceError, match=r"bad.csv, line 3: 'soon'"):
        read_trace(path)
    path.write_text("when,n\n0,1\n")
    with pytest.raises(TraceError, match="'gmt_create' or 'timestamp'"):
        read_trace(path)


@pytest.mark.parametrize("argv, named", [
    (["simulate", "--trace", "no-such.csv", "--config", "configs/single.yaml"], "no such file: no-such.csv"),
    (["heldout", "--trace", str(SYNTHETIC), "--config", "configs/nope.yaml"], "no such file: configs/nope.yaml"),
    (["simulate", "--trace", str(SYNTHETIC), "--config", "configs/nope.yaml#x#a=1"], "no such file: configs/nope.yaml"),
    (["simulate", "--trace", str(SYNTHETIC), "--config", "configs/single.yaml", "--window", "10-20"], "window '10-20' must look like START..END"),
])
def test_the_cli_refuses_bad_inputs_with_a_message_not_a_traceback(
        argv: list[str], named: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        cli.main(argv)
    assert exited.value.code == 2
    assert f"sdserve-bench {argv[0]}: error: {named}" in capsys.readouterr().err


def test_workloads() -> None:
    assert burst(3) == [Arrival(0.0)] * 3
    arrivals = poisson(rate=5.0, duration_s=100.0, seed=1)
    assert 400 < len(arrivals) < 600 and all(0 <= a.at < 100 for a in arrivals)
    assert poisson(5.0, 10.0, seed=1) == poisson(5.0, 10.0, seed=1)


@pytest.mark.parametrize(("status", "code", "outcome"), [
    (200, "", Outcome.OK), (504, Outcome.DEADLINE, Outcome.DEADLINE), (504, Outcome.SHED, Outcome.SHED),
    (503, Outcome.OVERLOADED, Outcome.OVERLOADED), (429, Outcome.RATE_LIMITED, Outcome.RATE_LIMITED), (499, "", Outcome.CANCELLED),
    (507, Outcome.OUT_OF_MEMORY, Outcome.OUT_OF_MEMORY), (422, "invalid_value", Outcome.INVALID),
    (500, Outcome.ERROR, Outcome.ERROR),
    (408, "", Outcome.DEADLINE), (408, "request_timeout", Outcome.INVALID),
])
def test_classify(status: int, code: str, outcome: str) -> None:
    assert classify(status, code) == outcome


def _record(i: int, outcome: str = Outcome.OK, latency: float = 1.0, service: float = 1.0, batch: int = 1) -> Record:
    return Record(i, 0.0, sent_s=float(i), done_s=i + latency, status=200, outcome=outcome,
                  service_time_s=service, queue_wait_s=latency - service, batch_images=batch)


def test_summary_statistics() -> None:
    records = [_record(i, latency=1.0 + i) for i in range(10)] + [_record(10, Outcome.OVERLOADED)]
    samples = [{"t": 0.0, "replicas": 1, "running": 0, "outstanding": 0},
               {"t": 10.0, "replicas": 3, "running": 3, "outstanding": 2},
               {"t": 20.0, "replicas": 1, "running": 1, "outstanding": 0}]
    summary = summarize(records, samples, slo_s=5.0)
    assert summary["outcomes"][Outcome.OK] == 10 and summary["outcomes"][Outcome.OVERLOADED] == 1
    assert summary["slo_attainment"] == pytest.approx(5 / 11)
    lat = summary["latency_s"]
    assert lat["p50"] <= lat["p90"] <= lat["p99"]
    assert summary["replica_seconds"] == pytest.approx(40.0)
    assert summary["oracle_replica_seconds"] == pytest.approx(10.0)
    assert summary["replica_seconds_over_oracle"] == pytest.approx(4.0)
    assert replica_starts(samples) == 2
    assert time_to_replicas(samples, 5.0) == [5.0, 5.0, 5.0]
    assert replica_seconds(samples[:1]) == 0.0
    assert percentiles([]) == {"p50": None, "p90": None, "p99": None}


def test_batched_oracle_shares_a_call_between_its_images() -> None:
    records = [_record(i, service=4.0, batch=4) for i in range(4)]
    assert summarize(records, [], 10)["oracle_replica_seconds"] == pytest.approx(4.0)


def test_lost_request_breaks_the_accounting_identity() -> None:
    with pytest.raises(AccountingError):
        summarize([_record(0, outcome="vanished")], [], 1.0)


@pytest.mark.ray
@CPU_PLAIN
def test_smoke_trace_replay_against_a_real_server(app: Deployed, tmp_path: Path) -> None:
    arrivals = read_trace(SYNTHETIC, time_scale=2)  # its 14 s in 7
    result = run_target(Target("tiny", url=app.url), Workload("open", arrivals),
                        RequestTemplate(size="64x64", steps=4), slo_s=10.0, warmup=1, tail_s=0.2)
    summary = result["summary"]
    assert summary["sent"] == 20 == sum(summary["outcomes"].values())
    assert summary["outcomes"][Outcome.OK] + summary["outcomes"][Outcome.OVERLOADED] == 20
    lat = summary["latency_s"]
    assert lat["p50"] <= lat["p90"] <= lat["p99"]
    sent = sorted(r["sent_s"] for r in result["records"])
    first = sent[0]
    for arrival, actual in zip(arrivals, sent):
        assert actual - first == pytest.approx(arrival.at, abs=0.25)
    paths = write_outputs({"tiny": result}, {"description": "smoke"}, tmp_path, "smoke")
    assert all(p.exists() and p.stat().st_size > 0 for p in paths)
    saved = json.loads(paths[0].read_text())
    assert len(saved["results"]["tiny"]["records"]) == 20
    assert "| sent | 20 |" in paths[1].read_text()


@pytest.mark.ray
@CPU_PLAIN
def test_smoke_sweep_reports_levels(app: Deployed) -> None:
    result = run_target(Target("tiny", url=app.url), Workload("sweep", concurrency=[1, 2], requests_per_level=3),
                        RequestTemplate(size="64x64", steps=2), slo_s=10.0, warmup=0, tail_s=0.1)
    assert [lv["concurrency"] for lv in result["levels"]] == [1, 2]
    assert result["summary"]["sent"] == 6
    assert result["cold_starts"] and all(c["cold_start_s"] > 0 for c in result["cold_starts"])  # each replica's own
    from benchmarks.monitor import FleetMonitor

    states = FleetMonitor(app.app_name, lambda: 0)._replica_states()  # as the monitor polls them
    assert states and {state for _, state in states} == {"RUNNING"}


def test_the_results_index_lists_every_committed_result() -> None:
    from benchmarks.results_index import INDEX, NOT_RESULTS, RESULTS

    index = INDEX.read_text()
    listed = {line.split("|")[1].strip() for line in index.splitlines() if line.startswith("| ")}
    results = {p.stem for p in RESULTS.glob("*.json")}
    assert results and results <= listed, results - listed
    for path in RESULTS.iterdir():  # every file is a result's, or named as something else
        assert path.name in NOT_RESULTS or any(path.name.startswith(stem) for stem in results), path.name


def test_the_switch_benchmark_measures_every_tier_and_the_catalog_uses_host_memory() -> None:
    from benchmarks.switch import measure

    result = measure(["tiny", "tiny:1"], "", "cpu", repeat=1)
    assert set(result["tiers"]) == {"disk, page cache cold", "disk, page cache warm",
                                    "host → device (copy into a built pipeline)", "device → host (eviction snapshot)",
                                    "host → device, first copy into a just-loaded pipeline"}
    assert all(s["n"] == 1 and s["median_s"] > 0 for s in result["tiers"].values())
    # switching round two checkpoints with one resident: the first comes from disk, then host memory
    assert {tier: s["n"] for tier, s in result["catalog"].items()} == {"disk": 1, "host": 1}


def test_the_gpu_check_runs_its_whole_sequence_as_a_dry_run_on_cpu() -> None:
    from benchmarks.gpu_check import Plan, _markdown, run_check

    result = run_check(Plan(dry_run=True))
    assert set(result["steps"]) == {"1", "2"} and all(r["s_per_step"] > 0 for r in result["steps"].values())
    oom = result["out_of_memory"]
    assert (oom["outcome"], oom["next_request"], oom["oom_count"], oom["injected"]) == (
        "out_of_memory", "ok", 1, True)  # failed alone; the same runner served the next request
    deadline = result["deadline"]
    assert deadline["outcome"] == "deadline_exceeded" and deadline["steps_done"] < deadline["steps"]
    assert result["switch"]["host_to_device_s"] > 0 and result["start"]["weights_disk_cold_s"] > 0
    lora = result["lora"]
    assert lora["hotswap_error"] == "" and {what: s["n"] for what, s in lora["figures"].items()} == {
        "read, page cache cold": 3, "read, page cache warm": 3, "apply (state dict in memory)": 3, "delete": 3,
        "apply, UNet layers only": 3, "whole load, page cache cold": 3, "whole load, page cache warm": 3,
        "hotswap apply, UNet layers only (into a loaded adapter)": 3}
    assert "DRY RUN" in _markdown(result) and "| apply (state dict in memory) |" in _markdown(result)


@pytest.mark.parametrize(("polls", "expected"), [
    ([(0.0, [("a", "RUNNING")]), (1.0, [("a", "RUNNING")])], []),  # up before the polls: no start seen
    ([(0.0, [("a", "STARTING")]), (0.5, [("a", "STARTING")]), (2.5, [("a", "RUNNING")])], [2.5]),
    ([(0.0, [("a", "STARTING")]), (1.0, [("a", "STARTING"), ("b", "STARTING")]),
      (2.0, [("a", "STARTING"), ("b", "RUNNING")]), (4.0, [("a", "RUNNING"), ("b", "RUNNING")])],
     [4.0, 1.0]),  # in the order asked for, not the order they came up
    ([(0.0, [("a", "STARTING")]), (1.0, [("a", "STOPPING")])], []),  # stopped before it ran
    ([(0.0, [("a", "STARTING")]), (3.0, [("a", "RUNNING")]), (9.0, [("a", "STARTING")]),
      (9.5, [("a", "RUNNING")])], [3.0]),  # one start per replica (a later update is not one)
])
def test_replica_starts_are_timed_from_first_seen_starting_to_first_seen_running(
        polls: list[tuple[float, list[tuple[str, str]]]], expected: list[float]) -> None:
    from benchmarks.monitor import StartTimes

    starts = StartTimes()
    for t, replicas in polls:
        starts.observe(t, replicas)
    assert starts.durations() == expected


def test_a_result_is_dirty_only_when_code_changed_not_when_an_earlier_result_was_rewritten(tmp_path: Path) -> None:
    import subprocess

    from benchmarks.report import git_commit

    def git(*args: str) -> str:
        return subprocess.run(["git", "-c", "user.email=t@t", "-c", "user.name=t", *args], cwd=tmp_path,
                              check=True, capture_output=True, text=True).stdout.strip()

    git("init", "-q")
    (tmp_path / "benchmarks" / "results").mkdir(parents=True)
    (tmp_path / "benchmarks" / "results" / "a.json").write_text("{}")
    (tmp_path / "code.py").write_text("x = 1\n")
    git("add", "-A")
    git("commit", "-qm", "start")
    head = git("rev-parse", "HEAD")
    assert git_commit(tmp_path) == head
    (tmp_path / "benchmarks" / "results" / "a.json").write_text('{"again": true}')  # a series' earlier run
    assert git_commit(tmp_path / "benchmarks") == head
    (tmp_path / "code.py").write_text("x = 2\n")
    assert git_commit(tmp_path) == head + "-dirty"
