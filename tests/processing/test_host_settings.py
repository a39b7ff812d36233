"""``[processing] host``: where the daemon runs processing (issue 19; docs/operations.md, "Process model")."""

from __future__ import annotations

import pytest

from mailgateway.errors import ConfigError
from mailgateway.settings import parse_settings

MINIMAL = {"regions": [{"code": "ARA", "name": "Auvergne-Rhône-Alpes", "address": "ssi-ara@ars.test"}]}


def test_processing_runs_in_its_own_process_by_default() -> None:
    assert parse_settings(MINIMAL).processing.host == "process"
    assert parse_settings({**MINIMAL, "processing": {"host": "thread"}}).processing.host == "thread"


def test_an_unknown_host_is_refused_with_its_key_path() -> None:
    with pytest.raises(ConfigError) as err:
        parse_settings({**MINIMAL, "processing": {"host": "fork"}})
    assert ("processing.host", 'must be "process" or "thread"') in err.value.problems
