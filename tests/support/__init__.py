"""Shared test helpers: real servers on loopback (``servers``), environment policy (below).

Policy: a test that needs something this machine lacks (a server binary, the
shared corpus) is *skipped* locally but *fails* under ``CI=true``, where everything must be present.
"""

from __future__ import annotations

import os
from typing import NoReturn

import pytest


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def unavailable(reason: str) -> NoReturn:
    """Skip the test locally; fail it in CI, where a missing dependency is a broken setup."""
    if in_ci():
        pytest.fail(f"required in CI: {reason}", pytrace=False)
    pytest.skip(reason)
