"""Nothing fails silently (issue 17): the whole pipeline against a real SMTP relay that enforces a
SIZE limit (Postfix's default, 10 240 000 bytes), with the command line and /metrics reading the
same database.

- A declaration carrying a 9 MB file: both staff notifications and the acknowledgement are
  delivered; the notifications summarise the original (attachment name, size, SHA-256) instead
  of carrying it; ``#original REF`` answers with the summary and the server command, and
  ``mailgateway cases original REF`` writes the original byte for byte.
- The relay's advertised SIZE is remembered and used: an original that fits is attached, one
  that does not is summarised.
- A staff mail refused for good makes ``status`` exit 1, shows in /metrics and in the digest.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email import policy
from email.message import EmailMessage
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import select

from mailgateway.app import App, build_app
from mailgateway.cli import main
from mailgateway.clock import FixedClock
from mailgateway.dispatch.sender import FlushResult, Sender
from mailgateway.intake.accept import accept_in
from mailgateway.jobs import digest
from mailgateway.metrics import Metrics
from mailgateway.processing.runner import Result
from mailgateway.settings import load_settings
from mailgateway.store.engine import transaction
from mailgateway.store.models import Case, OutboundMessage, RelayLimit
from tests.support import casemail
from tests.support.dkim import zone
from tests.support.servers import SmtpSink

POSTFIX_DEFAULT = 10_240_000
# The wall clock: ``status`` and ``cases original`` run on it, as an operator's would.
NOW = datetime.now(UTC).replace(microsecond=0)
AGENT, REFERENT, DECLARANT = "agent@ars.test", "referent@ars.test", "dsi@chu.test"


def write_config(path: Path, url: str, relay_port: int, **outbound: Any) -> Path:
    keys = {**casemail.staff_keys(), **zone(casemail.establishment_key())}
    lines = [
        "[database]", f"url = {json.dumps(url)}", "",
        "[relay]", 'host = "127.0.0.1"', f"port = {relay_port}", "timeout_seconds = 20.0",
        'local_hostname = "gateway.test"', "",
        "[outbound]", *(f"{k} = {json.dumps(v)}" for k, v in outbound.items()), "",
        "[authentication]", 'nameservers = ["127.0.0.1"]', "dns_timeout_seconds = 0.1",
        'acss_domains = ["esante.test"]', "[authentication.static_keys]",
        *(f"{json.dumps(k)} = {json.dumps(v)}" for k, v in keys.items()), "",
        "[acss]", 'address = "acss@esante.test"', "",
        "[[regions]]", 'code = "ARA"', 'name = "Auvergne-Rhône-Alpes"', 'address = "ssi-ara@ars.test"',
        "[[staff]]", f'address = "{AGENT}"', 'region = "ARA"',
        "[[staff]]", f'address = "{REFERENT}"', 'region = "ARA"', 'role = "referent"', "",
    ]
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


@dataclass
class Gateway:
    app: App
    clock: FixedClock
    config: Path
    sink: SmtpSink

    def feed(self, raw: bytes) -> Result:
        with transaction(self.app.factory) as s:
            inbound = accept_in(s, raw, source="cli", now=self.clock.now()).inbound_id
        return self.app.processor.process(inbound)

    def flush(self) -> FlushResult:
        sender = Sender(self.app.settings, self.app.factory, self.clock, "test")
        return asyncio.run(sender.flush())

    def rows(self, kind: str) -> list[OutboundMessage]:
        with self.app.factory() as s:
            return list(s.scalars(select(OutboundMessage).where(OutboundMessage.kind == kind)
                                  .order_by(OutboundMessage.id)))

    def received(self, kind: str) -> list[EmailMessage]:
        """What the relay accepted of the mail of ``kind``, by Message-ID."""
        ids = {r.message_id for r in self.rows(kind)}
        found = [casemail.parse(m.raw) for m in self.sink.messages]
        return [m for m in found if m["Message-ID"] in ids]

    def cli(self, *args: str) -> int:
        return main([*args, "-c", str(self.config)])


def gateway_for(tmp_path: Path, sink: SmtpSink, **outbound: Any) -> Iterator[Gateway]:
    config = write_config(tmp_path / "mg.toml", f"sqlite:///{tmp_path / 'mg.db'}", sink.port, **outbound)
    clock = FixedClock(NOW)
    app = build_app(load_settings(config), clock=clock)
    try:
        yield Gateway(app, clock, config, sink)
    finally:
        app.close()


@pytest.fixture
def relay() -> Iterator[SmtpSink]:
    sink = SmtpSink(size_limit=POSTFIX_DEFAULT).start()
    try:
        yield sink
    finally:
        sink.stop()


@pytest.fixture
def gw(tmp_path: Path, relay: SmtpSink) -> Iterator[Gateway]:
    # The configured cap is generous: only the relay's SIZE keeps the original out.
    yield from gateway_for(tmp_path, relay, staff_attachment_max_bytes=30_000_000)


def declaration_with(data: bytes, filename: str, n: int = 1) -> bytes:
    msg = EmailMessage(policy=policy.SMTP)
    msg["From"] = DECLARANT
    msg["To"] = "ssi-ara@ars.test"
    msg["Subject"] = f"Déclaration d'incident {n}"
    msg["Message-ID"] = f"<big-{n}@chu.test>"
    msg["Date"] = format_datetime(NOW)
    msg.set_content("Bonjour,\n\nNuméro FINESS : 690781810\nNom de la structure : Centre hospitalier\n"
                    "Type d'incident : rançongiciel\nGravité : grave\n"
                    "Serveurs chiffrés depuis ce matin ; journal des chiffrements joint.\n")
    msg.add_attachment(data, maintype="application", subtype="octet-stream", filename=filename)
    return msg.as_bytes()


def text(msg: EmailMessage) -> str:
    body = msg.get_body(("plain",))
    assert body is not None
    return str(body.get_content())


def addressed(msg: EmailMessage) -> list[str]:
    """The addresses of a message's To (mail to staff is one message to every agent)."""
    return sorted(a.strip() for a in str(msg["To"]).split(","))


def attachments(msg: EmailMessage) -> list[str]:
    return [str(part.get_filename()) for part in msg.iter_attachments()]


def test_nine_megabytes_behind_a_ten_megabyte_relay(gw: Gateway, tmp_path: Path,
                                                    capsysbinary: pytest.CaptureFixture[bytes]) -> None:
    payload = os.urandom(9 * 1024 * 1024)
    raw = declaration_with(payload, "journal-chiffrement.bin")
    assert len(raw) > POSTFIX_DEFAULT  # base64: 9 MB of file is 12 MB of mail
    result = gw.feed(raw)
    assert result.status == "processed" and result.case_ref, result
    ref = result.case_ref

    flushed = gw.flush()
    assert flushed.failed == 0 and flushed.expired == 0, flushed.summary()

    notices = gw.received("notification_equipe")
    # One message to both agents (one transaction, a RCPT each): both delivered.
    assert [addressed(m) for m in notices] == [[AGENT, REFERENT]]
    assert sorted(r for m in gw.sink.messages for r in m.rcpt_tos if r in (AGENT, REFERENT)) == [AGENT, REFERENT]
    for notice in notices:
        assert attachments(notice) == []  # summarised, not attached
        body = text(notice)
        assert "n'est pas joint" in body
        assert "journal-chiffrement.bin" in body
        assert hashlib.sha256(payload).hexdigest() in body  # the file's hash, to compare
        assert hashlib.sha256(raw).hexdigest() in body
        assert f"#original {ref}" in body and f"mailgateway cases original {ref}" in body
    acknowledgements = [m for m in gw.sink.messages_to(DECLARANT)]
    assert len(acknowledgements) == 1  # the hospital is told, and now so are the staff
    with gw.app.factory() as s:
        limit = s.get(RelayLimit, f"127.0.0.1:{gw.sink.port}")
        assert limit is not None and limit.size_bytes == POSTFIX_DEFAULT  # remembered from EHLO

    # By mail: the original does not fit the relay, so the summary and the server command come back.
    notification = gw.rows("notification_equipe")[0]
    asked = gw.feed(casemail.staff_mail(f"#original {ref}", in_reply_to=notification.message_id,
                                        subject=f"RE: [{ref}] Nouvelle déclaration", date=NOW))
    assert asked.status == "processed", asked
    assert gw.flush().failed == 0
    (answer,) = gw.received("message_original")
    assert str(answer["To"]) == AGENT and attachments(answer) == []
    body = text(answer)
    assert hashlib.sha256(payload).hexdigest() in body and "journal-chiffrement.bin" in body
    assert f"mailgateway cases original {ref}" in body
    receipt = text(gw.received("recu_commandes")[-1])
    assert "trop volumineux pour le relais" in receipt

    # On the command line: byte for byte, to stdout and to a file.
    capsysbinary.readouterr()
    assert gw.cli("cases", "original", ref) == 0
    assert capsysbinary.readouterr().out == raw
    out = tmp_path / "original.eml"
    assert gw.cli("cases", "original", ref, "--output", str(out)) == 0
    assert out.read_bytes() == raw and (out.stat().st_mode & 0o777) == 0o600
    assert gw.cli("cases", "original", "SSI-ARA-2026-0999") == 2


def test_the_advertised_size_decides_what_is_attached(tmp_path: Path) -> None:
    with SmtpSink(size_limit=400_000) as sink:
        for g in gateway_for(tmp_path, sink, staff_attachment_max_bytes=30_000_000):
            first = g.feed(declaration_with(os.urandom(1000), "petit.txt", n=1))
            assert first.case_ref
            assert g.flush().failed == 0  # the relay said SIZE 400000: remembered
            small = g.feed(declaration_with(os.urandom(100_000), "moyen.bin", n=2))
            large = g.feed(declaration_with(os.urandom(300_000), "gros.bin", n=3))
            assert g.flush().failed == 0
            by_subject = {str(m["Subject"]): m for m in g.received("notification_equipe") if AGENT in addressed(m)}
            assert len(by_subject) == 3
            attached = {ref: any(ref in subject and attachments(m) for subject, m in by_subject.items())
                        for ref in (first.case_ref, small.case_ref, large.case_ref)}
            assert attached == {first.case_ref: True, small.case_ref: True, large.case_ref: False}

            # #original of a case whose original fits: attached, whatever the notification cap.
            notification = [r for r in g.rows("notification_equipe") if r.recipient == AGENT][1]
            g.feed(casemail.staff_mail(f"#original {small.case_ref}", in_reply_to=notification.message_id,
                                       subject=f"RE: [{small.case_ref}] Nouvelle déclaration", date=NOW))
            g.flush()
            (answer,) = g.received("message_original")
            assert attachments(answer) == ["message-original.eml"]


def scrape(metrics: Metrics) -> dict[str, float]:
    body, _ = metrics.render()
    return {s.name: s.value for fam in text_string_to_metric_families(body.decode()) for s in fam.samples}


def test_a_staff_mail_refused_for_good_is_seen(gw: Gateway, capsys: pytest.CaptureFixture[str]) -> None:
    assert gw.cli("status") == 0
    capsys.readouterr()
    gw.sink.fail(AGENT, code=550, message="5.1.1 mailbox unavailable", stage="rcpt")
    ref = gw.feed(casemail.declaration(1)).case_ref
    result = gw.flush()
    assert result.failed == 1  # the agent's notification; the referent's went through

    # status: non-zero, and says what and to whom
    assert gw.cli("status") == 1
    out = capsys.readouterr().out
    assert "Courriels aux agents non remis : 1" in out
    assert AGENT in out and ref in out and "550" in out
    assert gw.cli("status", "--json") == 1
    obj = json.loads(capsys.readouterr().out)
    assert obj["staff_mail_failed"] == 1 and obj["staff_mail_failures"][0]["recipient"] == AGENT
    assert any("courriel(s) aux agents non remis" in p for p in obj["problems"])

    # /metrics
    metrics = Metrics(clock=gw.clock)
    metrics.attach_database(gw.app.factory)
    metrics.attach_settings(gw.app.settings)
    assert scrape(metrics)["mailgateway_staff_mail_failed"] == 1

    # the next digest, to the staff still reachable
    gw.sink.clear_failures()
    outcome = digest.run(gw.app, NOW + timedelta(hours=23))
    assert outcome.mails == 2
    gw.clock.at = NOW + timedelta(hours=23)
    gw.flush()
    (to_referent,) = [m for m in gw.received("synthese") if REFERENT in addressed(m)]
    body = text(to_referent)
    assert "courriels aux agents non remis : 1" in body
    assert AGENT in body and ref in body and "5.1.1" in body

    # outbox retry: the failure is dealt with, status is well again
    with gw.app.factory() as s:
        failed = s.scalar(select(OutboundMessage.id).where(OutboundMessage.status == "failed"))
    assert gw.cli("outbox", "retry", str(failed)) == 0
    capsys.readouterr()
    assert gw.cli("status") == 0
    assert scrape(metrics)["mailgateway_staff_mail_failed"] == 0


def test_the_failure_window_ends(gw: Gateway, capsys: pytest.CaptureFixture[str]) -> None:
    gw.sink.fail(AGENT, code=550, message="5.1.1 mailbox unavailable", stage="rcpt")
    gw.feed(casemail.declaration(1))
    gw.flush()
    with transaction(gw.app.factory) as s:  # a week and a day later
        for row in s.scalars(select(OutboundMessage).where(OutboundMessage.status == "failed")):
            row.next_attempt_at = NOW - timedelta(days=8)
    assert gw.cli("status") == 0
    with gw.app.factory() as s:
        assert s.scalar(select(Case.reference))


def test_a_relay_smaller_than_assumed_is_learnt_and_the_loss_is_shown(tmp_path: Path,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    """Before the relay was ever seen, 10 240 000 bytes are assumed; a relay that takes less refuses
    the first oversize notification (552): that loss is shown, and the next ones fit."""
    with SmtpSink(size_limit=400_000) as sink:
        for g in gateway_for(tmp_path, sink, staff_attachment_max_bytes=30_000_000):
            first = g.feed(declaration_with(os.urandom(300_000), "avant.bin", n=1))
            result = g.flush()
            assert result.failed == 2  # both notifications, refused by the relay: 552
            with g.app.factory() as s:
                answers = {r.last_answer for r in s.scalars(select(OutboundMessage)
                                                            .where(OutboundMessage.status == "failed"))}
            assert all(a and a.startswith("552") for a in answers), answers
            assert g.cli("status") == 1 and first.case_ref in capsys.readouterr().out

            second = g.feed(declaration_with(os.urandom(300_000), "apres.bin", n=2))
            assert g.flush().failed == 0  # learnt: summarised, delivered
            delivered = [m for m in g.received("notification_equipe") if second.case_ref in str(m["Subject"])]
            assert [addressed(m) for m in delivered] == [[AGENT, REFERENT]] and attachments(delivered[0]) == []


def test_the_transport_refuses_what_the_relay_said_it_would_not_take() -> None:
    from mailgateway.dispatch.transport import RelayPool
    from mailgateway.errors import PermanentDeliveryError
    from mailgateway.settings import RelaySettings

    small = b"From: a@ars.test\r\nTo: b@ars.test\r\nSubject: x\r\n\r\nok\r\n"

    async def scenario(pool: RelayPool) -> PermanentDeliveryError:
        await pool.send("a@ars.test", "b@ars.test", small)
        try:
            await pool.send("a@ars.test", "b@ars.test", small + b"x" * 5000 + b"\r\n")
        except PermanentDeliveryError as exc:
            return exc
        finally:
            await pool.close()
        raise AssertionError("an oversize message was sent")

    with SmtpSink(size_limit=2000) as sink:
        pool = RelayPool(RelaySettings(host="127.0.0.1", port=sink.port, local_hostname="gateway.test"))
        refusal = asyncio.run(scenario(pool))
        assert refusal.code == 552 and "5.3.4" in refusal.answer and "SIZE 2000" in refusal.answer
        assert pool.advertised == (True, 2000)
        assert len(sink.messages) == 1  # the large one never reached the relay


def test_a_weekly_report_too_large_for_the_relay_goes_without_its_charts(tmp_path: Path) -> None:
    from mailgateway.jobs import report

    with SmtpSink(size_limit=300_000) as sink:  # under the report's charts with the mail around them
        for g in gateway_for(tmp_path, sink):
            g.feed(casemail.declaration(1))
            g.flush()  # the relay's SIZE is learnt
            monday = NOW + timedelta(days=(7 - NOW.weekday()) % 7 or 7)
            assert report.run(g.app, monday.replace(hour=7, minute=10)).mails == 2
            assert g.flush().failed == 0
            reports = g.received("rapport_hebdo")
            assert [addressed(m) for m in reports] == [[AGENT, REFERENT]]  # one message, a row each
            assert all(not any(p.get_content_type() == "image/png" for p in m.walk()) for m in reports)


def test_a_declaration_too_large_for_the_relay_reaches_the_national_cell_summarised(gw: Gateway) -> None:
    """#transmettre-acss of a 9 MB declaration behind a 10 MB relay: the cell gets the mail with
    the summary (size, hashes, file names) instead of a message the relay refuses for good."""
    payload = os.urandom(9 * 1024 * 1024)
    result = gw.feed(declaration_with(payload, "journal-chiffrement.bin", n=7))
    ref = result.case_ref
    assert result.status == "processed" and ref
    assert gw.flush().failed == 0
    notification = gw.rows("notification_equipe")[0]
    gw.feed(casemail.staff_mail("#transmettre-acss Structure sensible.\n", in_reply_to=notification.message_id,
                                subject=f"RE: [{ref}] Nouvelle déclaration", date=NOW))
    flushed = gw.flush()
    assert flushed.failed == 0, flushed.summary()
    (sent,) = gw.received("transmission_acss")
    assert attachments(sent) == []
    body = text(sent)
    assert "n'est pas jointe" in body and "journal-chiffrement.bin" in body
    assert hashlib.sha256(payload).hexdigest() in body
