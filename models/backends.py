"""Pick the generation backend a replica serves with: the real diffusers pipeline or the simulation."""

from __future__ import annotations

from collections.abc import Mapping

from models.generator import GroupedGenerator, load_generator
from models.loader import ModelSpec
from models.simulated import SimulatedGenerator, SimulationProfile


def load_backend(
    backend: str, spec: ModelSpec, name: str, profile: SimulationProfile | None = None,
    loras: Mapping[str, str] | None = None, resident_loras: int = 0,
) -> GroupedGenerator:
    """``diffusers`` loads ``spec`` (with ``loras``: adapter name → weights, loaded on first use);
    ``simulated`` fakes it with ``profile`` (always labelled; an adapter's load takes the profile's
    ``lora_load_time_s``)."""
    if backend == "diffusers":
        return load_generator(spec, name=name, loras=loras, resident_loras=resident_loras)
    if backend == "simulated":
        return SimulatedGenerator(profile or SimulationProfile(), name=name, resident_loras=resident_loras)
    raise ValueError(f"unknown backend {backend!r}: use 'diffusers' or 'simulated'")
