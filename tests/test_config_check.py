"""Cross-section config invariants, checked before deploying."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest

from serve.config_check import ConfigError, check_config, config_problems
from serve.settings import WORKER_DEPLOYMENT, load_config
from tests.conftest import CONFIGS


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_config_is_consistent(path: Path) -> None:
    assert config_problems(load_config(path)) == []


def _worker(config: dict) -> dict:
    return next(d for d in config["applications"][0]["deployments"] if d["name"] == WORKER_DEPLOYMENT)


BASE = load_config(CONFIGS / "batched.yaml")


@pytest.mark.parametrize(
    ("change", "named"),
    [
        (lambda c: c["http_options"].update(request_timeout_s=600), ["request_timeout_s", "max_timeout_s"]),
        (lambda c: _worker(c).update(graceful_shutdown_timeout_s=30), ["graceful_shutdown_timeout_s", "max_timeout_s"]),
        (lambda c: _worker(c).pop("graceful_shutdown_timeout_s"), ["graceful_shutdown_timeout_s", "max_timeout_s"]),
        (lambda c: _worker(c).update(max_ongoing_requests=2), ["max_ongoing_requests", "max_batch_size"]),
    ],
)
def test_broken_invariants_are_refused_naming_both_settings(change, named: list[str]) -> None:
    config = copy.deepcopy(BASE)
    change(config)
    with pytest.raises(ConfigError) as error:
        check_config(config)
    assert all(name in str(error.value) for name in named), str(error.value)


@pytest.mark.parametrize(
    ("assignment", "named"),
    [
        ("autoscaling.policy.capacity_per_replica=2", ["capacity_per_replica", "max_batch_size"]),
        ("autoscaling.gpus_per_replica=2", ["gpus_per_replica", "resources.num_gpus"]),
    ],
)
def test_args_invariants_are_refused_naming_both_settings(assignment: str, named: list[str]) -> None:
    with pytest.raises(ValueError) as error:
        load_config(CONFIGS / "batched.yaml", [assignment])["applications"][0]
        check_config(load_config(CONFIGS / "batched.yaml", [assignment]))
    assert all(name in str(error.value) for name in named), str(error.value)
