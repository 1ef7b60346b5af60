"""``make run`` / ``sdserve``: start Ray (or attach to ``RAY_ADDRESS``), deploy a config, serve until Ctrl-C.

The embedded default is ``configs/cpu.yaml``: a local Ray and the built-in tiny model on CPU.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import sys
import threading
import time
from pathlib import Path

DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "configs" / "cpu.yaml"


def _say(message: str) -> None:
    print(f"[sdserve] {message}", flush=True)


def _say_exposure(config: dict, host: str) -> None:
    """Say who can reach the server, from what the running ingress replicas themselves use (their
    environment and key file, not this launcher's)."""
    from ray import serve

    for app in config.get("applications", []):
        exposure = serve.get_app_handle(app["name"]).exposure.remote().result()
        if host in ("127.0.0.1", "localhost", "::1"):
            _say(f"bound to loopback ({host}): reachable from this machine only")
        elif not exposure["keys_required"]:
            _say(f"WARNING: bound to {host} with no API keys (auth.allow_open_on_network is set): "
                 "anyone who can reach it can use it")
        _say("API keys: " + ("required (Authorization: Bearer <key>)" if exposure["keys_required"] else "none set"))


def port_in_use(host: str, port: int) -> str | None:
    """Why ``host:port`` cannot be served on, or None if it can. Checked before a local Ray starts,
    because Ray's proxy reports a taken port only as a traceback after Ray is up."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the proxy's server binds
        try:
            probe.bind((host, port))
        except OSError as exc:
            return exc.strerror or str(exc)
    return None


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="sdserve", description=__doc__)
    parser.add_argument("--config", default=str(DEFAULT_CONFIG), help="Serve config file")
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override an args key, e.g. --set model.id=tiny --set resources.num_gpus=0",
    )
    parser.add_argument("--host", help="HTTP bind address (default: the config's, loopback)")
    parser.add_argument("--port", type=int, help="HTTP port (default: the config's, 8000)")
    parser.add_argument("--timeout", type=float, default=600, help="seconds to wait for RUNNING")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    options = _parse_args(argv)
    import ray
    from ray import serve

    from serve.config_check import ConfigError, check_config
    from serve.deploy import DeployError, DeployStopped, deploy
    from serve.settings import OVERRIDES_ENV, load_config, parse_assignments

    try:
        overrides = parse_assignments(os.environ.get(OVERRIDES_ENV, "")) + options.overrides
        config = load_config(options.config, overrides)
        http = config.setdefault("http_options", {})
        if options.host:
            http["host"] = options.host
        if options.port:
            http["port"] = options.port
        check_config(config)
    except OSError as exc:
        _say(f"error: cannot read the config: {exc.filename or options.config}: {exc.strerror or exc}")
        return 2
    except (ConfigError, ValueError) as exc:
        _say(f"error: {exc}")
        return 2
    address = os.environ.get("RAY_ADDRESS")
    host, port = http.get("host", "127.0.0.1"), http.get("port", 8000)
    if not address and (problem := port_in_use(host, port)):
        _say(f"error: cannot serve on {host}:{port}: {problem} (another server on it? stop it or pick "
             "another with --port)")
        return 2
    _say(f"config {options.config}" + (f" with {' '.join(overrides)}" if overrides else ""))
    _say(f"attaching to Ray cluster at {address}" if address else "starting a local Ray")
    started = time.monotonic()
    # "local": without RAY_ADDRESS, a Ray of its own, never a `ray start` cluster it would then shut down
    ray.init(address=address or "local", namespace="serve", logging_level=logging.WARNING)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        deploy(config, timeout_s=options.timeout, progress=lambda line: _say(line), stop=stop)
        _say(f"ready in {time.monotonic() - started:.1f}s")
        _say(f"send requests to http://{host}:{port}/v1/images/generations")
        _say(
            f"  curl -s http://{host}:{port}/v1/images/generations -H 'Content-Type: application/json' "
            "-d '{\"prompt\": \"a lighthouse at dawn\"}'"
        )
        _say_exposure(config, host)
        _say("Ctrl-C to stop")
        while not stop.wait(1.0):
            pass
        _say("stopping")
        return 0
    except DeployStopped as exc:
        _say(str(exc))
        return 0
    except DeployError as exc:
        _say(f"error: {exc}")
        return 1
    finally:
        if address:
            for app in config.get("applications", []):
                serve.delete(app["name"])
        else:
            serve.shutdown()
        ray.shutdown()
        _say("Ray shut down")


if __name__ == "__main__":
    sys.exit(main())
