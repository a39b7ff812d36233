"""Settings: the example configuration is valid, and every problem names its key path."""

from __future__ import annotations

from pathlib import Path

import pytest

from mailgateway.errors import ConfigError
from mailgateway.settings import STAFF_NOTICE_DELAY_LIMIT, load_settings, parse_settings
from mailgateway.status import PROCESSING_LATE_SECONDS

EXAMPLE = Path(__file__).resolve().parent.parent / "config" / "mailgateway.example.toml"
MINIMAL = {"regions": [{"code": "ARA", "name": "Auvergne-Rhône-Alpes", "address": "ssi-ara@ars.test"}]}


def test_example_configuration_is_valid() -> None:
    settings = load_settings(EXAMPLE)
    assert settings.intake.smtp is not None and settings.intake.smtp.port == 2525
    assert settings.relay.host is None  # embedded default: outbound mail goes to the Maildir
    assert [r.code for r in settings.regions] == ["ARA", "PDL"]


def test_unknown_key_is_an_error_with_its_path() -> None:
    with pytest.raises(ConfigError) as err:
        parse_settings({**MINIMAL, "relay": {"hots": "x"}})
    assert ("relay.hots", "unknown key") in err.value.problems


def test_wrong_type_and_semantic_problems_are_all_reported() -> None:
    data = {
        "regions": [{"code": "ara", "address": "not-an-address"}],
        "intake": {"smtp": {"port": "2525"}},
        "staff": [{"address": "x@ars.test", "region": "ZZZ"}],
    }
    with pytest.raises(ConfigError) as err:
        parse_settings(data)
    paths = {p for p, _ in err.value.problems}
    assert {"intake.smtp.port", "regions[0].code", "regions[0].address", "staff[0].region"} <= paths


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_a_number_that_is_not_finite_is_refused(value: float) -> None:
    # TOML writes them nan and inf; nan compares false with every bound, so no check would see it.
    with pytest.raises(ConfigError) as err:
        parse_settings({**MINIMAL, "processing": {"staff_notice_max_delay_seconds": value,
                                                  "host_stall_seconds": value}})
    assert ("processing.staff_notice_max_delay_seconds", "must be a finite number") in err.value.problems
    assert ("processing.host_stall_seconds", "must be a finite number") in err.value.problems


def test_the_staff_notice_delay_is_bounded() -> None:
    # Half the age at which `status` calls deferred notifications stalled: a chunk composed at
    # the bound must never read as a stall.
    assert 2 * STAFF_NOTICE_DELAY_LIMIT <= PROCESSING_LATE_SECONDS
    assert parse_settings({**MINIMAL, "processing": {"staff_notice_max_delay_seconds": 0}}) is not None
    assert parse_settings({**MINIMAL, "processing": {"staff_notice_max_delay_seconds": 300}}) is not None
    for value in (-1, 301, 1e12):
        with pytest.raises(ConfigError) as err:
            parse_settings({**MINIMAL, "processing": {"staff_notice_max_delay_seconds": value}})
        assert err.value.problems == [("processing.staff_notice_max_delay_seconds", "must be between 0 and 300")]


def test_sqlite_refuses_several_instances() -> None:
    with pytest.raises(ConfigError) as err:
        parse_settings({**MINIMAL, "database": {"url": "sqlite:///x.db", "instances": 2}})
    assert err.value.problems[0][0] == "database.instances"


def test_plain_imap_only_to_loopback() -> None:
    region = {**MINIMAL["regions"][0], "imap": {"host": "imap.example.org", "tls": False,
                                               "username": "u", "password_file": "/x"}}
    with pytest.raises(ConfigError) as err:
        parse_settings({"regions": [region]})
    assert ("regions[0].imap.tls", "plain IMAP is only allowed to a loopback host") in err.value.problems


def test_missing_file_is_reported(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        load_settings(tmp_path / "nope.toml")
    assert err.value.problems[0][0] == "(file)"
