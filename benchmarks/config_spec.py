"""``--config PATH[#NAME[#OVERRIDE...]]``: one config file, several named variants on the command line.

``OVERRIDE`` is ``KEY=VALUE`` for the application's ``args`` or ``DEPLOYMENT:KEY=VALUE`` for a
deployment option, e.g. ``configs/ray-default.yaml#ray-target-2#DiffusionWorker:autoscaling_config.target_ongoing_requests=2``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class ConfigSpec:
    path: str
    name: str
    overrides: list[str] = field(default_factory=list)
    deployment_overrides: dict[str, list[str]] = field(default_factory=dict)


def deployment_overrides(items: list[str]) -> dict[str, list[str]]:
    result: dict[str, list[str]] = {}
    for item in items:
        name, sep, assignment = item.partition(":")
        if not sep:
            raise SystemExit(f"deployment override {item!r} must look like DEPLOYMENT:KEY=VALUE")
        result.setdefault(name, []).append(assignment)
    return result


def parse_config_spec(spec: str, overrides: list[str] = (), deployment_sets: list[str] = ()) -> ConfigSpec:
    """A spec plus the command's overrides for every config (the spec's own come last, so win)."""
    path, _, rest = spec.partition("#")
    name, *extra = rest.split("#") if rest else [""]
    is_deployment = [":" in item.split("=")[0] for item in extra]
    return ConfigSpec(
        path, name or Path(path).stem,
        list(overrides) + [o for o, d in zip(extra, is_deployment) if not d],
        deployment_overrides(list(deployment_sets) + [o for o, d in zip(extra, is_deployment) if d]),
    )
