"""The dispatcher's placement rule (``scheduler/placement.py``), which the live dispatcher and the
simulator both call: a table of free replicas → the one chosen, and properties over random fleets."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from scheduler.placement import FreeReplica, choose_replica


def _r(rid: str, ongoing: int = 0, device: tuple[str, ...] = ("sd15",), host: tuple[str, ...] = (),
       adapters: tuple[tuple[str, str], ...] = ()) -> FreeReplica:
    return FreeReplica(rid, ongoing, frozenset(device), frozenset(host), frozenset(adapters))


@pytest.mark.parametrize("free, model, loras, last_wanted, chosen", [
    # the checkpoint on the device beats host memory beats disk, however busy
    ([_r("disk", device=("x",)), _r("host", 2, device=("x",), host=("sd15",)), _r("dev", 3)], "sd15", (), {}, "dev"),
    ([_r("disk", device=("x",)), _r("host", 2, device=("x",), host=("sd15",))], "sd15", (), {}, "host"),
    # among holders: the one with the request's LoRA loaded, even with a call running there
    ([_r("a"), _r("b", 1, adapters=(("sd15", "L"),))], "sd15", ("L",), {}, "b"),
    ([_r("a"), _r("b", 1, adapters=(("sd15", "L"),))], "sd15", ("L:0.8",), {}, "b"),  # the scale is per call
    ([_r("a"), _r("b", adapters=(("anime", "L"),))], "sd15", ("L",), {}, "a"),  # loaded into another checkpoint
    ([_r("a", adapters=(("sd15", "L"),)), _r("b", adapters=(("sd15", "L"), ("sd15", "M")))], "sd15",
     ("L", "M"), {}, "b"),  # fewer to load
    # no adapters asked: the fewest calls, then the fewest adapters loaded (the others stay for theirs)
    ([_r("a", 1), _r("b")], "sd15", (), {}, "b"),
    ([_r("a", adapters=(("sd15", "L"),)), _r("b")], "sd15", (), {}, "b"),
    # a load from disk evicts: where the checkpoints were wanted longest ago
    ([_r("a", device=("hot",)), _r("b", device=("cold",))], "sd15", (), {"hot": 100.0, "cold": 5.0}, "b"),
    # every rule tied: the fewest checkpoints, then the id
    ([_r("b", device=("x", "y")), _r("a", device=("z",))], "sd15", (), {}, "a"),
    ([_r("b"), _r("a")], "sd15", (), {}, "a"),
])
def test_choose_replica(free: list[FreeReplica], model: str, loras: tuple[str, ...], last_wanted: dict,
                        chosen: str) -> None:
    assert choose_replica(free, model, loras, last_wanted).replica_id == chosen


_models = st.sampled_from(["a", "b", "c"])
_replicas = st.builds(_r, st.text("pqrs", min_size=1, max_size=3), st.integers(0, 3),
                      st.lists(_models, max_size=2).map(tuple), st.lists(_models, max_size=2).map(tuple),
                      st.lists(st.tuples(_models, st.sampled_from(["L", "M"])), max_size=3).map(tuple))


@given(st.lists(_replicas, min_size=1, max_size=5, unique_by=lambda r: r.replica_id), _models,
       st.lists(st.sampled_from(["L", "M"]), max_size=2))
def test_a_holder_is_chosen_when_one_is_free_and_its_adapters_count_only_among_equals(
        free: list[FreeReplica], model: str, loras: list[str]) -> None:
    chosen = choose_replica(free, model, loras)
    assert chosen in free
    if any(model in r.device for r in free):
        assert model in chosen.device
    elif any(model in r.host for r in free):
        assert model in chosen.host
    def tier(r: FreeReplica) -> int:
        return 0 if model in r.device else 1 if model in r.host else 2

    missing = {r.replica_id: sum((model, a) not in r.adapters for a in set(loras)) for r in free if tier(r) == tier(chosen)}
    assert missing[chosen.replica_id] == min(missing.values())
