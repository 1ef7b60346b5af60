"""The config recommender (pure choice rules, and the CLI on a trace whose answer is known) and the
``simulate`` command's outputs."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
import yaml

from benchmarks import recommend as recommend_cli
from benchmarks import simulate as simulate_cli
from benchmarks.sim_config import ModelReplay, load_target
from scheduler.recommend import Candidate, Score, choose, grid, pareto_front
from serve.settings import WORKER_DEPLOYMENT
from tests.conftest import CONFIGS, ROOT

SYNTHETIC = ROOT / "benchmarks" / "traces" / "synthetic-20.csv"


def _score(replicas: int, batch: int, slo: float, cost: float, keep: float = 60) -> Score:
    return Score(Candidate(replicas, batch, keep, 30), slo, cost)


@pytest.mark.parametrize(
    "scores, target, expected",
    [
        # the cheapest that meets the target, not the best attainment
        ([_score(1, 1, 0.90, 100), _score(2, 1, 0.995, 200), _score(3, 1, 1.0, 300)], 0.99, (2, 1)),
        # nothing meets it: no recommendation
        ([_score(1, 1, 0.90, 100)], 0.99, None),
        # a tie on cost: single before batched, then fewer replicas
        ([_score(2, 4, 0.999, 200), _score(2, 1, 0.999, 200.1), _score(3, 1, 0.999, 200)], 0.99, (2, 1)),
    ],
)
def test_choice_table(scores: list[Score], target: float, expected: tuple[int, int] | None) -> None:
    chosen = choose(scores, target)
    assert (None if chosen is None else (chosen.candidate.max_replicas, chosen.candidate.batch_size)) == expected


def test_pareto_front_drops_dominated_points() -> None:
    a, b, c, d = _score(1, 1, 0.5, 10), _score(2, 1, 0.4, 20), _score(3, 1, 0.9, 30), _score(4, 1, 0.9, 40)
    assert pareto_front([d, c, b, a]) == [a, c]
    assert len(grid([1, 4], [60, 300], [30], range(1, 4))) == 12
    assert len(grid([1], [60, 300], [30], range(1, 3), penalties_s=[150])) == 6


def _constant_trace(tmp_path: Path) -> Path:
    """One request a second, 25 steps of 512x512 (1.475 s each on the simulated A10): one replica
    cannot keep up (utilisation 1.5), two can (0.74) — the cheapest answer is exactly 2."""
    path = tmp_path / "constant.csv"
    path.write_text("timestamp,n,steps\n" + "".join(f"{i}.0,1,25\n" for i in range(400)))
    return path


def _args(parser_setup, **values) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    parser_setup(parser)
    argv = []
    for key, value in values.items():
        flag = "--" + key.replace("_", "-")
        for item in value if isinstance(value, list) else [value]:
            argv += [flag] if item is True else [flag, str(item)]
    return parser.parse_args(argv)


def test_recommend_finds_the_known_answer_and_writes_a_deployable_config(tmp_path: Path) -> None:
    out = tmp_path / "recommended.yaml"
    args = _args(recommend_cli.add_arguments, trace=_constant_trace(tmp_path), slo=10, target=0.99,
                 max_replicas=4, modes="1", keep_alive="60,300", stable_window="30", cold_start_s=5,
                 out=out, out_dir=tmp_path, single_config=CONFIGS / "single.yaml",
                 batched_config=CONFIGS / "batched.yaml")
    assert recommend_cli.main(args) == 0
    config = yaml.safe_load(out.read_text())
    worker = next(d for d in config["applications"][0]["deployments"] if d["name"] == WORKER_DEPLOYMENT)
    assert config["applications"][0]["args"]["autoscaling"]["policy"]["max_replicas"] == 2
    assert worker["max_ongoing_requests"] == 1
    from ray.serve.schema import ServeDeploySchema

    ServeDeploySchema.model_validate(config)  # what `serve run` / `serve deploy` accept
    target = load_target(out, cold_start_s=5)  # and the simulator reads it back as the same knobs
    assert (target.policy_kwargs["max_replicas"], target.spec.gpu_slots, target.spec.max_batch_size) == (2, 2, 1)
    assert "chosen" in (tmp_path / "recommend.md").read_text()
    # chosen on the first half of the trace, then scored on the second: the config says both
    assert "where chosen; held out: 100.00%" in out.read_text().splitlines()[0]  # the dispatcher: no polling gaps


def test_recommend_says_so_when_nothing_meets_the_target(tmp_path: Path) -> None:
    args = _args(recommend_cli.add_arguments, trace=_constant_trace(tmp_path), slo=10, target=0.99,
                 max_replicas=1, modes="1", keep_alive="60", stable_window="30", cold_start_s=5,
                 out=tmp_path / "r.yaml", out_dir=tmp_path)
    assert recommend_cli.main(args) == 1
    assert not (tmp_path / "r.yaml").exists()


def test_simulate_writes_the_run_shaped_summary_for_a_plain_csv(tmp_path: Path) -> None:
    variant = f"{CONFIGS / 'ray-default.yaml'}#ray-target-2#DiffusionWorker:autoscaling_config.target_ongoing_requests=2"
    args = _args(simulate_cli.add_arguments, trace=SYNTHETIC,
                 config=[CONFIGS / "single.yaml", CONFIGS / "ray-default.yaml", variant],
                 fixed=2, name="plain", out_dir=tmp_path, cold_start_s=10)
    assert simulate_cli.main(args) == 0
    data = json.loads((tmp_path / "plain.json").read_text())
    assert data["meta"]["simulated"] is True and data["meta"]["command"].split()[0] != str(ROOT)
    assert set(data["results"]) == {"single", "ray-default", "ray-target-2", "fixed-2"}
    assert data["results"]["ray-target-2"]["target"]["policy"] == "ray-default"
    for result in data["results"].values():
        summary = result["summary"]
        assert summary["sent"] == 20 == sum(summary["outcomes"].values())
        for key in ("latency_s", "queue_wait_s", "slo_attainment", "replica_seconds", "oracle_replica_seconds",
                    "replica_starts", "max_replicas", "busy_seconds", "offline_replica_seconds"):
            assert key in summary
        # no run costs less than the bound over the windows it kept; all here met the SLO, so none
        # costs less than the bound every SLO-meeting schedule pays either
        assert summary["slo_attainment"] == 1.0
        assert summary["replica_seconds"] >= summary["own_lower_bound_replica_seconds"] > 0
        assert summary["replica_seconds_over_lower_bound"] >= 1.0
        assert summary["lower_bound_replica_seconds"] >= summary["busy_seconds"] > 0
        assert len(result["records"]) == 20
    for suffix in (".md", "-fleet.png", "-latency-cdf.png", "-slo-vs-cost.png"):
        assert (tmp_path / f"plain{suffix}").stat().st_size > 0


def test_heldout_tunes_each_policy_on_one_part_and_scores_it_on_the_other(tmp_path: Path) -> None:
    from benchmarks import heldout

    args = _args(heldout.add_arguments, trace=SYNTHETIC, split_s=7, grid="small", out_dir=tmp_path, name="h",
                 cold_start_s=10, jobs=1)
    assert heldout.main(args) == 0
    data = json.loads((tmp_path / "h.json").read_text())
    settings = len(heldout.sdserve_settings("small")) + len(heldout.ray_settings("small")) + 2  # + the shipped
    assert len(data["points"]) == 2 * settings  # every setting on both parts
    for size in ("full", "dense", "medium", "small", "fast-start", "fast-start-wide"):  # as many settings for each
        assert len(heldout.sdserve_settings(size)) == len(heldout.ray_settings(size)), size
    labels = {grid: {s.label for s in heldout.sdserve_settings(grid)} for grid in ("fast-start", "fast-start-wide")}
    wide = labels["fast-start-wide"] - labels["fast-start"]
    assert {s.split(", ")[1] for s in wide} == {"window 600s"}  # wide: fast-start, reaching Ray's longest downscale delay
    assert len(heldout.ray_settings("fast-start-wide")) == 16
    first, second = data["directions"]
    assert (first["tune"], first["score"]) == (second["score"], second["tune"])
    for direction in data["directions"]:
        for policy in (heldout.SDSERVE, heldout.RAY):
            choice = direction["choices"][policy]
            assert (choice["tuned"]["part"], choice["held_out"]["part"]) == (direction["tune"], direction["score"])
            assert choice["tuned"]["label"] == choice["held_out"]["label"]
    assert "Tuned on the" in (tmp_path / "h.md").read_text()
    assert (tmp_path / "h-1.png").stat().st_size > 0


@pytest.mark.parametrize(("ours", "expected", "strictly"), [
    ([(0.99, 100.0)], 0, False),       # as good, as cheap: matched by our point 0, not strictly
    ([(0.98, 50.0), (0.995, 99.0)], 1, True),  # the cheaper one misses the attainment, the next beats it
    ([(0.999, 101.0)], None, False),   # better but dearer: not matched
])
def test_a_ray_point_is_matched_only_by_at_least_its_attainment_at_no_more_cost(ours, expected, strictly) -> None:
    from benchmarks.heldout import Point, matched_by, strictly_beaten

    points = [Point("sdserve", str(k), "b", slo, cost, None, 0) for k, (slo, cost) in enumerate(ours)]
    theirs = Point("Ray default", "r", "b", 0.99, 100.0, None, 0)
    match = matched_by(points, theirs)
    assert (None if match is None else int(match.label)) == expected
    assert strictly_beaten(points, theirs) is strictly


def test_heldout_on_a_many_model_trace_adds_the_per_model_fleet_and_matches_each_baseline(tmp_path: Path) -> None:
    from benchmarks import heldout

    trace = ROOT / "benchmarks" / "traces" / "synthetic-models.csv"
    args = _args(heldout.add_arguments, trace=trace, split_s=3 * 3600, grid="small", out_dir=tmp_path, name="m",
                 cold_start_s=10, jobs=1, set=["model.resident_models=1"])
    assert heldout.main(args) == 0
    data = json.loads((tmp_path / "m.json").read_text())
    settings = len(heldout.sdserve_settings("small")) + 2 * len(heldout.ray_settings("small")) + 3
    assert len(data["points"]) == 2 * settings
    per_model = [p for p in data["points"] if p["policy"] == heldout.PER_MODEL]
    assert per_model and all(p["peak_replicas"] >= 1 for p in per_model)
    for direction in data["directions"]:
        assert set(direction["matched"]) == {heldout.RAY, heldout.PER_MODEL}
        bounds = data["bounds"][direction["score"]]
        assert bounds["share"] == 0.98 and 0 < bounds["share_lower_bound"] <= bounds["lower_bound_replica_seconds"]
        for policy, point in direction["cheapest_at_share"].items():  # the cheapest held-out point at 98 % or more
            scored = [p for p in data["points"] if p["policy"] == policy and p["part"] == direction["score"]]
            meeting = [p["replica_seconds"] for p in scored if p["slo_attainment"] >= 0.98]
            assert (point is None and not meeting) or point["replica_seconds"] == min(meeting)
            highest = direction["highest_below_share"].get(policy)  # when none reaches it: the highest
            assert (highest is None) == bool(meeting)
            assert highest is None or highest["slo_attainment"] == max(p["slo_attainment"] for p in scored)
    for p in data["points"]:  # every run's breakdown, the per-model fleet's over all its deployments
        view = p["breakdown"]
        assert sum(view["replica_seconds_by_fleet_size"].values()) == pytest.approx(p["replica_seconds"])
        assert sum(view["misses_by_cause"].values()) == round((1 - p["slo_attainment"]) * data["meta"]["parts"][p["part"]])
    report = (tmp_path / "m.md").read_text()
    assert "per-model deployments: its front" in report and "Serving only 98 % of the requests" in report
    for p in data["points"]:  # p50 and the checkpoint loads by tier beside each point (the per-model
        assert p["p50_s"] <= p["p99_s"]  # fleet's deployments hold one checkpoint each: it loads none)
        assert (p["loads"]["host"] + p["loads"]["disk"] > 0) == (p["policy"] != heldout.PER_MODEL)
    for direction in data["directions"]:  # in the report's rows of each policy's choice
        for choice in direction["choices"].values():
            p, loads = choice["held_out"], choice["held_out"]["loads"]
            assert (f"| {p['p50_s']:.1f} / {p['p99_s']:.1f} | {loads['per_request']:.3f} ({loads['host']:,}, "
                    f"{loads['disk']:,}; {loads['lora']:,}) | {p['replica_starts']}") in report
    assert "Cheapest held-out point at 98 % or more" in report
    for direction in data["directions"]:
        for policy, highest in direction["highest_below_share"].items():
            assert f"- {policy}: none; its highest, {highest['label']}" in report


def test_heldout_with_a_warm_up_scores_the_later_part_after_the_earlier_one(tmp_path: Path) -> None:
    """The earlier part scores as without a warm-up; the later part starts with what the earlier one
    left running (and the bounds allow for it)."""
    from benchmarks import heldout

    trace = ROOT / "benchmarks" / "traces" / "synthetic-models.csv"
    data = {}
    for warm_up in (False, True):
        args = _args(heldout.add_arguments, trace=trace, split_s=3 * 3600, grid="small", out_dir=tmp_path,
                     name=f"w{warm_up}", cold_start_s=10, jobs=1, set=["model.resident_models=1"])
        args.warm_up = warm_up
        assert heldout.main(args) == 0
        data[warm_up] = json.loads((tmp_path / f"w{warm_up}.json").read_text())
    first, later = data[True]["meta"]["parts"]
    points = {w: {(p["policy"], p["label"], p["part"]): p for p in data[w]["points"]} for w in data}
    assert all(p == points[False][key] for key, p in points[True].items() if key[2] == first)
    warmed = [p for key, p in points[True].items() if key[2] == later]
    assert any(p["alive_at_start"] > 0 for p in warmed)
    assert any(p != points[False][(p["policy"], p["label"], later)] for p in warmed)
    assert data[True]["bounds"][later]["warm_at_start"] == max(p["alive_at_start"] for p in warmed)
    assert data[True]["meta"]["warm_up"] and "warm-up" in (tmp_path / "wTrue.md").read_text()


def test_simulate_runs_the_per_model_fleet_beside_the_configs(tmp_path: Path) -> None:
    """``--per-model``: one deployment per checkpoint, summarised as one fleet beside the configs,
    against the same bounds, the bounds computed side by side with the runs."""
    trace = ROOT / "benchmarks" / "traces" / "synthetic-models.csv"
    args = _args(simulate_cli.add_arguments, trace=trace, config=[CONFIGS / "single.yaml"], name="p",
                 per_model=[CONFIGS / "ray-default.yaml"], out_dir=tmp_path, cold_start_s=10,
                 set=["model.resident_models=1"], jobs=2)
    assert simulate_cli.main(args) == 0
    results = json.loads((tmp_path / "p.json").read_text())["results"]
    fleet, single = results["ray-default-per-model"]["summary"], results["single"]["summary"]
    models = {a.model for a in simulate_cli.load_arrivals(args)}
    assert fleet["deployments"] == len(models) and fleet["peak_replicas"] == fleet["max_replicas"] >= 1
    assert fleet["sent"] == single["sent"] == len(simulate_cli.load_arrivals(args))
    assert fleet["model_loads"]["host"] == 0  # a deployment's replicas hold its one checkpoint
    assert fleet["lower_bound_replica_seconds"] == single["lower_bound_replica_seconds"] > 0
    assert fleet["replica_seconds"] >= fleet["lower_bound_replica_seconds"]
    assert "ray-default-per-model" in (tmp_path / "p.md").read_text()
    plain = tmp_path / "plain.csv"
    plain.write_text("timestamp\n0\n5\n")
    with pytest.raises(SystemExit, match="names checkpoints"):
        simulate_cli.main(_args(simulate_cli.add_arguments, trace=plain, per_model=[CONFIGS / "ray-default.yaml"],
                                out_dir=tmp_path, no_bounds=True))


def test_simulate_replays_the_checkpoints_and_loras_a_trace_names(tmp_path: Path) -> None:
    trace = ROOT / "benchmarks" / "traces" / "synthetic-models.csv"
    args = _args(simulate_cli.add_arguments, trace=trace, config=[CONFIGS / "single.yaml"], name="m",
                 out_dir=tmp_path, cold_start_s=10, set=["model.resident_models=1"], no_bounds=True,
                 stop_order=["ray", "least-loss"], lora_warming=[0, 2])
    assert simulate_cli.main(args) == 0
    results = json.loads((tmp_path / "m.json").read_text())["results"]
    assert {name: (r["target"]["spec"]["stop_order"], r["target"]["spec"]["lora_warming"])
            for name, r in results.items()} == {
        "single": ("ray", 0), "single-lora-warming-2": ("ray", 2), "single-least-loss": ("least-loss", 0),
        "single-least-loss-lora-warming-2": ("least-loss", 2)}  # each config under each stop order and warming
    assert results["single-lora-warming-2"]["summary"]["model_loads"]["lora_warmed"] > 0
    assert results["single"]["summary"]["model_loads"]["lora_warmed"] == 0
    loads = results["single"]["summary"]["model_loads"]
    assert 0 < loads["per_request"] < 1 and loads["disk"] > 0 and loads["lora"] > 0
    markdown = (tmp_path / "m.md").read_text()
    assert "checkpoint loads / request" in markdown and "commit" in markdown
    assert "% of the replica-seconds with one replica up" in markdown and "misses by cause" in markdown
    # the same trace as one checkpoint without LoRAs: no model named, none replayed
    args = _args(simulate_cli.add_arguments, trace=trace, config=[CONFIGS / "single.yaml"], one_checkpoint=True)
    arrivals = simulate_cli.load_arrivals(args)
    assert len(arrivals) == len(simulate_cli.load_arrivals(_args(simulate_cli.add_arguments, trace=trace)))
    assert not any(a.model or a.loras for a in arrivals)
    target = simulate_cli.config_target(str(CONFIGS / "single.yaml"), _args(simulate_cli.add_arguments, trace=trace,
                                                                            set=["model.resident_models=1"]))
    assert target.spec.models_per_replica == 1
    assert ModelReplay.from_args(args).apply(target, arrivals).spec.models_per_replica == 0


def test_heldout_gpus_sets_both_policies_max_replicas_and_the_gpu_cap() -> None:
    from benchmarks import heldout
    from benchmarks.sim_config import ModelReplay
    from benchmarks.traces import Arrival

    arrivals = [Arrival(0.0)]
    for gpus, expected in ((None, 4), (8, 8)):
        args = _args(heldout.add_arguments, trace=SYNTHETIC, **({} if gpus is None else {"gpus": gpus}))
        bases = heldout.base_targets(args, ModelReplay(), arrivals)
        sdserve, ray = bases[heldout.SDSERVE], bases[heldout.RAY]
        assert sdserve.spec.gpu_slots == ray.spec.gpu_slots == expected
        assert sdserve.policy_kwargs["max_replicas"] == ray.ray_config.max_replicas == expected


def test_a_latency_objective_set_on_the_command_line_replaces_the_grids() -> None:
    from benchmarks import heldout

    chosen = heldout._objective_set(["model.resident_models=4", f"{heldout.OBJECTIVE_KEY}=29", "queue.x=1"])
    assert chosen == 29.0
    assert {s.knobs["latency_objective_s"] for s in heldout.sdserve_settings("fast-start", chosen)} == {29.0}
    assert {s.knobs["latency_objective_s"] for s in heldout.sdserve_settings("fast-start")} == {30}
    assert heldout._objective_set(["model.resident_models=4"]) is None
