"""Bulletins: the CLI, personalisation, TLP, delivery counts, bounces with fallback, tracking."""

from __future__ import annotations

import asyncio
import email
import email.policy
import json
import logging
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from mailgateway import cli
from mailgateway.app import App, build_app
from mailgateway.bulletins.followups import send_due_reminders, send_due_reports, status_counts
from mailgateway.bulletins.tracking import permanent_failure_hook
from mailgateway.clock import FixedClock
from mailgateway.dispatch.sender import Sender
from mailgateway.intake.accept import accept_in
from mailgateway.store.engine import transaction
from mailgateway.store.models import Bulletin, BulletinRecipient, Contact, OutboundMessage
from tests.support.bulletins import bulletin_settings, dsn, fill_directory, reply
from tests.support.db import at_head
from tests.support.servers import SmtpSink

NOW = datetime(2026, 11, 27, 9, 0, tzinfo=UTC)


def write_config(tmp_path: Path, url: str, relay_port: int | None = None) -> Path:
    relay = f'host = "127.0.0.1"\nport = {relay_port}\n' if relay_port else f'maildir = "{tmp_path / "out"}"\n'
    path = tmp_path / "mg.toml"
    path.write_text(
        f'[database]\nurl = "{url}"\n[relay]\n{relay}[authentication]\nnameservers = ["127.0.0.1"]\n'
        '[[regions]]\ncode = "ARA"\nname = "Auvergne-Rhône-Alpes"\naddress = "ssi-ara@ars.test"\n'
        '[[staff]]\naddress = "agent@ars.test"\nregion = "ARA"\n', encoding="utf-8")
    return path


@pytest.fixture
def clock() -> FixedClock:
    return FixedClock(NOW)


@pytest.fixture
def app(sqlite_url: str, smtp_sink: SmtpSink, clock: FixedClock) -> Iterator[App]:
    application = build_app(bulletin_settings(at_head(sqlite_url), relay_port=smtp_sink.port), clock=clock)
    with transaction(application.factory) as s:
        fill_directory(s, NOW, 3, roles=("ssi", "rssi"))
        fill_directory(s, NOW, 2, departement="01", category="ESMS", start=10)
    yield application
    application.close()


def run_cli(capsys: pytest.CaptureFixture[str], config: Path, *args: str) -> tuple[int, str, str]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        code = cli.main([*args, "-c", str(config)])
    finally:  # cli.main logs to the captured stderr; leave logging as it was
        root.handlers[:] = handlers
        root.setLevel(level)
    out, err = capsys.readouterr()
    return code, out, err


def body_file(tmp_path: Path) -> Path:
    path = tmp_path / "bulletin.txt"
    path.write_text("Une campagne d'hameçonnage vise les laboratoires.\nNe cliquez pas.\n", encoding="utf-8")
    return path


def send_args(config_body: Path, target: str = "category=LBM", *extra: str) -> list[str]:
    return ["bulletin", "send", "--region", "ARA", "--target", target, "--subject", "Hameçonnage",
            "--body-file", str(config_body), *extra]


def count(app: App, model: Any, *where: Any) -> int:
    with app.factory() as s:
        return int(s.scalar(select(func.count()).select_from(model).where(*where)) or 0)


def flush(app: App) -> None:
    sender = Sender(app.settings, app.factory, app.clock, "test",
                    on_permanent_failure=permanent_failure_hook(app.env))
    asyncio.run(sender.flush(include_backoff=True))


def process(app: App, raw: bytes) -> Any:
    with transaction(app.factory) as s:
        inbound = accept_in(s, raw, source="cli", now=app.clock.now()).inbound_id
    return app.processor.process(inbound)


def test_dry_run_prints_count_and_sample_and_writes_nothing(
    app: App, tmp_path: Path, sqlite_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(tmp_path, sqlite_url)
    code, out, _ = run_cli(capsys, config, *send_args(body_file(tmp_path)))
    assert code == 0
    assert "3 établissement(s) destinataire(s)" in out and "Laboratoire numéro 0" in out and "--yes" in out
    assert count(app, Bulletin) == 0 and count(app, OutboundMessage) == 0
    code, out, _ = run_cli(capsys, config, *send_args(body_file(tmp_path), "departement=01", "--json"))
    result = json.loads(out)
    assert result["recipients"] == 2 and result["dry_run"] is True and len(result["sample"]) == 2


def test_the_dry_run_counts_whom_the_tlp_lets_through_as_sending_does(
    app: App, tmp_path: Path, sqlite_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """An outside tester: an AMBER dry run said « 4 établissement(s) destinataire(s) sur 4 »;
    ``--yes`` then sent to 1, the 3 others refused in log lines only."""
    config = write_config(tmp_path, sqlite_url)
    config.write_text(config.read_text(encoding="utf-8") + '[outbound]\namber_allowed_domains = ["e0.test"]\n',
                      encoding="utf-8")
    code, out, _ = run_cli(capsys, config, *send_args(body_file(tmp_path), "category=LBM", "--tlp", "AMBER"))
    assert code == 0
    assert "Simulation (rien n'est envoyé) : 1 établissement(s) destinataire(s) sur 3 ciblé(s)" in out
    assert "2 établissement(s) exclu(s) par les règles d'envoi :" in out
    assert "TLP:AMBER interdit l'envoi à ssi@e1.test" in out and "TLP:AMBER interdit l'envoi à ssi@e2.test" in out
    code, out, _ = run_cli(capsys, config, *send_args(body_file(tmp_path), "category=LBM", "--tlp", "AMBER", "--json"))
    dry = json.loads(out)
    assert (dry["recipients"], dry["refused"], [r["address"] for r in dry["sample"]]) == (1, 2, ["ssi@e0.test"])
    code, out, _ = run_cli(capsys, config, *send_args(body_file(tmp_path), "category=LBM", "--tlp", "AMBER", "--yes",
                                                      "--json"))
    assert code == 0 and json.loads(out)["recipients"] == dry["recipients"]


def test_a_marking_in_the_text_stricter_than_the_label_is_refused(
    app: App, tmp_path: Path, sqlite_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """An outside tester: « [TLP:RED] Ne pas diffuser » as the subject, without --tlp, went to every
    establishment as TLP:CLEAR. Exit 2, nothing written; an equal or weaker marking passes."""
    config = write_config(tmp_path, sqlite_url)
    args = ["bulletin", "send", "--region", "ARA", "--target", "all", "--body-file", str(body_file(tmp_path))]
    code, _, err = run_cli(capsys, config, *args, "--subject", "[TLP:RED] Ne pas diffuser", "--yes")
    assert code == 2 and "TLP:RED" in err and "--tlp RED" in err
    code, _, err = run_cli(capsys, config, *args, "--subject", "TLP:AMBER rappel", "--tlp", "GREEN", "--yes")
    assert code == 2 and "précisez --tlp AMBER" in err
    assert count(app, Bulletin) == 0
    code, _, _ = run_cli(capsys, config, *args, "--subject", "TLP:GREEN rappel", "--tlp", "AMBER")
    assert code == 0


def test_send_says_it_composes_in_the_foreground_and_the_daemon_sends(
    app: App, tmp_path: Path, sqlite_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """An outside tester: ``bulletin send --yes`` held the terminal 15–40 s with nothing said."""
    config = write_config(tmp_path, sqlite_url)
    code, out, err = run_cli(capsys, config, *send_args(body_file(tmp_path), "all", "--yes"))
    assert code == 0
    assert "composition, signature et mise en file en cours" in err and "5 message(s) en file" in out


def test_send_queues_one_personalised_message_per_establishment_with_own_ids(
    app: App, tmp_path: Path, sqlite_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(tmp_path, sqlite_url)
    code, out, _ = run_cli(capsys, config, *send_args(body_file(tmp_path), "all", "--yes", "--json"))
    assert code == 0
    result = json.loads(out)
    assert result == {"id": result["id"], "recipients": 5}
    with app.factory() as s:
        rows = list(s.scalars(select(OutboundMessage).where(OutboundMessage.bulletin_id == result["id"])))
    assert len(rows) == 5
    assert len({r.message_id for r in rows}) == 5 and len({r.mail_from for r in rows}) == 5
    assert all(r.mail_from.startswith("bounces+") and r.priority == 10 for r in rows)
    # The ssi contact is preferred over the rssi one of the same establishment.
    assert {r.recipient for r in rows} == {"ssi@e0.test", "ssi@e1.test", "ssi@e2.test", "ssi@e10.test", "ssi@e11.test"}
    for row in rows:
        msg = email.message_from_bytes(row.raw, policy=email.policy.default)
        text = msg.get_body(("plain",)).get_content()  # type: ignore[union-attr]
        n = row.recipient.split("@e")[1].split(".")[0]
        assert f"Laboratoire numéro {n}" in text and "FINESS" in text and "#lu" in text
        assert "Ne cliquez pas." in text
        assert "TLP:CLEAR" in msg["Subject"] and msg["From"].addresses[0].addr_spec == "ssi-ara@ars.test"


def test_red_is_refused_and_a_bad_target_gives_the_french_reason(
    app: App, tmp_path: Path, sqlite_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(tmp_path, sqlite_url)
    code, _, err = run_cli(capsys, config, *send_args(body_file(tmp_path), "all", "--tlp", "RED", "--yes"))
    assert code == 2 and "TLP:RED" in err and "ne quitte jamais" in err
    code, _, err = run_cli(capsys, config, *send_args(body_file(tmp_path), "couleur=bleu", "--yes"))
    assert code == 2 and "critère inconnu" in err
    code, _, err = run_cli(capsys, config, *send_args(body_file(tmp_path), "departement=75", "--yes"))
    assert code == 2 and "hors de la région ARA" in err
    assert count(app, Bulletin) == 0 and count(app, OutboundMessage) == 0


def test_amber_goes_only_to_allowed_recipients(sqlite_url: str, clock: FixedClock) -> None:
    from mailgateway.bulletins.fanout import approve_bulletin, create_bulletin

    settings = bulletin_settings(at_head(sqlite_url), outbound={"amber_allowed_domains": ["e1.test"]})
    application = build_app(settings, clock=clock)
    try:
        with transaction(application.factory) as s:
            fill_directory(s, NOW, 3)
            bulletin = create_bulletin(s, settings, region="ARA", target="all", subject="S", body="B", tlp="AMBER",
                                       author="cli", now=NOW)
            assert approve_bulletin(application.env, s, bulletin.id, "cli") == 1
            counts = status_counts(s, bulletin.id)
        assert counts is not None and counts["refused"] == 2 and counts["pending"] == 1
    finally:
        application.close()


def _send(app: App, target: str = "category=LBM") -> int:
    from mailgateway.bulletins.fanout import approve_bulletin, create_bulletin

    with transaction(app.factory) as s:
        bulletin = create_bulletin(s, app.settings, region="ARA", target=target, subject="Hameçonnage",
                                   body="Texte", tlp="GREEN", author="agent@ars.test", now=NOW)
        approve_bulletin(app.env, s, bulletin.id, "agent@ars.test")
        return bulletin.id


def test_a_550_bounces_marks_the_contact_and_the_next_contact_gets_the_bulletin(
    app: App, smtp_sink: SmtpSink
) -> None:
    smtp_sink.fail("ssi@e1.test", code=550, message="5.1.1 User unknown")
    bulletin_id = _send(app)
    flush(app)
    flush(app)  # the fallback message queued by the hook
    with app.factory() as s:
        counts = status_counts(s, bulletin_id)
        contact = s.scalar(select(Contact).where(Contact.address == "ssi@e1.test"))
        rec = s.scalar(select(BulletinRecipient).where(BulletinRecipient.finess == "690000001"))
    assert counts is not None
    assert counts["recipients"] == 3 and counts["bounced"] == 1 and counts["delivered"] == 3
    assert counts["pending"] == 0 and counts["fallbacks"] == 1 and counts["unreached"] == 0
    # One refused message is one refusal: the contact stays in use (bounce_min_messages = 2), but
    # this bulletin went on to the next contact.
    assert contact is not None and contact.status == "active"
    assert rec is not None and rec.address == "rssi@e1.test" and rec.status == "queued"
    assert len(smtp_sink.messages_to("rssi@e1.test")) == 1
    # Staff are told to correct the directory.
    tasks = smtp_sink.messages_to("agent@ars.test")
    assert len(tasks) == 1 and b"ssi@e1.test" in tasks[0].raw and b"rssi@e1.test" in tasks[0].raw


def _bounce_by_verp(app: App, bulletin_id: int, recipient: str) -> None:
    with app.factory() as s:
        row = s.scalar(select(OutboundMessage).where(OutboundMessage.recipient == recipient,
                                                     OutboundMessage.bulletin_id == bulletin_id))
        assert row is not None
        verp, mid = row.mail_from, row.message_id
    result = process(app, dsn(verp, recipient, mid))
    assert result.kind == "bounce" and result.status == "processed" and result.reason is None


def test_a_dsn_mailed_back_to_the_verp_address_bounces_the_contact(app: App) -> None:
    bulletin_id = _send(app)
    flush(app)
    _bounce_by_verp(app, bulletin_id, "ssi@e2.test")
    with app.factory() as s:
        contact = s.scalar(select(Contact).where(Contact.address == "ssi@e2.test"))
        counts = status_counts(s, bulletin_id)
    # This bulletin falls back to the next contact at once...
    assert counts is not None and counts["bounced"] == 1 and counts["fallbacks"] == 1 and counts["pending"] == 1
    # ...but one delivery is not enough to drop the contact (docs/guarantees.md: a DSN may be forged):
    # failures on two distinct messages (directory.bounce_min_messages) are.
    assert contact is not None and contact.status == "active"
    second = _send(app)
    flush(app)
    _bounce_by_verp(app, second, "ssi@e2.test")
    with app.factory() as s:
        contact = s.scalar(select(Contact).where(Contact.address == "ssi@e2.test"))
    assert contact is not None and contact.status == "bouncing"


def test_one_dsn_does_not_tell_staff_the_contact_is_out_of_use(app: App) -> None:
    """One DSN no longer disables a contact, so "Contact à corriger … n'est plus utilisé"
    after it was untrue. Staff are asked to correct the contact when it is actually taken out of use."""
    def tasks() -> list[OutboundMessage]:
        with app.factory() as s:
            rows = list(s.scalars(select(OutboundMessage).where(OutboundMessage.kind == "contact_a_corriger")))
            for r in rows:
                s.expunge(r)
            return rows

    bulletin_id = _send(app)
    flush(app)
    _bounce_by_verp(app, bulletin_id, "ssi@e2.test")
    assert not tasks()
    second = _send(app)
    flush(app)
    _bounce_by_verp(app, second, "ssi@e2.test")
    found = tasks()
    assert len(found) == 1
    text = email.message_from_bytes(found[0].raw, policy=email.policy.default).get_body(("plain",))
    assert text is not None and "désormais marqué en échec" in " ".join(text.get_content().split())


def test_acknowledgement_by_reply_and_reminder_to_the_silent_ones(app: App, clock: FixedClock) -> None:
    bulletin_id = _send(app)
    flush(app)
    with app.factory() as s:
        row = s.scalar(select(OutboundMessage).where(OutboundMessage.recipient == "ssi@e0.test"))
        assert row is not None
        mid = row.message_id
    result = process(app, reply("ssi@e0.test", "ssi-ara@ars.test", mid, "#lu"))
    assert result.status == "processed"
    with app.factory() as s:
        counts = status_counts(s, bulletin_id)
    assert counts is not None and counts["acknowledged"] == 1
    clock.advance(hours=73)
    with transaction(app.factory) as s:
        assert send_due_reminders(app.env, s, clock.now()) == 2
        assert send_due_reminders(app.env, s, clock.now()) == 0
        reminded = set(s.scalars(select(OutboundMessage.recipient).where(OutboundMessage.kind == "relance_bulletin")))
    assert reminded == {"ssi@e1.test", "ssi@e2.test"}
    with transaction(app.factory) as s:
        assert send_due_reports(app.env, s, clock.now()) == 1
        report = s.scalar(select(OutboundMessage).where(OutboundMessage.kind == "bulletin_rapport"))
        assert report is not None and report.recipient == "agent@ars.test"
        assert send_due_reports(app.env, s, clock.now()) == 0
    text = email.message_from_bytes(report.raw, policy=email.policy.default).get_body(("plain",))
    assert "Accusés de lecture : 1" in text.get_content()  # type: ignore[union-attr]


def test_an_out_of_office_is_not_an_acknowledgement(app: App) -> None:
    bulletin_id = _send(app)
    with app.factory() as s:
        mid = s.scalar(select(OutboundMessage.message_id).where(OutboundMessage.recipient == "ssi@e0.test"))
    raw = reply("ssi@e0.test", "ssi-ara@ars.test", str(mid), "Je suis absent", subject="Automatic reply: absent")
    process(app, raw)
    with app.factory() as s:
        counts = status_counts(s, bulletin_id)
    assert counts is not None and counts["acknowledged"] == 0
