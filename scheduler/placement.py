"""Which free replica a request goes to: sdserve's dispatcher rule, live (``serve/dispatcher.py``) and
simulated (``scheduler/simulation/models.py``) alike.

A checkpoint from disk costs about a cold start and one from host memory seconds; a LoRA adapter
seconds more (production: p50 4.4 s). So among the replicas with a free slot, in order:

1. where the checkpoint is already on the device, else where it is in host memory (the replica's
   or the node's), else anywhere;
2. the fewest of the request's adapters to load there (a replica that served the same LoRA keeps
   serving it: the popular ones stay loaded where their requests go);
3. the fewest calls already running (the most free slots);
4. where the checkpoint must be loaded: the replica whose checkpoints were wanted longest ago (the
   load evicts the coldest);
5. the fewest checkpoints, then the fewest adapters loaded (the others stay free for theirs), then
   the replica id (a stable order).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass

#: Where a call's checkpoint comes from on a replica: its device, host memory, or disk.
DEVICE_TIER, HOST_TIER, DISK_TIER = 0, 1, 2


@dataclass(frozen=True)
class FreeReplica:
    """A replica with a free slot, as the dispatcher knows it. The collections are read, never
    copied (the simulator passes its replicas' own, once per request)."""

    replica_id: str | int  # ids of one kind per call: the simulator's numbers, Serve's strings
    ongoing: int  # calls running there now
    device: Collection[str]  # checkpoints on its device
    host: Collection[str] = frozenset()  # in its host memory or the node's
    adapters: Collection[tuple[str, str]] = frozenset()  # (checkpoint, adapter id) loaded


def adapter_ids(loras: Iterable[str]) -> frozenset[str]:
    """Adapter ids of ``id`` or ``id:scale`` names (the scale is per call; the adapter loads once)."""
    return frozenset(name.partition(":")[0] for name in loras)


def missing_adapters(replica: FreeReplica, model: str, adapters: frozenset[str]) -> int:
    return sum(1 for adapter in adapters if (model, adapter) not in replica.adapters)


def placement_rank(replica: FreeReplica, model: str, adapters: frozenset[str],
                   last_wanted: Mapping[str, float]) -> tuple:
    """The replica's place in the order above: lower is better. ``last_wanted``: checkpoint → when
    a request for it was last sent."""
    tier = DEVICE_TIER if model in replica.device else HOST_TIER if model in replica.host else DISK_TIER
    coldest = max((last_wanted.get(m, 0.0) for m in replica.device), default=0.0) if tier else 0.0
    return (tier, missing_adapters(replica, model, adapters), replica.ongoing, coldest, len(replica.device),
            len(replica.adapters), replica.replica_id)


def choose_replica(free: Sequence[FreeReplica], model: str, loras: Iterable[str] = (),
                   last_wanted: Mapping[str, float] | None = None) -> FreeReplica:
    """The free replica a request for ``model`` with ``loras`` goes to (``free`` not empty)."""
    adapters = adapter_ids(loras)
    return min(free, key=lambda r: placement_rank(r, model, adapters, last_wanted or {}))
