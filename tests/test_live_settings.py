"""Settings a deployment's ``user_config`` changes on running replicas, and the one reading of
Serve's replica states."""

from __future__ import annotations

from enum import Enum

import pytest

from serve.config_check import ConfigError, check_config
from serve.fleet import ReplicaCounts, replica_counts
from serve.settings import WORKER_DEPLOYMENT, live_settings, load_config
from tests.conftest import CONFIGS

ARGS = {"deadlines": {"default_timeout_s": 60}, "autoscaling": {"enabled": True, "policy": {"max_replicas": 3}}}


def test_live_overrides_merge_key_by_key_onto_args() -> None:
    settings = live_settings(ARGS, {"deadlines": {"shed_hopeless": False},
                                    "autoscaling": {"policy": {"min_replicas": 1}}})
    assert (settings.deadlines.default_timeout_s, settings.deadlines.shed_hopeless) == (60, False)
    assert settings.autoscaling.policy == {"max_replicas": 3, "min_replicas": 1}
    assert live_settings(ARGS, None) == live_settings(ARGS, {})


@pytest.mark.parametrize("user_config, named", [
    ({"model": {"id": "other"}}, "model.id"),  # another model needs new replicas
    ({"batching": {"max_batch_size": 4}}, "batching.max_batch_size"),
    ({"simulation": {"load_time_s": 3}}, "simulation.load_time_s"),
])
def test_what_needs_a_restart_is_refused_by_name(user_config: dict, named: str) -> None:
    with pytest.raises(ValueError, match=f"user_config cannot change {named}"):
        live_settings(ARGS, user_config)


def test_a_deploy_checks_user_config_as_the_replicas_will_apply_it() -> None:
    config = load_config(CONFIGS / "cpu.yaml")
    worker = next(d for d in config["applications"][0]["deployments"] if d["name"] == WORKER_DEPLOYMENT)
    worker["user_config"] = {"deadlines": {"max_timeout_s": 400}}  # past the proxy's 310 s and the drain
    with pytest.raises(ConfigError, match="request_timeout_s.*deadlines.max_timeout_s"):
        check_config(config)
    worker["user_config"] = {"deadlines": {"max_timeout_s": 200}}
    check_config(config)


class State(Enum):  # Serve's ReplicaState, as serve.status() hands it
    RUNNING = "RUNNING"
    STARTING = "STARTING"
    STOPPING = "STOPPING"


@pytest.mark.parametrize("states, counts", [
    ([], ReplicaCounts(0, 0)),
    (["RUNNING", "STARTING", "UPDATING", "RECOVERING", "STOPPING"], ReplicaCounts(1, 3)),
    (["PENDING_MIGRATION", "RUNNING"], ReplicaCounts(2, 0)),  # about to move, still serving: running, as Ray counts it
    (["ReplicaState.RUNNING", "ReplicaState.RUNNING"], ReplicaCounts(2, 0)),  # the controller's details
    ({State.RUNNING: 2, State.STARTING: 1, State.STOPPING: 3}, ReplicaCounts(2, 1)),  # serve.status()
])
def test_replica_states_are_read_one_way(states: object, counts: ReplicaCounts) -> None:
    assert replica_counts(states) == counts  # type: ignore[arg-type]
