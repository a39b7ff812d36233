"""Chaos tests: the heavier variants (``@pytest.mark.slow``) run only when asked for with
``pytest -m slow`` (README: long runs are opt-in); each test has a short version in the default run."""

from __future__ import annotations

import re

import pytest


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    wanted = re.search(r"(?<!not )\bslow\b", config.getoption("markexpr", "") or "") is not None
    if wanted:
        return
    skip = pytest.mark.skip(reason="heavier chaos variant: run with pytest -m slow")
    for item in items:
        if "tests/chaos/" in item.nodeid and item.get_closest_marker("slow") is not None:
            item.add_marker(skip)
