"""One set of three real engines for the whole gateway suite (engines start in seconds, not
milliseconds); each test gets them healthy, whatever the previous test did to them."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.gateway.harness import Fleet


@pytest.fixture(scope="session")
def shared_fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    fleet = Fleet(tmp_path_factory.mktemp("engines"))
    try:
        fleet.start(["e1", "e2", "e3"])
        yield fleet
    finally:
        fleet.stop()


@pytest.fixture
def fleet(shared_fleet: Fleet) -> Fleet:
    shared_fleet.heal()
    return shared_fleet
