"""``[processing]`` restart back-off of the processing host and its /healthz bound
(docs/operations.md, "Process model"): defaults unchanged, validation."""

from __future__ import annotations

import pytest

from mailgateway.errors import ConfigError
from mailgateway.settings import parse_settings

MINIMAL = {"regions": [{"code": "ARA", "name": "Auvergne-Rhône-Alpes", "address": "ssi-ara@ars.test"}]}
KEYS = ["host_restart_first_seconds", "host_restart_max_seconds", "host_down_unhealthy_seconds"]


def test_defaults_are_1_s_doubling_to_30_s_and_unhealthy_after_10_s() -> None:
    p = parse_settings(MINIMAL).processing
    assert p.host_restart_first_seconds == 1.0
    assert p.host_restart_max_seconds == 30.0
    assert p.host_down_unhealthy_seconds == 10.0


def test_tests_may_shorten_them() -> None:
    p = parse_settings({**MINIMAL, "processing": dict(zip(KEYS, [0.2, 3.0, 2.0], strict=True))}).processing
    assert (p.host_restart_first_seconds, p.host_restart_max_seconds, p.host_down_unhealthy_seconds) == (0.2, 3.0, 2.0)


@pytest.mark.parametrize("key", KEYS)
def test_a_restart_bound_must_be_positive(key: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_settings({**MINIMAL, "processing": {key: 0}})
    assert (f"processing.{key}", "must be greater than 0") in err.value.problems


def test_the_longest_back_off_is_not_shorter_than_the_first() -> None:
    with pytest.raises(ConfigError) as err:
        parse_settings({**MINIMAL, "processing": {"host_restart_first_seconds": 5, "host_restart_max_seconds": 2}})
    assert ("processing.host_restart_max_seconds", "must be at least host_restart_first_seconds") in err.value.problems
