"""A bulletin by mail, end to end through the real daemon: request, preview, #diffuser, #confirmer."""

from __future__ import annotations

import email
import email.policy
import email.utils
import re
from email.message import EmailMessage
from pathlib import Path

from sqlalchemy.orm import Session

from mailgateway.store.engine import make_engine
from tests.support.bulletins import fill_directory
from tests.support.dkim import dkimpy_sign, rsa_key, zone
from tests.support.gateway import GatewayConfig, RunningGateway, wait_until
from tests.support.servers import ReceivedMessage, SmtpSink

STAFF_KEY = rsa_key("staff", "ars.test")


def staff_mail(subject: str, body: str, n: int, in_reply_to: str | None = None, sign: bool = True) -> bytes:
    raw = (
        f"From: Agent SSI <agent@ars.test>\r\nTo: ssi-pdl@ars.test\r\nSubject: {subject}\r\n"
        f"Message-ID: <staff-{n}@ars.test>\r\nDate: {email.utils.formatdate(localtime=True)}\r\n"
        + (f"In-Reply-To: {in_reply_to}\r\nReferences: {in_reply_to}\r\n" if in_reply_to else "")
        + "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n" + body.replace("\n", "\r\n")
    ).encode()
    # What steers the mail (threading, Date) is signed, as staff mail clients do (docs/guarantees.md).
    signed = ("from", "to", "subject", "date", "message-id", "in-reply-to", "references", "content-type")
    return dkimpy_sign(raw, STAFF_KEY, headers=signed) + raw if sign else raw


def parsed(m: ReceivedMessage) -> EmailMessage:
    msg = email.message_from_bytes(m.raw, policy=email.policy.default)
    assert isinstance(msg, EmailMessage)
    return msg


def text_of(m: ReceivedMessage) -> str:
    body = parsed(m).get_body(("plain",))
    assert body is not None
    return str(body.get_content())


def to_staff(sink: SmtpSink, marker: str) -> ReceivedMessage:
    def find() -> ReceivedMessage | None:
        for m in sink.messages_to("agent@ars.test"):
            if marker in str(parsed(m)["Subject"]):
                return m
        return None

    found: ReceivedMessage = wait_until(find, timeout=20)
    return found


def test_bulletin_by_mail_preview_approval_and_delivery(tmp_path: Path, smtp_sink: SmtpSink) -> None:
    config = GatewayConfig(tmp_path / "gw", relay_port=smtp_sink.port, static_keys=zone(STAFF_KEY))
    config.cli("db", "upgrade")
    engine = make_engine(f"sqlite:///{config.db_path}")
    with Session(engine) as s, s.begin():
        from datetime import UTC, datetime

        fill_directory(s, datetime(2026, 11, 27, tzinfo=UTC), 3, departement="44", region="PDL")
        fill_directory(s, datetime(2026, 11, 27, tzinfo=UTC), 2, departement="44", category="ESMS", start=10,
                       region="PDL")
    engine.dispose()
    with RunningGateway(config) as gateway:
        # Unauthenticated: refused with an explanation, nothing created.
        gateway.send(staff_mail("#bulletin Faux", "#cible categorie=LBM\nTexte.\n", 0, sign=False),
                     mail_from="agent@ars.test")
        refusal = to_staff(smtp_sink, "refusé")
        assert "non authentifié" in text_of(refusal)

        gateway.send(staff_mail("#bulletin Campagne d'hameçonnage", "#cible categorie=LBM departement=44\n"
                                "Une campagne vise les laboratoires.\nNe cliquez pas.\n", 1),
                     mail_from="agent@ars.test")
        preview = to_staff(smtp_sink, "Aperçu")
        text = text_of(preview)
        assert "Destinataires : 3 établissements" in text and "Laboratoire numéro 0" in text
        assert "#diffuser" in text and "Ne cliquez pas." in text
        assert not smtp_sink.messages_to("ssi@e0.test")  # nothing goes out before approval

        gateway.send(staff_mail("RE: Aperçu", "#diffuser\n", 2, in_reply_to=str(parsed(preview)["Message-ID"])),
                     mail_from="agent@ars.test")
        confirmation = to_staff(smtp_sink, "Confirmation")
        match = re.search(r"#confirmer ([0-9a-f]+)", text_of(confirmation))
        assert match is not None
        gateway.send(staff_mail("RE: Confirmation", f"#confirmer {match.group(1)}\n", 3,
                                in_reply_to=str(parsed(confirmation)["Message-ID"])), mail_from="agent@ars.test")
        to_staff(smtp_sink, "diffusé")
        wait_until(lambda: all(smtp_sink.messages_to(f"ssi@e{n}.test") for n in range(3)), timeout=20)
        assert not smtp_sink.messages_to("ssi@e10.test")  # ESMS is not targeted
        bulletin = parsed(smtp_sink.messages_to("ssi@e1.test")[0])
        assert "Laboratoire numéro 1" in str(bulletin.get_body(("plain",)).get_content())  # type: ignore[union-attr]
        status = wait_until(lambda: (s := config.cli_json("bulletin", "status", "1"))["delivered"] == 3 and s,
                            timeout=20)
        assert status["recipients"] == 3 and status["pending"] == 0 and status["bounced"] == 0
    assert gateway.proc.returncode == 0
