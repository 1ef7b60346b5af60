"""A catalog of checkpoints on one replica: every pipeline call goes to its request's checkpoint.

Each checkpoint is loaded through the same :func:`models.backends.load_backend` as a single model.
With ``resident`` 0 the replica loads the whole catalog when it starts and keeps it; with ``resident``
k it keeps at most k loaded on its device and brings a missing one in when a call needs it:

- from the **host tier** (:mod:`models.host_tier`) when its weights are there: they are copied into the
  pipeline of the least recently used checkpoint, which leaves the device — no rebuild, no file read;
- else from **disk** (the loader's own path), after the least recently used checkpoint left.

A checkpoint that leaves the device goes to the host tier while its byte budget allows. Both tiers
evict the least recently used — the baseline policy: recency is what the trace's checkpoint
popularity rewards (one checkpoint has 31 % of requests), and it needs no model of the future. Each
result says where its checkpoint came from (``none``: resident; ``host``; ``disk``) and how long the
load took, so the replica's speed model learns the pipeline's time without it.

A checkpoint that fails to load fails the calls that need it, with its reason; the replica serves
every other checkpoint on.

The catalog is a :class:`~models.generator.GroupedGenerator` itself, so batching (one call per batch
key, which names the checkpoint), stopping, previews and OOM handling are unchanged; all checkpoints
share one call counter: the replica still runs one pipeline call at a time.
"""

from __future__ import annotations

import gc
import logging
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Mapping

from models.generator import CallCounter, GroupedGenerator, LatentsHook, StopCheck
from models.host_tier import DISK, HOST, RESIDENT, HostTier
from models.request import GenerationRequest, GenerationResult
from scheduler.load_timing import LoadTiming

log = logging.getLogger(__name__)

__all__ = ["CatalogGenerator", "UnknownModel", "ModelUnavailable", "RESIDENT", "HOST", "DISK"]


class UnknownModel(KeyError):
    """A request named a checkpoint this replica does not serve."""


class ModelUnavailable(RuntimeError):
    """A checkpoint of the catalog could not be loaded; the message names it and says why."""


class CatalogGenerator(GroupedGenerator):
    def __init__(self, loaders: Mapping[str, Callable[[], GroupedGenerator]], default: str, resident: int = 0,
                 host_bytes: int = 0, clock: Callable[[], float] = time.monotonic, first: str | None = None) -> None:
        """``first``: the checkpoint to load at the start instead of the default (what the queue
        needs: scheduler/preload.py); if it fails to load, the default is loaded instead."""
        if default not in loaders:
            raise ValueError(f"the default model {default!r} is not in the catalog {sorted(loaders)}")
        self.loaders, self.default, self.clock = dict(loaders), default, clock
        self.resident = resident if 0 < resident < len(loaders) else len(loaders)
        self.host = HostTier(host_bytes)
        self.model_name = default
        self.counter = CallCounter()
        self.loaded: OrderedDict[str, GroupedGenerator] = OrderedDict()
        self.loads: Counter[str] = Counter()  # checkpoints brought in after the start, by tier
        self.load_seconds: Counter[str] = Counter()  # and the seconds they took
        self.adapter_timing = LoadTiming()  # every checkpoint's adapter loads, one mean for them all
        start = first if first in loaders and self.resident < len(loaders) else default
        if start != default:
            try:
                self._load(start)
            except ModelUnavailable as exc:
                log.error("preloading: %s; loading the default %r instead", exc, default)
                start = default
        if start == default:
            self._load(default)  # the replica cannot serve without its default: a failure here fails the start
        for name in [n for n in loaders if n != default] if self.resident == len(loaders) else []:
            try:
                self._load(name)
            except ModelUnavailable as exc:  # its requests will fail with the reason; the rest serve
                log.error("%s", exc)
        self.device = self.loaded[start].device

    def _load(self, name: str) -> GroupedGenerator:
        try:
            generator = self.loaders[name]()
        except Exception as exc:  # noqa: BLE001 - any loader failure is this checkpoint's, not the replica's
            raise ModelUnavailable(f"checkpoint {name!r} could not be loaded: {exc}") from exc
        generator.counter = self.counter
        if generator.loaded_adapters is not None:
            generator.loaded_adapters.timing = self.adapter_timing
        self.loaded[name] = generator
        return generator

    def _evict(self) -> GroupedGenerator:
        """Take the least recently used checkpoint off the device, its weights to the host tier."""
        name, generator = self.loaded.popitem(last=False)
        if self.host.budget_bytes and self.host.get(name) is None and hasattr(generator, "export_weights"):
            self.host.put(name, generator.export_weights())
        return generator

    def _bring(self, name: str) -> tuple[GroupedGenerator, str]:
        """Load ``name`` onto the device, making room first; returns it and the tier it came from."""
        weights = self.host.get(name) if self.where(name) == HOST else None
        if weights is not None:
            shell = self._evict()
            try:
                shell.swap_in(weights, name)  # type: ignore[attr-defined]
            except ValueError as exc:  # another architecture: this one comes from disk
                log.warning("checkpoint %r from host memory: %s; loading it from disk", name, exc)
            else:
                self.loaded[name] = shell
                return shell, HOST
            del shell
        while len(self.loaded) >= self.resident:
            self._evict()
        gc.collect()  # the evicted pipeline's weights go now, before the load needs the room
        return self._load(name), DISK

    def adapters(self) -> dict[str, tuple[str, ...]]:
        """Each resident checkpoint's adapters (they leave with it)."""
        return {name: loaded for name, generator in self.loaded.items() if (loaded := generator.adapters().get(
            generator.model_name, ()))}

    def where(self, name: str) -> str:
        """The tier ``name`` would come from if a call needed it now."""
        if name in self.loaded:
            return RESIDENT
        return HOST if name in self.host and len(self.loaded) >= self.resident else DISK

    def expected_load_s(self, request: GenerationRequest) -> float:
        """The mean of this replica's own loads from the tier the checkpoint would come from, plus
        its adapters not loaded into that checkpoint (all of them when it is not loaded) by the mean
        adapter load here; each 0 until one was measured: no request is shed on a guess."""
        name = request.model or self.default
        tier = self.where(name)
        checkpoint_s = self.load_seconds[tier] / self.loads[tier] if self.loads[tier] else 0.0
        generator = self.loaded.get(name)
        if generator is not None:
            return checkpoint_s + generator.expected_load_s(request)
        return checkpoint_s + self.adapter_timing.expected_s(len({lora for lora, _ in request.loras}))

    def _checkpoint(self, name: str) -> tuple[GroupedGenerator, str, float]:
        """The loaded checkpoint ``name``, brought in if it is not: (generator, tier, seconds)."""
        if name not in self.loaders:
            raise UnknownModel(name)
        tier, load_s = RESIDENT, 0.0
        generator = self.loaded.get(name)
        if generator is None:
            started = self.clock()
            generator, tier = self._bring(name)
            load_s = self.clock() - started
            self.loads[tier] += 1
            self.load_seconds[tier] += load_s
        self.loaded.move_to_end(name)
        return generator, tier, load_s

    def prepare(self, request: GenerationRequest) -> tuple[str, float]:
        """Bring the request's checkpoint onto the device and load its adapters; (tier, seconds)."""
        generator, tier, load_s = self._checkpoint(request.model or self.default)
        return tier, load_s + generator.prepare(request)[1]

    def _generate_group(
        self, group: list[GenerationRequest], should_stop: StopCheck | None, on_latents: LatentsHook | None = None
    ) -> list[GenerationResult]:
        generator, tier, load_s = self._checkpoint(group[0].model or self.default)
        results = generator._generate_group(group, should_stop, on_latents)
        for result in results:  # a LoRA the call loaded counts in the same seconds
            result.model_load, result.model_load_s = tier, load_s + result.model_load_s
        return results
