"""Reading a checkpoint into the node's page cache before a replica needs it (prefetch).

A checkpoint load from disk takes as long as a cold start (production: ~35 s), one whose files are
in the node's memory already (host RAM or the page cache) ~2.8 s. A request for a checkpoint that no
replica holds usually waits for a replica first — a start, or a busy one — so the ingress starts
reading its files when the request arrives (``model.prefetch``, ``scheduler/preload.py``'s caller in
``serve/dispatcher.py``); the replica's load then finds them in memory. The files are read through once on an ingress
thread: it costs no GPU time, its end is known (the dispatcher holds the request until then, so it
does not hold a replica idle meanwhile), and the kernel's own page cache decides what stays. It warms the node the ingress runs on — every
replica's node on one machine; on a multi-node cluster only the ingress's.

The simulated backend has no files: :class:`SimulatedPageCache` stands in for the node's page cache
with one marker file per checkpoint (when its read completes), least recently used out beyond a
number of checkpoints, shared by the processes of one node as the real cache is. Given a journal
file, it appends each checkpoint's arrival (``in``: a read begun, by the prefetch or a load from
disk), use and eviction (``out``) to it, one line each, so that a live replay's cache can be lined up
against the simulator's node memory (``benchmarks/validate.py``).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from models.loader import ModelSpec, tiny_seed
from models.sd15_shaped import sd15_shaped_dir, sd15_shaped_seed
from models.tiny import tiny_model_dir

__all__ = ["checkpoint_directory", "warm", "SimulatedPageCache"]


def checkpoint_directory(spec: ModelSpec) -> Path | None:
    """Where ``spec``'s files are on this node, or None when they are not here yet (never builds
    or downloads anything: a replica's own load does that). A local directory counts only as a
    diffusers checkpoint (its ``model_index.json``): the prefetch reads nothing else through."""
    path = Path(spec.model).expanduser()
    if path.is_dir():
        return path if (path / "model_index.json").is_file() else None
    cache = Path(spec.cache_dir) if spec.cache_dir else None
    for seed_of, directory_of in ((tiny_seed, tiny_model_dir), (sd15_shaped_seed, sd15_shaped_dir)):
        seed = seed_of(spec.model)
        if seed is not None:
            built = directory_of(cache, seed)
            return built if built.is_dir() else None
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(spec.model, local_files_only=True, cache_dir=None))
    except Exception:  # noqa: BLE001 - not cached here (or not an id): nothing to warm
        return None


def warm(directory: Path, chunk_bytes: int = 16 << 20) -> int:
    """Read every file under ``directory`` once, so its pages are in the node's page cache; returns
    the bytes read. It blocks until they are read (run it off the event loop): its end is when a
    request waiting for this checkpoint's read may go to a replica (``scheduler/preload.py``)."""
    read = 0
    view = memoryview(bytearray(chunk_bytes))
    for path in sorted(directory.rglob("*")):
        if not path.is_file():
            continue
        try:
            with path.open("rb", buffering=0) as stream:
                if hasattr(os, "posix_fadvise"):
                    os.posix_fadvise(stream.fileno(), 0, 0, os.POSIX_FADV_SEQUENTIAL)
                while count := stream.readinto(view):
                    read += count
        except OSError:
            continue
    return read


class SimulatedPageCache:
    """The simulated backend's node page cache: which checkpoints' files are in memory, and from
    when. One marker file per checkpoint in ``root`` holds the time its read completes; its mtime
    is its last use. Beyond ``capacity`` checkpoints the least recently used marker goes."""

    def __init__(self, root: Path, capacity: int, read_s: float, clock: Callable[[], float] | None = None,
                 journal: Path | None = None) -> None:
        self.root, self.capacity, self.read_s, self.journal = root, capacity, read_s, journal
        self.clock = clock or (lambda: time.time())  # wall clock: the node's processes share it
        self.root.mkdir(parents=True, exist_ok=True)

    def _note(self, event: str, marker: Path) -> None:
        """One line of the journal, naming the checkpoint by its marker (one short append: the node's
        processes do not interleave it)."""
        if self.journal is not None:
            with self.journal.open("a") as journal:
                journal.write(f"{self.clock():.6f} {event} {marker.name}\n")

    def _marker(self, name: str) -> Path:
        return self.root / name.replace("/", "_").replace(":", "_")

    def ready_at(self, name: str, use: bool = True) -> float | None:
        """When ``name``'s files are (or will be) in memory; None: not cached. Counts as a use
        unless ``use`` is false."""
        marker = self._marker(name)
        try:
            ready = float(marker.read_text() or 0.0)
            if use:
                self._used(marker)
                self._note("use", marker)
        except (OSError, ValueError):
            return None
        return ready

    def cached(self, names: Iterable[str]) -> set[str]:
        """Which of ``names`` are in the cache (read, or being read), without counting as a use."""
        present = {marker.name for marker in self.root.iterdir()}
        return {name for name in names if self._marker(name).name in present}

    def read(self, name: str, from_now_s: float | None = None) -> bool:
        """``name``'s files are being read (a prefetch: done in ``read_s``) or were just read (a load
        from disk: ``from_now_s`` 0). False: it was cached already and stays as it is."""
        marker = self._marker(name)
        if from_now_s is None and marker.exists():
            return False
        marker.write_text(repr(self.clock() + (self.read_s if from_now_s is None else from_now_s)))
        self._used(marker)
        self._note("in", marker)
        self._evict()
        return True

    def _used(self, marker: Path) -> None:
        now = self.clock()
        os.utime(marker, (now, now))

    def _evict(self) -> None:
        markers = sorted(self.root.iterdir(), key=lambda p: (p.stat().st_mtime, p.name))
        for marker in markers[:max(0, len(markers) - self.capacity)]:
            marker.unlink(missing_ok=True)
            self._note("out", marker)
