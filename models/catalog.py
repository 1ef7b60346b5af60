"""A catalog of checkpoints on one replica: every pipeline call goes to its request's checkpoint.

Each checkpoint of the catalog is loaded once, when the replica starts, through the same
:func:`models.generator.load_generator` as a single model; the catalog is a
:class:`~models.generator.GroupedGenerator` itself, so batching (one call per batch key, which
names the checkpoint), stopping, previews and OOM handling are unchanged. All of them share one
call counter: the replica still runs one pipeline call at a time, whatever the checkpoint.
"""

from __future__ import annotations

from collections.abc import Mapping

from models.generator import CallCounter, GroupedGenerator, LatentsHook, StopCheck
from models.request import GenerationRequest, GenerationResult


class UnknownModel(KeyError):
    """A request named a checkpoint this replica does not hold."""


class CatalogGenerator(GroupedGenerator):
    def __init__(self, generators: Mapping[str, GroupedGenerator], default: str) -> None:
        if default not in generators:
            raise ValueError(f"the default model {default!r} is not in the catalog {sorted(generators)}")
        self.generators = dict(generators)
        self.default = default
        self.model_name = default
        self.device = generators[default].device
        self.counter = CallCounter()
        for generator in self.generators.values():
            generator.counter = self.counter

    def _generate_group(
        self, group: list[GenerationRequest], should_stop: StopCheck | None, on_latents: LatentsHook | None = None
    ) -> list[GenerationResult]:
        name = group[0].model or self.default
        try:
            generator = self.generators[name]
        except KeyError:
            raise UnknownModel(name) from None
        return generator._generate_group(group, should_stop, on_latents)
