"""``[processing]`` supervision bounds (docs/operations.md, "Process model"): defaults, validation."""

from __future__ import annotations

import pytest

from mailgateway.errors import ConfigError
from mailgateway.settings import parse_settings

MINIMAL = {"regions": [{"code": "ARA", "name": "Auvergne-Rhône-Alpes", "address": "ssi-ara@ars.test"}]}


def test_defaults() -> None:
    p = parse_settings(MINIMAL).processing
    assert (p.host_stall_seconds, p.stalled_unhealthy_seconds, p.stalled_watchdog_seconds) == (30.0, 45.0, 60.0)


@pytest.mark.parametrize("key", ["host_stall_seconds", "stalled_unhealthy_seconds", "stalled_watchdog_seconds"])
def test_a_bound_must_be_positive(key: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_settings({**MINIMAL, "processing": {key: 0}})
    assert (f"processing.{key}", "must be greater than 0") in err.value.problems


def test_the_watchdog_bound_is_not_shorter_than_the_health_bound() -> None:
    with pytest.raises(ConfigError) as err:
        parse_settings({**MINIMAL, "processing": {"stalled_unhealthy_seconds": 10, "stalled_watchdog_seconds": 5}})
    assert ("processing.stalled_watchdog_seconds", "must be at least stalled_unhealthy_seconds") in err.value.problems
