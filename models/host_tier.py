"""The host-RAM tier: checkpoints a replica evicted from its device, kept as CPU tensors.

Production loads of a checkpoint are bimodal (``../shared/traces/alibaba-genai-2026-load-latency.csv``):
about a third take ~3 s (the weights already in host memory or the page cache), the rest ~35 s (from
disk). This tier makes the fast mode deliberate: when a replica evicts a checkpoint from its device it
keeps the weights as CPU tensors (pinned on CUDA, so the copy back runs at full PCIe speed), and a
later request for it copies them into an already-built pipeline of the same architecture — no
``from_pretrained``, no module construction, no file reads.

The budget is in bytes, measured: each snapshot counts the bytes of its tensors. Eviction is least
recently used, the same policy as the device tier and for the same reason (the trace's popularity is
skewed and shifts by hour; recency needs no forecast). The budget is per replica: replicas are
separate processes and do not share these tensors.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

#: Where a call's checkpoint came from: resident on the device, copied from host RAM, or loaded from disk.
RESIDENT, HOST, DISK = "none", "host", "disk"


@dataclass(frozen=True)
class HostWeights:
    """One checkpoint's weights in host memory: component name → state dict of CPU tensors."""

    tensors: dict[str, dict[str, Any]]
    nbytes: int


def _modules(pipeline: Any) -> dict[str, Any]:
    """The pipeline's components that hold weights (UNet, text encoder, VAE, ...)."""
    import torch

    return {name: c for name, c in pipeline.components.items() if isinstance(c, torch.nn.Module)}


def snapshot(pipeline: Any) -> HostWeights:
    """Copy the pipeline's weights to host memory (pinned when they live on a CUDA device)."""
    import torch

    pin = str(pipeline.device).startswith("cuda")
    tensors: dict[str, dict[str, Any]] = {}
    nbytes = 0
    for name, module in _modules(pipeline).items():
        state = {}
        for key, tensor in module.state_dict().items():
            # straight into page-locked memory on CUDA (one copy, and the copy back can be a DMA)
            copy = torch.empty(tensor.shape, dtype=tensor.dtype, device="cpu", pin_memory=pin)
            copy.copy_(tensor.detach())
            state[key] = copy
            nbytes += copy.numel() * copy.element_size()
        tensors[name] = state
    if pin:
        torch.cuda.synchronize()
    return HostWeights(tensors, nbytes)


def restore(pipeline: Any, weights: HostWeights) -> None:
    """Copy ``weights`` into the pipeline's modules in place; ValueError (and nothing copied) if the
    architectures differ — the caller then builds the checkpoint from disk instead."""
    import torch

    modules = _modules(pipeline)
    targets = {name: module.state_dict() for name, module in modules.items()}
    for name, state in weights.tensors.items():
        target = targets.get(name)
        if target is None or target.keys() != state.keys() or any(
                target[k].shape != t.shape for k, t in state.items()):
            raise ValueError(f"component {name!r} differs in architecture; cannot copy these weights into it")
    with torch.no_grad():
        for name, state in weights.tensors.items():
            for key, tensor in state.items():
                targets[name][key].copy_(tensor, non_blocking=True)
    if str(pipeline.device).startswith("cuda"):
        torch.cuda.synchronize()


class HostTier:
    """Checkpoint weights in host memory, least recently used out when over ``budget_bytes``."""

    def __init__(self, budget_bytes: int) -> None:
        self.budget_bytes = budget_bytes
        self.entries: OrderedDict[str, HostWeights] = OrderedDict()

    @property
    def used_bytes(self) -> int:
        return sum(w.nbytes for w in self.entries.values())

    def __contains__(self, name: str) -> bool:
        return name in self.entries

    def get(self, name: str) -> HostWeights | None:
        """The weights of ``name`` if held (now the most recently used)."""
        if name in self.entries:
            self.entries.move_to_end(name)
        return self.entries.get(name)

    def put(self, name: str, weights: HostWeights) -> list[str]:
        """Keep ``weights``; returns the names dropped to stay within the budget. A snapshot larger
        than the whole budget is not kept."""
        if weights.nbytes > self.budget_bytes:
            return [name]
        self.entries[name] = weights
        self.entries.move_to_end(name)
        dropped = []
        while self.used_bytes > self.budget_bytes:
            dropped.append(self.entries.popitem(last=False)[0])
        return dropped
