"""Invariants across a whole Serve config file, checked before anything is deployed.

Some settings only make sense together and live in different sections (``http_options``, a
deployment's options, the application's ``args``): a worker that Ray stops before its longest
request may finish, or a proxy that answers 408 before our deadline answers 504, deploys fine
and fails under load. Each broken invariant is reported with both settings named.
``args``-only invariants are also checked by :class:`serve.settings.AppSettings` itself, so
``serve run`` catches those too. A deployment's ``user_config`` (live settings) is checked on top of
``args``, as its replicas will apply it.
"""

from __future__ import annotations

from typing import Any

from serve.settings import WORKER_DEPLOYMENT, live_settings

RAY_GRACEFUL_SHUTDOWN_DEFAULT_S = 20.0  # Ray's default graceful_shutdown_timeout_s


class ConfigError(ValueError):
    """A config file whose settings contradict each other; the message names them."""


def config_problems(config: dict[str, Any]) -> list[str]:
    """Every broken cross-section invariant of ``config``, as one sentence each."""
    problems = []
    timeout = (config.get("http_options") or {}).get("request_timeout_s")
    for app in config.get("applications", []):
        worker = next((d for d in app.get("deployments", []) if d.get("name") == WORKER_DEPLOYMENT), {})
        settings = live_settings(app.get("args") or {}, worker.get("user_config"))
        longest = settings.deadlines.max_timeout_s
        prefix = f"application {app.get('name', '?')}: "
        if timeout is not None and timeout <= longest:
            problems.append(f"{prefix}http_options.request_timeout_s ({timeout}) must exceed "
                            f"deadlines.max_timeout_s ({longest}), or Ray's proxy answers 408 before our 504")
        grace = worker.get("graceful_shutdown_timeout_s", RAY_GRACEFUL_SHUTDOWN_DEFAULT_S)
        if grace <= longest:
            problems.append(f"{prefix}{WORKER_DEPLOYMENT}.graceful_shutdown_timeout_s ({grace}) must exceed "
                            f"deadlines.max_timeout_s ({longest}), or a replica scaled down kills its requests")
        ongoing = worker.get("max_ongoing_requests")
        if ongoing is not None and ongoing < settings.batching.max_batch_size:
            problems.append(f"{prefix}{WORKER_DEPLOYMENT}.max_ongoing_requests ({ongoing}) must be at least "
                            f"batching.max_batch_size ({settings.batching.max_batch_size}), or no batch fills")
    return problems


def check_config(config: dict[str, Any]) -> None:
    """Raise :class:`ConfigError` naming every broken invariant of ``config``."""
    problems = config_problems(config)
    if problems:
        raise ConfigError("inconsistent config: " + "; ".join(problems))
