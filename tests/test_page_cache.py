"""Prefetch into the node's page cache (models/page_cache.py, serve/prefetch.py): what is read, what
a load then costs, and when the ingress prefetches at all. No Ray."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import pytest

from models.loader import ModelSpec
from models.page_cache import SimulatedPageCache, checkpoint_directory, warm
from serve.settings import AppSettings


def test_warm_reads_every_file_of_a_checkpoint_through(tmp_path: Path, monkeypatch) -> None:
    (tmp_path / "unet").mkdir()
    (tmp_path / "unet" / "weights.safetensors").write_bytes(b"x" * 3000)
    (tmp_path / "model_index.json").write_bytes(b"{}")
    opened: list[str] = []
    real_open = Path.open
    monkeypatch.setattr(Path, "open", lambda self, *a, **k: opened.append(self.name) or real_open(self, *a, **k))
    assert warm(tmp_path, chunk_bytes=1024) == 3002  # in chunks smaller than the file: every byte once
    assert sorted(opened) == ["model_index.json", "weights.safetensors"]


def test_a_checkpoints_files_are_found_only_where_they_already_are(tmp_path: Path) -> None:
    """A local directory with a diffusers checkpoint in it is itself; a built tiny model is its cache directory once built, and
    nothing before (the prefetch never builds or downloads); an id not cached here is nothing."""
    assert checkpoint_directory(ModelSpec(model=str(tmp_path))) is None  # no model_index.json: not a checkpoint
    (tmp_path / "model_index.json").write_text("{}")
    assert checkpoint_directory(ModelSpec(model=str(tmp_path))) == tmp_path
    spec = ModelSpec(model="tiny:7", cache_dir=str(tmp_path / "cache"))
    assert checkpoint_directory(spec) is None
    from models.tiny import tiny_model_dir

    built = tiny_model_dir(tmp_path / "cache", 7)
    built.mkdir(parents=True)
    assert checkpoint_directory(spec) == built
    assert checkpoint_directory(ModelSpec(model="nobody/not-a-cached-model")) is None


def test_the_simulated_page_cache_times_reads_and_keeps_the_most_recently_used(tmp_path: Path) -> None:
    now = [1000.0]
    cache = SimulatedPageCache(tmp_path, capacity=2, read_s=30.0, clock=lambda: now[0])
    assert cache.read("a") and cache.ready_at("a") == 1030.0  # a prefetch: done in 30 s
    assert not cache.read("a")  # being read already: unchanged
    now[0] = 1001.0
    assert cache.read("b", 0.0) and cache.ready_at("b") == 1001.0  # a load from disk just read it
    now[0] = 1002.0
    cache.ready_at("a")  # a used again: b is now the least recently used
    now[0] = 1003.0
    cache.read("c")
    assert cache.ready_at("b") is None and cache.ready_at("a") == 1030.0 and cache.ready_at("c") == 1033.0


def _simulated(tmp_path: Path, **simulation: float) -> AppSettings:
    return AppSettings.model_validate({
        "model": {"id": "a", "backend": "simulated", "catalog": {"b": "simulated", "c": "simulated"},
                  "resident_models": 1},
        "simulation": {"load_time_s": 0.5, "host_load_time_s": 0.1, **simulation}})


def test_a_simulated_load_takes_the_page_caches_time_when_the_files_are_there(tmp_path: Path,
                                                                              monkeypatch) -> None:
    """SIMULATION: a checkpoint read from disk by one replica (or prefetched, and its read done) is
    loaded from the node's page cache by the next: ``host_load_time_s``, not ``load_time_s``;
    without a page cache every load is from disk."""
    import models.simulated as simulated
    from serve.worker_setup import load_models

    slept: list[float] = []
    clock = [time.time()]

    def sleep(seconds: float) -> None:  # the simulated loads' sleeps, recorded and passed at once
        slept.append(round(seconds, 6))
        clock[0] += seconds

    monkeypatch.setattr(simulated.time, "sleep", sleep)
    monkeypatch.setattr(simulated.time, "time", lambda: clock[0])
    monkeypatch.setattr("serve.worker_setup.page_cache_root", lambda app: tmp_path / app)
    for app, cached in (("with-cache", 4), ("without", 0)):
        slept.clear()
        settings = _simulated(tmp_path, page_cache_checkpoints=cached)
        first, second = load_models(settings, app_name=app), load_models(settings, app_name=app)
        first.prepare(_request("simulated:b"))
        second.prepare(_request("simulated:b"))
        # a's start on each replica, then b's load on each
        assert slept == ([0.5, 0.1, 0.5, 0.1] if cached else [0.5, 0.5, 0.5, 0.5]), app


def _request(model: str):
    from models.request import GenerationRequest

    return GenerationRequest("x", 64, 64, 1, 1.0, 0, model=model)


@pytest.mark.parametrize("change, prefetches", [
    ({}, True),
    ({"model": {"prefetch": False}}, False),
    ({"queue": {"model_aware": False}}, False),
    ({"queue": {"dispatch": False}}, False),
    ({"model": {"resident_models": 0}}, False),  # the whole catalog stays loaded: nothing to read
    ({"simulation": {"page_cache_checkpoints": 0}}, False),  # simulated, no page cache to fill
])
def test_the_ingress_prefetches_only_where_a_read_ahead_can_help(change: dict, prefetches: bool) -> None:
    from serve.prefetch import prefetches as ingress_prefetches

    base = {"model": {"id": "a", "backend": "simulated", "catalog": {"b": "simulated"}, "resident_models": 1},
            "simulation": {"page_cache_checkpoints": 4}, "queue": {}}
    for section, values in change.items():
        base[section] = {**base[section], **values}
    assert ingress_prefetches(AppSettings.model_validate(base)) is prefetches


def test_the_prefetcher_reads_a_checkpoint_once_and_only_one_it_serves(tmp_path: Path, monkeypatch) -> None:
    from serve import prefetch

    monkeypatch.setattr(prefetch, "page_cache_root", lambda app: tmp_path / app)
    (tmp_path / "app").mkdir()
    (tmp_path / "app" / "stale").write_text("0")  # the cache is the new application's: emptied
    prefetcher = prefetch.Prefetcher(_simulated(tmp_path, page_cache_checkpoints=4), "app")
    for name in ("simulated:b", "simulated:b", "simulated:a", "simulated:unknown"):
        prefetcher(name)
    prefetcher._pool.shutdown(wait=True)
    assert sorted(p.name for p in (tmp_path / "app").iterdir()) == ["simulated_a", "simulated_b"]
    assert prefetcher.simulated is not None
    assert prefetcher.simulated.ready_at("simulated:b") == pytest.approx(time.time() + 0.4, abs=0.3)
    assert prefetcher.in_memory() == {"simulated:a", "simulated:b"}  # what the dispatcher counts as in memory


def test_a_simulated_checkpoint_is_read_again_as_soon_as_the_page_cache_drops_it(tmp_path: Path,
                                                                                 monkeypatch) -> None:
    """SIMULATION: the simulated page cache, not a timer, says whether a read is needed (as the
    simulator's node pool does): a checkpoint it holds starts no read (and the request for it is not
    held for one); one it dropped moments ago is read again at once."""
    from serve import prefetch

    monkeypatch.setattr(prefetch, "page_cache_root", lambda app: tmp_path / app)
    prefetcher = prefetch.Prefetcher(_simulated(tmp_path, page_cache_checkpoints=1, load_time_s=0.02,
                                                host_load_time_s=0.01), "app")
    prefetcher("simulated:b")
    prefetcher._pool.submit(lambda: None).result()
    prefetcher._reading.clear()  # no event loop here to end the read: it is over
    prefetcher("simulated:b")
    assert prefetcher.reading() == frozenset()  # in the cache: nothing to read, nothing to wait for
    prefetcher("simulated:a")  # the cache holds one checkpoint: b goes
    prefetcher._pool.submit(lambda: None).result()
    prefetcher._reading.clear()
    assert prefetcher.in_memory() == {"simulated:a"}
    prefetcher("simulated:b")
    assert prefetcher.reading() == {"simulated:b"}
    prefetcher._pool.submit(lambda: None).result()
    assert prefetcher.in_memory() == {"simulated:b"}


def test_a_real_checkpoint_is_read_ahead_once_within_the_repeat_time(tmp_path: Path, monkeypatch) -> None:
    """Real checkpoints: the kernel's page cache cannot be asked what it holds, so a checkpoint
    asked for again within ``REPEAT_S`` is not read again; after it, it is."""
    from serve import prefetch

    warmed: list[Path] = []
    monkeypatch.setattr(prefetch, "checkpoint_directory", lambda spec: tmp_path)
    monkeypatch.setattr(prefetch, "warm", lambda directory: warmed.append(directory) or 0)
    settings = AppSettings.model_validate({"model": {"id": "tiny", "catalog": {"b": "tiny:1"}, "resident_models": 1}})
    prefetcher = prefetch.Prefetcher(settings, "app")
    now = [1000.0]
    monkeypatch.setattr(prefetch.time, "monotonic", lambda: now[0])
    for at in (1000.0, 1001.0, 1000.0 + prefetch.REPEAT_S + 1):
        now[0] = at
        prefetcher("b")
        prefetcher._pool.submit(lambda: None).result()
        prefetcher._reading.clear()
    assert len(warmed) == 2


def test_the_ingress_prewarms_what_the_past_days_predict(tmp_path: Path, monkeypatch) -> None:
    """SIMULATION, a day compressed to 24 s (time_scale 3600). b was asked for at this time of day
    on the two days before, a only half a day off: the pre-warm reads b into the node's page cache,
    not a, and never again while it is there; with prewarm_days 0, nothing."""
    from serve import prefetch

    monkeypatch.setattr(prefetch, "page_cache_root", lambda app: tmp_path / app)
    settings = _simulated(tmp_path, page_cache_checkpoints=4)
    settings = settings.model_copy(update={"simulation": settings.simulation.model_copy(update={"time_scale": 3600})})
    prefetcher = prefetch.Prefetcher(settings, "app")
    day = prefetcher.prewarm.day_s
    now = time.time()
    for when, name in ((now - 2 * day + 0.5, "simulated:b"), (now - day + 0.5, "simulated:b"),
                       (now - 1.5 * day, "simulated:a")):
        monkeypatch.setattr(prefetch.time, "time", lambda when=when: when)
        prefetcher.arrived(name)
    monkeypatch.undo()
    monkeypatch.setattr(prefetch, "page_cache_root", lambda app: tmp_path / app)
    assert prefetcher.prewarm_now() == ["simulated:b"]
    prefetcher._pool.submit(lambda: None).result()  # its reads are done
    assert prefetcher.in_memory() == {"simulated:b"} and prefetcher.prewarm_now() == []
    off = settings.model_copy(update={"model": settings.model.model_copy(update={"prewarm_days": 0})})
    assert prefetch.Prefetcher(off, "app2").prewarm_now() == []


def test_a_real_checkpoint_read_ahead_counts_as_in_memory_for_a_while(tmp_path: Path, monkeypatch) -> None:
    """Real checkpoints: the kernel's page cache cannot be asked, so a checkpoint read ahead counts
    as in the node's memory for ``KEPT_S``, then no more; one with no files on this node never."""
    from serve import prefetch

    warmed: list[Path] = []
    monkeypatch.setattr(prefetch, "checkpoint_directory", lambda spec: tmp_path if spec.model == "tiny:1" else None)
    monkeypatch.setattr(prefetch, "warm", lambda directory: warmed.append(directory) or 0)
    settings = AppSettings.model_validate({"model": {"id": "tiny", "catalog": {"b": "tiny:1", "c": "tiny:2"},
                                                     "resident_models": 1}})
    prefetcher = prefetch.Prefetcher(settings, "app")
    prefetcher("b")
    prefetcher("c")  # not on this node: nothing read, nothing in memory
    prefetcher._pool.submit(lambda: None).result()
    assert warmed == [tmp_path] and prefetcher.in_memory() == {"b"}
    later = time.monotonic() + prefetch.KEPT_S + 1
    monkeypatch.setattr(prefetch.time, "monotonic", lambda: later)
    assert prefetcher.in_memory() == frozenset()


def test_the_prewarm_history_outlives_the_ingress(tmp_path: Path, monkeypatch) -> None:
    """A new ingress reads the history the last one saved (only the served checkpoints, only the days
    it looks back) and pre-warms from it; an unreadable file starts it without one."""
    from serve import prefetch

    monkeypatch.setattr(prefetch, "page_cache_root", lambda app: tmp_path / app)
    settings = _simulated(tmp_path, page_cache_checkpoints=4)
    settings = settings.model_copy(update={
        "simulation": settings.simulation.model_copy(update={"time_scale": 3600}),
        "model": settings.model.model_copy(update={"prewarm_history": str(tmp_path / "history.json")})})
    first = prefetch.Prefetcher(settings, "app")
    day, now = first.prewarm.day_s, time.time()
    for when, name in ((now - 30 * day, "simulated:a"), (now - day + 0.5, "simulated:b")):
        monkeypatch.setattr(prefetch.time, "time", lambda when=when: when)
        first.arrived(name)
    monkeypatch.setattr(prefetch.time, "time", lambda: now)
    first.prewarm_now()  # saves the history
    first._pool.submit(lambda: None).result()
    saved = json.loads((tmp_path / "history.json").read_text())["uses"]
    saved["simulated:gone"] = [now - day]  # a checkpoint no longer served
    (tmp_path / "history.json").write_text(json.dumps({"uses": saved}))
    second = prefetch.Prefetcher(settings, "app2")
    assert {name: len(uses) for name, uses in second._uses.items()} == {"simulated:b": 1}
    assert second.prewarm_now() == ["simulated:b"]
    second._pool.submit(lambda: None).result()  # its save is done
    (tmp_path / "history.json").write_text("{not json")
    assert prefetch.Prefetcher(settings, "app3")._uses == {}


@pytest.mark.parametrize("backend, where, expected", [
    ("diffusers", "auto", "~/.cache/sdserve/prewarm-app.json"),
    ("simulated", "auto", None),  # each replay starts fresh
    ("diffusers", "none", None),
    ("simulated", "/data/h.json", "/data/h.json"),
])
def test_where_the_prewarm_history_is_kept(backend: str, where: str, expected: str | None) -> None:
    from serve.prefetch import history_file

    settings = AppSettings.model_validate({"model": {"id": "a", "backend": backend, "prewarm_history": where}})
    path = history_file(settings, "app")
    assert path == (None if expected is None else Path(expected).expanduser())


def test_a_checkpoint_counts_as_being_read_until_its_read_ends(tmp_path: Path, monkeypatch) -> None:
    """The dispatcher holds a request whose checkpoint is in ``reading()``: from the prefetch's call
    (before its thread runs) until the read ends, when ``on_read_ended`` tells it to look again.
    SIMULATION: the simulated page cache's read takes load_time_s - host_load_time_s (0.4 s here)."""
    from serve import prefetch

    monkeypatch.setattr(prefetch, "page_cache_root", lambda app: tmp_path / app)
    prefetcher = prefetch.Prefetcher(_simulated(tmp_path, page_cache_checkpoints=4), "app")

    async def scenario() -> tuple[frozenset[str], frozenset[str], float]:
        ended = asyncio.Event()
        prefetcher.on_read_ended = ended.set
        started = time.monotonic()
        prefetcher("simulated:b")
        asked = prefetcher.reading()
        prefetcher._pool.submit(lambda: None).result()  # its thread is done; the read is not
        after_thread = prefetcher.reading()
        await asyncio.wait_for(ended.wait(), 5)
        return asked, after_thread, time.monotonic() - started

    asked, after_thread, took = asyncio.run(scenario())
    assert asked == after_thread == {"simulated:b"} and prefetcher.reading() == frozenset()
    assert took >= 0.35  # it ended when the read did, not when its thread did


def test_a_read_whose_checkpoint_the_page_cache_dropped_ends_at_once(tmp_path: Path, monkeypatch) -> None:
    """SIMULATION, a page cache of one checkpoint, reads of 1 s: b's read ends as soon as a's read
    takes its slot (its requests go to a replica, which reads b from disk, as in the simulator), not
    1 s later; and that early end of the first read of b does not end the second."""
    from serve import prefetch

    monkeypatch.setattr(prefetch, "page_cache_root", lambda app: tmp_path / app)
    prefetcher = prefetch.Prefetcher(_simulated(tmp_path, page_cache_checkpoints=1, load_time_s=1.1), "app")

    async def scenario() -> tuple[float, frozenset[str], frozenset[str]]:
        ended = asyncio.Event()
        prefetcher.on_read_ended = ended.set

        async def until_read_ends(name: str) -> None:
            while name in prefetcher.reading():
                ended.clear()
                await asyncio.wait_for(ended.wait(), 5)

        started = time.monotonic()
        prefetcher("simulated:b")
        prefetcher("simulated:a")  # a takes b's slot while b is read
        await until_read_ends("simulated:b")
        dropped_after = time.monotonic() - started
        await asyncio.sleep(0.3)
        prefetcher("simulated:b")  # b again: a second read (to end at 1.3 s or later), which drops a
        await asyncio.sleep(max(0.0, 1.1 - (time.monotonic() - started)))  # past the first read's end
        past_first_end = prefetcher.reading()
        await until_read_ends("simulated:b")
        return dropped_after, past_first_end, prefetcher.reading()

    dropped_after, past_first_end, at_last = asyncio.run(scenario())
    assert dropped_after < 0.5
    assert past_first_end == {"simulated:b"} and at_last == frozenset()


def test_a_failed_read_ends_too(tmp_path: Path, monkeypatch) -> None:
    """A real checkpoint whose read fails is no longer being read: nothing waits for it forever."""
    from serve import prefetch

    def fail(directory: Path) -> int:
        raise OSError("disk gone")

    monkeypatch.setattr(prefetch, "checkpoint_directory", lambda spec: tmp_path)
    monkeypatch.setattr(prefetch, "warm", fail)
    settings = AppSettings.model_validate({"model": {"id": "tiny", "catalog": {"b": "tiny:1"}, "resident_models": 1}})
    prefetcher = prefetch.Prefetcher(settings, "app")

    async def scenario() -> None:
        ended = asyncio.Event()
        prefetcher.on_read_ended = ended.set
        prefetcher("b")
        await asyncio.wait_for(ended.wait(), 5)

    asyncio.run(scenario())
    assert prefetcher.reading() == frozenset() and prefetcher.in_memory() == frozenset()
