"""Deploy a Serve config file from Python: load, override, submit, and wait until it serves.

Shared by ``make run`` (the launcher), the integration tests and the benchmark, so all three deploy
the shipped config files the same way ``serve run`` does.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from ray import serve
from ray.serve.context import _get_global_client
from ray.serve.schema import ServeDeploySchema

from serve.config_check import check_config


class DeployError(RuntimeError):
    """The application did not reach RUNNING; the message carries Ray's explanation."""


class DeployStopped(RuntimeError):
    """Asked to stop (Ctrl-C) before the applications were running."""


def deploy(config: dict[str, Any], timeout_s: float = 300.0, progress: Any = None, wait: bool = True,
           stop: threading.Event | None = None) -> None:
    """Start Serve with the config's HTTP options and deploy its applications; block until they
    run (``wait``). A redeploy that changes only deployments' ``user_config`` reconfigures the
    running replicas in place; a change of ``args`` restarts them.

    ``progress`` (a callable taking a string) hears about status changes, for long cold starts;
    ``stop``, once set, ends the wait with :class:`DeployStopped` (a model load may take minutes).
    """
    check_config(config)
    schema = ServeDeploySchema.model_validate(config)
    serve.start(
        http_options=schema.http_options.model_dump(),
        proxy_location=schema.proxy_location,
    )
    _get_global_client().deploy_apps(schema, _blocking=False)
    if wait:
        wait_until_running([app.name for app in schema.applications], timeout_s, progress, stop)


def wait_until_running(names: list[str], timeout_s: float, progress: Any = None,
                       stop: threading.Event | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    last = ""
    stop = stop or threading.Event()
    while time.monotonic() < deadline:
        if stop.is_set():
            raise DeployStopped(f"stopped before the applications were running ({last or 'not yet deployed'})")
        apps = serve.status().applications
        states = {name: apps[name].status if name in apps else "NOT_STARTED" for name in names}
        line = ", ".join(f"{n}: {s}" for n, s in states.items())
        if progress is not None and line != last:
            progress(line)
        last = line
        failed = [n for n, s in states.items() if s in ("DEPLOY_FAILED", "UNHEALTHY")]
        if failed:
            raise DeployError(_failure_message(failed[0], apps[failed[0]]))
        if all(s == "RUNNING" for s in states.values()):
            return
        stop.wait(0.25)
    raise DeployError(f"applications {names} not running after {timeout_s:.0f}s ({last})")


def _failure_message(name: str, app: Any) -> str:
    """The application's failure plus each unhealthy deployment's own cause (e.g. a model that
    cannot load), since the application message alone is generic."""
    parts = [f"application {name} failed to deploy: {_cause(app.message)}"]
    for deployment_name, deployment in app.deployments.items():
        status = str(getattr(deployment.status, "value", deployment.status))
        if status != "HEALTHY" and deployment.message:
            parts.append(f"{deployment_name}: {_cause(deployment.message)}")
    return " | ".join(parts)


def _cause(message: str) -> str:
    """The exception line of Ray's failure message (which leads with a traceback)."""
    lines = [line.strip() for line in message.strip().splitlines() if line.strip()]
    for index in range(len(lines) - 1, -1, -1):
        if lines[index].split(":")[0].split(".")[-1].endswith(("Error", "Exception")):
            return " ".join(lines[index:])
    return lines[-1] if lines else message
