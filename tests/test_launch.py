"""``sdserve`` (``make run``) refuses what it cannot serve with one line and exit code 2, before Ray starts."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from serve import launch
from tests.conftest import CONFIGS, free_port


@pytest.fixture(autouse=True)
def _no_ray(monkeypatch: pytest.MonkeyPatch) -> None:
    """A launcher that got past its checks would start Ray here: fail at once instead."""
    import ray

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("sdserve started Ray instead of refusing")

    monkeypatch.setattr(ray, "init", refuse)


@pytest.mark.parametrize(
    ("text", "args", "named"),
    [
        (None, [], "cannot read the config: {path}: No such file"),
        ("applications: [\n", [], "{path} is not valid YAML"),
        ("- a\n", [], "{path} is not a Serve config"),
        ((CONFIGS / "cpu.yaml").read_text(), ["--set", "model.id"], "override 'model.id' is not KEY=VALUE"),
    ],
    ids=["missing", "broken-yaml", "not-a-mapping", "bad-override"],
)
def test_sdserve_refuses_a_config_it_cannot_use_before_starting_ray(
        tmp_path: Path, text: str | None, args: list[str], named: str, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "config.yaml"
    if text is not None:
        path.write_text(text)
    assert launch.main(["--config", str(path), *args]) == 2
    assert f"[sdserve] error: {named.format(path=path)}" in capsys.readouterr().out


def test_a_taken_port_is_named_before_ray_starts(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        assert launch.port_in_use("127.0.0.1", port)
        assert launch.main(["--port", str(port)]) == 2
    out = capsys.readouterr().out
    assert f"[sdserve] error: cannot serve on 127.0.0.1:{port}" in out and "starting a local Ray" not in out
    assert launch.port_in_use("127.0.0.1", port) is None  # free again once the server closed


def test_without_ray_address_it_starts_a_ray_of_its_own(monkeypatch: pytest.MonkeyPatch) -> None:
    """Not a `ray start` cluster found on the machine, whose Serve it would shut down on Ctrl-C."""
    import ray

    asked: dict[str, object] = {}

    class Started(Exception):
        pass

    def record(**kwargs: object) -> None:
        asked.update(kwargs)
        raise Started

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setattr(ray, "init", record)
    with pytest.raises(Started):
        launch.main(["--port", str(free_port())])
    assert asked["address"] == "local"


class _Deploying:
    """``serve.status()`` of an application that never leaves DEPLOYING (a model that loads for minutes)."""

    applications = {"sdserve": type("App", (), {"status": "DEPLOYING"})()}


def test_a_stop_ends_the_wait_for_running(monkeypatch: pytest.MonkeyPatch) -> None:
    import threading

    from serve import deploy

    monkeypatch.setattr(deploy.serve, "status", lambda: _Deploying)
    stop = threading.Event()
    threading.Timer(0.3, stop.set).start()
    with pytest.raises(deploy.DeployStopped, match="DEPLOYING"):
        deploy.wait_until_running(["sdserve"], 30, stop=stop)  # not DeployError, 30 s later


def test_ctrl_c_while_the_application_deploys_stops_sdserve(monkeypatch: pytest.MonkeyPatch,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    """Not only once it runs: the first Ctrl-C during a long deploy shuts Serve and Ray down."""
    import os
    import signal
    import threading

    import ray
    from ray import serve

    from serve import deploy

    shut: list[str] = []
    monkeypatch.setattr(ray, "init", lambda **kwargs: None)
    monkeypatch.setattr(ray, "shutdown", lambda: shut.append("ray"))
    monkeypatch.setattr(serve, "shutdown", lambda: shut.append("serve"))
    monkeypatch.setattr(deploy.serve, "status", lambda: _Deploying)
    monkeypatch.setattr(deploy, "deploy", lambda config, timeout_s, progress, stop: deploy.wait_until_running(
        ["sdserve"], timeout_s, progress, stop))
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    ctrl_c = threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGINT))
    ctrl_c.start()
    try:
        assert launch.main(["--port", str(free_port()), "--timeout", "30"]) == 0
    finally:
        ctrl_c.cancel()  # a launcher that returned early must not leave a Ctrl-C for pytest
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
    out = capsys.readouterr().out
    assert "[sdserve] stopped before the applications were running (sdserve: DEPLOYING)" in out
    assert shut == ["serve", "ray"] and "[sdserve] Ray shut down" in out
