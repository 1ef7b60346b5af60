"""A catalog of checkpoints on one replica: every pipeline call goes to its request's checkpoint.

Each checkpoint is loaded through the same :func:`models.backends.load_backend` as a single model.
With ``resident`` 0 the replica loads the whole catalog when it starts and keeps it; with ``resident``
k it keeps at most k loaded, loads a missing one when a call needs it (from disk: the loader's own
path) and evicts the least recently used — the baseline policy: recency is what the trace's
checkpoint popularity rewards (one checkpoint has 31 % of requests), and it needs no model of the
future. Each result says where its checkpoint came from (``none``: resident; ``disk``) and how long
the load took, so the replica's speed model learns the pipeline's time without it.

The catalog is a :class:`~models.generator.GroupedGenerator` itself, so batching (one call per batch
key, which names the checkpoint), stopping, previews and OOM handling are unchanged; all checkpoints
share one call counter: the replica still runs one pipeline call at a time.
"""

from __future__ import annotations

import gc
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping

from models.generator import CallCounter, GroupedGenerator, LatentsHook, StopCheck
from models.request import GenerationRequest, GenerationResult

#: Where a call's checkpoint came from.
RESIDENT, DISK = "none", "disk"


class UnknownModel(KeyError):
    """A request named a checkpoint this replica does not serve."""


class CatalogGenerator(GroupedGenerator):
    def __init__(self, loaders: Mapping[str, Callable[[], GroupedGenerator]], default: str, resident: int = 0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if default not in loaders:
            raise ValueError(f"the default model {default!r} is not in the catalog {sorted(loaders)}")
        self.loaders, self.default, self.clock = dict(loaders), default, clock
        self.resident = resident if 0 < resident < len(loaders) else len(loaders)
        self.model_name = default
        self.counter = CallCounter()
        self.loaded: OrderedDict[str, GroupedGenerator] = OrderedDict()
        self.loads = 0  # checkpoints loaded after the start
        for name in [default] + ([n for n in loaders if n != default] if self.resident == len(loaders) else []):
            self._load(name)
        self.device = self.loaded[default].device

    def _load(self, name: str) -> GroupedGenerator:
        generator = self.loaders[name]()
        generator.counter = self.counter
        self.loaded[name] = generator
        while len(self.loaded) > self.resident:
            self.loaded.popitem(last=False)
            gc.collect()  # the evicted pipeline's weights go now, before the next load needs the room
        return generator

    def _generate_group(
        self, group: list[GenerationRequest], should_stop: StopCheck | None, on_latents: LatentsHook | None = None
    ) -> list[GenerationResult]:
        name = group[0].model or self.default
        if name not in self.loaders:
            raise UnknownModel(name)
        tier, load_s = RESIDENT, 0.0
        generator = self.loaded.get(name)
        if generator is None:
            started = self.clock()
            generator = self._load(name)
            tier, load_s = DISK, self.clock() - started
            self.loads += 1
        self.loaded.move_to_end(name)
        results = generator._generate_group(group, should_stop, on_latents)
        for result in results:  # a LoRA the call loaded counts in the same seconds
            result.model_load, result.model_load_s = tier, load_s + result.model_load_s
        return results
