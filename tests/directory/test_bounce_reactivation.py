"""Establishment mailboxes are not switched off too easily, and come back (RSSI finding 1).

End to end: bulletins go out through the real sender to a loopback SMTP sink that refuses or
accepts; non-delivery reports and the establishments' and staff's mail come back through the
real pipeline. Before: one synchronous « 550 5.1.1 » at the relay marked the contact in failure
and staff read « Après des refus répétés… » after ONE refusal; an Exchange « mailbox full »
report counted as a refusal; nothing but a re-import brought a contact back (it did not either).
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import insert, select

from mailgateway.app import App, build_app
from mailgateway.bulletins.fanout import approve_bulletin, create_bulletin
from mailgateway.bulletins.tracking import permanent_failure_hook
from mailgateway.cli.commands import main
from mailgateway.clock import FixedClock
from mailgateway.dispatch.sender import Sender
from mailgateway.settings import parse_settings
from mailgateway.store.engine import transaction
from mailgateway.store.models import BulletinRecipient, Contact, ContactBounce, OutboundMessage
from tests.support import casemail
from tests.support.bulletins import fill_directory, finess
from tests.support.casegateway import NOW, Gateway, settings_data
from tests.support.db import at_head
from tests.support.servers import SmtpSink

SSI = "ssi@chu.test"  # the establishment's SSI mailbox, on a domain whose DKIM key is published
FULL_NDR = Path(__file__).resolve().parents[1] / "data" / "bounces" / "exchange-fr-remise-echouee.eml"


@pytest.fixture
def gw(sqlite_url: str, smtp_sink: SmtpSink) -> Iterator[Gateway]:
    data = settings_data(at_head(sqlite_url))
    data["relay"] = {"host": "127.0.0.1", "port": smtp_sink.port, "retry_base_seconds": 1.0,
                     "retry_max_seconds": 2.0}
    clock = FixedClock(NOW)
    app = build_app(parse_settings(data), clock=clock)
    with transaction(app.factory) as s:
        fill_directory(s, NOW, 1, roles=("rssi",))  # Laboratoire numéro 0, rssi@e0.test
        s.execute(insert(Contact), [{"finess": finess(0), "address": SSI, "role": "ssi", "status": "active",
                                     "bounce_score": 0.0, "created_at": NOW, "updated_at": NOW}])
    try:
        yield Gateway(app, clock)
    finally:
        app.close()


def bulletin(gw: Gateway, subject: str = "Hameçonnage") -> int:
    app = gw.app
    with transaction(app.factory) as s:
        made = create_bulletin(s, app.settings, region="ARA", target="category=LBM", subject=subject,
                               body="Texte", tlp="GREEN", author="agent@ars.test", now=NOW)
        approve_bulletin(app.env, s, made.id, "agent@ars.test")
        bulletin_id: int = made.id
    flush(app)
    return bulletin_id


def flush(app: App) -> None:
    sender = Sender(app.settings, app.factory, app.clock, "test", on_permanent_failure=permanent_failure_hook(app.env))
    asyncio.run(sender.flush(include_backoff=True))


def status(gw: Gateway, address: str = SSI) -> str:
    with gw.app.factory() as s:
        contact = s.scalar(select(Contact).where(Contact.address == address))
        assert contact is not None
        return contact.status


def tasks(gw: Gateway) -> list[str]:
    return [" ".join(casemail.text_of(r.raw).split()) for r in gw.outbound("contact_a_corriger", "agent@ars.test")]


def bounce_out(gw: Gateway, smtp_sink: SmtpSink) -> None:
    """Two bulletins refused by the relay (« 550 5.1.1 ») on two distinct messages."""
    smtp_sink.fail(SSI, code=550, message="5.1.1 <ssi@chu.test>: Recipient address rejected: User unknown")
    bulletin(gw, "Premier")
    bulletin(gw, "Second")
    smtp_sink.clear_failures()
    assert status(gw) == "bouncing"


def test_one_relay_refusal_is_one_refusal_and_the_wording_says_so(gw: Gateway, smtp_sink: SmtpSink) -> None:
    smtp_sink.fail(SSI, code=550, message="5.1.1 <ssi@chu.test>: Recipient address rejected: User unknown")
    bulletin(gw, "Premier")
    assert status(gw) == "active"  # bounce_min_messages = 2
    [first] = tasks(gw)
    assert "Refus permanent reçu : l'adresse reste utilisée ; elle sera désactivée au prochain refus" in first
    assert "refus répétés" not in first and "désormais marqué en échec" not in first
    assert "rssi@e0.test" in first  # the bulletin went on to the next contact
    bulletin(gw, "Second")
    assert status(gw) == "bouncing"
    second = tasks(gw)[-1]
    assert ("Après des refus permanents sur 2 messages distincts, le contact est désormais marqué en échec : "
            "l'adresse est désactivée") in second
    assert f"#reactiver {SSI}" in second


def _full_mailbox_report(gw: Gateway, bulletin_id: int) -> None:
    with gw.app.factory() as s:
        row = s.scalar(select(OutboundMessage).where(OutboundMessage.recipient == SSI,
                                                     OutboundMessage.bulletin_id == bulletin_id))
        assert row is not None
        verp, mid = row.mail_from, row.message_id
    raw = FULL_NDR.read_bytes().replace(b"%VERP%", verp.encode()).replace(b"%RCPT%", SSI.encode()).replace(
        b"%MID%", mid.encode())
    result = gw.feed(raw)
    assert result.kind == "bounce" and result.status == "processed", result


def test_a_full_mailbox_is_a_soft_bounce(gw: Gateway) -> None:
    for n in range(3):
        _full_mailbox_report(gw, bulletin(gw, f"Bulletin {n}"))
    assert status(gw) == "active"
    assert not tasks(gw)  # nobody is asked to correct a mailbox that exists
    with gw.app.factory() as s:
        recorded = list(s.scalars(select(ContactBounce)))
        statuses = {r.status for r in s.scalars(select(BulletinRecipient).where(BulletinRecipient.address == SSI))}
    assert len(recorded) == 3 and not any(b.permanent for b in recorded)
    assert "bounced" not in statuses


def test_a_full_mailbox_answered_by_the_relay_is_soft_too(gw: Gateway, smtp_sink: SmtpSink) -> None:
    smtp_sink.fail(SSI, code=552, message="5.2.2 Mailbox full: quota exceeded")
    bulletin(gw, "Premier")
    bulletin(gw, "Second")
    assert status(gw) == "active" and not tasks(gw)


EXPANDED = """From: MAILER-DAEMON@mx.chu.test (Mail Delivery System)
To: {verp}
Subject: Undelivered Mail Returned to Sender
Message-ID: <ndr-fwd-{n}@mx.chu.test>
Date: Fri, 27 Nov 2026 10:00:00 +0100
Auto-Submitted: auto-replied
MIME-Version: 1.0
Content-Type: multipart/report; report-type=delivery-status; boundary="P"

--P
Content-Type: text/plain

This is the mail system at host mx.chu.test.

I'm sorry to have to inform you that your message could not
be delivered to one or more recipients.

<claire.martin@perso-mail.test> (expanded from <rssi@chu.test>): host
    mx.perso-mail.test said: 550 5.1.1 <claire.martin@perso-mail.test>: User unknown

--P
Content-Type: message/delivery-status

Reporting-MTA: dns; mx.chu.test

Final-Recipient: rfc822; claire.martin@perso-mail.test
Original-Recipient: rfc822;ssi@chu.test
Action: failed
Status: 5.1.1
Diagnostic-Code: smtp; 550 5.1.1 <claire.martin@perso-mail.test>: User unknown

--P
Content-Type: text/rfc822-headers

From: ssi-ara@ars.test
To: ssi@chu.test
Message-ID: {mid}
Subject: Bulletin

--P--
"""


def test_a_broken_personal_forward_counts_as_one_refusal_and_staff_see_its_diagnostic(gw: Gateway) -> None:
    for n in range(2):
        bulletin_id = bulletin(gw, f"Bulletin {n}")
        with gw.app.factory() as s:
            row = s.scalar(select(OutboundMessage).where(OutboundMessage.recipient == SSI,
                                                         OutboundMessage.bulletin_id == bulletin_id))
            assert row is not None
            raw = EXPANDED.format(verp=row.mail_from, mid=row.message_id, n=n).replace("\n", "\r\n").encode()
        gw.feed(raw)
        gw.feed(raw.replace(b"<ndr-fwd-", b"<ndr-fwd-again-"))  # the same report twice: one delivery
        assert status(gw) == ("active" if n == 0 else "bouncing")
    [task] = tasks(gw)
    assert "claire.martin@perso-mail.test" in task


def _reply_from_ssi(gw: Gateway, body: str, *, signed: bool, date: datetime | None = None) -> Any:
    relay = gw.last("bulletin", SSI)
    raw = casemail.message(sender=SSI, to="ssi-ara@ars.test", subject="RE: Bulletin", body=body,
                           in_reply_to=relay.message_id, date=date or gw.clock.now())
    return gw.feed(casemail.sign(raw, casemail.establishment_key()) if signed else raw)


def test_authenticated_mail_from_the_address_reactivates_it(gw: Gateway, smtp_sink: SmtpSink) -> None:
    bounce_out(gw, smtp_sink)
    _reply_from_ssi(gw, "#lu\n", signed=False)
    assert status(gw) == "bouncing"  # a From header proves nothing
    gw.clock.advance(minutes=5)
    _reply_from_ssi(gw, "#lu\n", signed=True)
    assert status(gw) == "active"
    with gw.app.factory() as s:
        contact = s.scalar(select(Contact).where(Contact.address == SSI))
        assert contact is not None and contact.bounce_score == 0.0
    # Its counted refusals are cleared: one new refusal is again only one.
    smtp_sink.fail(SSI, code=550, message="5.1.1 User unknown")
    bulletin(gw, "Troisième")
    assert status(gw) == "active"


def test_signed_mail_written_before_the_refusals_reactivates_nothing(gw: Gateway, smtp_sink: SmtpSink) -> None:
    """An outside tester replayed a genuine signed mail ten days old behind one more
    ``Received:`` line: the bouncing contact came back, and bulletins would go on to a dead
    mailbox. Only mail written after the last refusal proves the mailbox lives again."""
    bounce_out(gw, smtp_sink)
    gw.clock.advance(minutes=5)
    old = gw.clock.now() - timedelta(days=10)
    _reply_from_ssi(gw, "#lu\n", signed=True, date=old)
    assert status(gw) == "bouncing"
    # Undated: proves nothing either.
    relay = gw.last("bulletin", SSI)
    raw = casemail.message(sender=SSI, to="ssi-ara@ars.test", subject="RE: Bulletin", body="#lu\n",
                           in_reply_to=relay.message_id)
    undated = re.sub(rb"Date: [^\r]*\r\n", b"", raw, count=1)
    gw.feed(casemail.sign(undated, casemail.establishment_key()))
    assert status(gw) == "bouncing"
    _reply_from_ssi(gw, "#lu\n", signed=True)
    assert status(gw) == "active"


def test_staff_reactivate_by_mail(gw: Gateway, smtp_sink: SmtpSink) -> None:
    bounce_out(gw, smtp_sink)
    gw.feed(casemail.staff_mail("#reactiver inconnu@nulle-part.test\n", subject="Annuaire"))
    assert "inconnu@nulle-part.test ne figure pas dans l'annuaire" in gw.receipt_text()
    assert status(gw) == "bouncing"
    gw.feed(casemail.staff_mail(f"#réactiver {SSI}\n", subject="Annuaire"))
    assert f"contact {SSI} réactivé (1 établissement)" in gw.receipt_text()
    assert status(gw) == "active"


def test_reactivate_on_the_command_line(gw: Gateway, smtp_sink: SmtpSink, tmp_path: Path, sqlite_url: str,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    bounce_out(gw, smtp_sink)
    config = tmp_path / "mailgateway.toml"
    config.write_text(f'[database]\nurl = "{sqlite_url}"\n\n[[regions]]\ncode = "ARA"\n'
                      'name = "Auvergne-Rhône-Alpes"\naddress = "ssi-ara@ars.test"\n', encoding="utf-8")
    assert main(["directory", "reactivate", "inconnu@nulle-part.test", "-c", str(config)]) == 2
    assert "adresse inconnue" in capsys.readouterr().err
    assert main(["directory", "reactivate", SSI.upper(), "-c", str(config)]) == 0
    assert f"contact {SSI} réactivé" in capsys.readouterr().out
    assert status(gw) == "active"


def test_a_preview_reaching_nobody_because_contacts_are_off_says_so(gw: Gateway, smtp_sink: SmtpSink) -> None:
    bounce_out(gw, smtp_sink)
    with transaction(gw.app.factory) as s:
        contact = s.scalar(select(Contact).where(Contact.address == "rssi@e0.test"))
        assert contact is not None
        contact.status = "bouncing"
    gw.feed(casemail.staff_mail("#cible categorie=LBM\n\nNe cliquez pas.\n", subject="#bulletin Hameçonnage"))
    preview = casemail.text_of(gw.last("bulletin_apercu", "agent@ars.test").raw)
    text = " ".join(preview.split())
    assert ("1 établissement ciblé sans adresse active : contacts désactivés après des refus — "
            "#reactiver <adresse>") in text
    assert re.search(r"rssi@e0\.test, ssi@chu\.test", text)
    assert "vérifiez la ligne #cible" not in text


def test_a_contacts_import_listing_the_address_as_active_reactivates_it(
        gw: Gateway, smtp_sink: SmtpSink, tmp_path: Path, sqlite_url: str,
        capsys: pytest.CaptureFixture[str]) -> None:
    bounce_out(gw, smtp_sink)
    config = tmp_path / "mailgateway.toml"
    config.write_text(f'[database]\nurl = "{sqlite_url}"\n\n[[regions]]\ncode = "ARA"\n'
                      'name = "Auvergne-Rhône-Alpes"\naddress = "ssi-ara@ars.test"\n', encoding="utf-8")
    plain = tmp_path / "contacts.csv"
    plain.write_text(f"finess;email;role\n{finess(0)};{SSI};ssi\n", encoding="utf-8")
    assert main(["directory", "import", "--kind", "contacts", str(plain), "-c", str(config)]) == 0
    assert "réactivés" not in capsys.readouterr().out
    assert status(gw) == "bouncing"  # a mere re-listing never resets a status
    listed = tmp_path / "contacts-actifs.csv"
    listed.write_text(f"finess;email;role;statut\n{finess(0)};{SSI};ssi;actif\n", encoding="utf-8")
    assert main(["directory", "import", "--kind", "contacts", str(listed), "-c", str(config)]) == 0
    assert "réactivés : 1" in capsys.readouterr().out
    assert status(gw) == "active"
    wrong = tmp_path / "contacts-faux.csv"
    wrong.write_text(f"finess;email;role;statut\n{finess(0)};{SSI};ssi;peut-être\n", encoding="utf-8")
    assert main(["directory", "import", "--kind", "contacts", str(wrong), "-c", str(config)]) == 2
    assert "statut inconnu « peut-être »" in capsys.readouterr().err
