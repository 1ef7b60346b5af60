"""The suite's own rule for `make test`'s two runs: an application's tests all go to the side run
(``side_run``) or none do, so no application is deployed in both (tests/conftest.py)."""

from __future__ import annotations

import pytest

from tests.conftest import split_applications


class _Item:
    """What the rule reads of a collected test: its markers."""

    def __init__(self, *marks: pytest.MarkDecorator) -> None:
        self._marks = {mark.mark.name: mark.mark for mark in marks}

    def get_closest_marker(self, name: str) -> pytest.Mark | None:
        return self._marks.get(name)


CPU, CATALOG = pytest.mark.app("cpu"), pytest.mark.app("cpu", "model.resident_models=1")
SIDE = pytest.mark.side_run


@pytest.mark.parametrize(("items", "split"), [
    ([_Item(CPU), _Item(CPU)], []),
    ([_Item(CATALOG, SIDE), _Item(CATALOG, SIDE)], []),
    ([_Item(CPU), _Item(CATALOG, SIDE)], []),  # two applications, one in each run
    ([_Item(CATALOG, SIDE), _Item(CATALOG)], [("cpu", ("model.resident_models=1",))]),
    # a live setting does not make another application: the same deploy serves both tests
    ([_Item(CPU, SIDE), _Item(pytest.mark.app("cpu", "deadlines.shed_hopeless=false"))], [("cpu", ())]),
    ([_Item(SIDE), _Item()], []),  # tests that deploy nothing
])
def test_an_application_split_between_the_runs_is_named(items: list[_Item], split: list) -> None:
    assert split_applications(items) == split  # type: ignore[arg-type]
