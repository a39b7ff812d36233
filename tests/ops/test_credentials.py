"""``${CREDENTIALS_DIRECTORY}`` in ``*_file`` keys points at systemd's LoadCredential= copies."""

from __future__ import annotations

from pathlib import Path

import pytest

from mailgateway.settings import file_problems, parse_settings

CONFIG = {
    "regions": [{"code": "ARA", "name": "ARA", "address": "ssi-ara@ars.test",
                 "imap": {"host": "imap.ars.test", "username": "ssi-ara",
                          "password_file": "${CREDENTIALS_DIRECTORY}/mailgateway_imap-ara.pass"}}],
    "relay": {"password_file": "$CREDENTIALS_DIRECTORY/mailgateway_relay.pass"},
    "outbound": {"service_name": "${CREDENTIALS_DIRECTORY} stays text outside *_file keys"},
}


def test_file_paths_expand_to_the_credentials_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))
    (tmp_path / "mailgateway_imap-ara.pass").write_text("secret")
    (tmp_path / "mailgateway_relay.pass").write_text("secret")
    settings = parse_settings(CONFIG)
    imap = settings.regions[0].imap
    assert imap is not None and imap.password_file == f"{tmp_path}/mailgateway_imap-ara.pass"
    assert settings.relay.password_file == f"{tmp_path}/mailgateway_relay.pass"
    assert settings.outbound.service_name.startswith("${CREDENTIALS_DIRECTORY}")
    assert file_problems(settings) == []


def test_outside_systemd_the_problem_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    problems = dict(file_problems(parse_settings(CONFIG)))
    assert "${CREDENTIALS_DIRECTORY}/mailgateway_imap-ara.pass" in problems["regions[0].imap.password_file"]
