"""Fixtures of the scheduler tests (helpers: tests/support/scheduling.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.scheduling import Gateway, make_gateway


@pytest.fixture
def gw(sqlite_url: str) -> Iterator[Gateway]:
    gateway = make_gateway(sqlite_url)
    yield gateway
    gateway.app.close()
