"""Budgets (docs/guarantees.md), reproduced from outside: SMTP into the real daemon, mail out at a real SMTP sink.

1. An anonymous declaration naming a victim (Reply-To, « Courriel du déclarant ») with a phishing
   subject, structure name and text: the acknowledgement, DKIM-signed by the agency, reaches the
   victim — it must carry nothing of the attacker's words.
2. An outsider writes « #statut REF » (or a reply) about a closed case: it stays closed.
3. PDL staff, authenticated, answer the preview of an ARA bulletin with #diffuser: no token, no
   broadcast; the ARA bulletin is still a draft.
"""

from __future__ import annotations

import email
import email.policy
import re
import sqlite3
from datetime import UTC, datetime
from email.message import EmailMessage
from pathlib import Path

from sqlalchemy.orm import Session

from mailgateway.store.engine import make_engine
from tests.support import casemail
from tests.support.bulletins import fill_directory
from tests.support.gateway import GatewayConfig, RunningGateway, wait_until
from tests.support.servers import ReceivedMessage, SmtpSink

YEAR = datetime.now().year

HOSTILE = """\
From: Service Client <dsi@chu-nantes.test>
Reply-To: victime@autre.test
To: ssi-pdl@ars.test
Subject: =?utf-8?q?D=C3=A9claration_d=27incident_:_COMPTE_SUSPENDU_http://phish.test/a?=
Message-ID: <hostile-{n}@chu-nantes.test>
Date: {date}
MIME-Version: 1.0
Content-Type: text/plain; charset=utf-8

Numéro FINESS : 440000289
Nom de la structure : Banque Sécurisée, rendez-vous sur http://phish.test/b
Type d'incident : rançongiciel
Courriel du déclarant : victime@autre.test

Réactivez votre compte sur http://phish.test/c avant ce soir.
"""


def hostile(n: int) -> bytes:
    date = datetime.now(UTC).strftime("%a, %d %b %Y %H:%M:%S +0000")
    return HOSTILE.format(n=n, date=date).replace("\n", "\r\n").encode()


def parsed(m: ReceivedMessage) -> EmailMessage:
    msg = email.message_from_bytes(m.raw, policy=email.policy.default)
    assert isinstance(msg, EmailMessage)
    return msg


def readable(m: ReceivedMessage) -> str:
    msg = parsed(m)
    parts = [str(msg["Subject"])]
    parts += [str(p.get_content()) for p in msg.walk() if p.get_content_maintype() == "text"]
    return "\n".join(parts)


def first_to(sink: SmtpSink, address: str, marker: str = "") -> ReceivedMessage:
    def find() -> ReceivedMessage | None:
        return next((m for m in sink.messages_to(address) if marker in str(parsed(m)["Subject"])), None)

    found: ReceivedMessage = wait_until(find, timeout=20)
    return found


def staff(sender: str, to: str, subject: str, body: str, in_reply_to: str | None = None) -> bytes:
    return casemail.staff_mail(body, sender=sender, to=to, subject=subject, in_reply_to=in_reply_to,
                               date=datetime.now(UTC))


def test_budget_attacks_against_the_daemon(tmp_path: Path, smtp_sink: SmtpSink) -> None:
    config = GatewayConfig(tmp_path / "gw", relay_port=smtp_sink.port, static_keys=casemail.staff_keys(),
                           staff=(("agent@ars.test", "PDL", "agent"), ("agent-ara@ars.test", "ARA", "agent")))
    config.cli("db", "upgrade")
    engine = make_engine(f"sqlite:///{config.db_path}")
    with Session(engine) as s, s.begin():
        fill_directory(s, datetime(2026, 11, 27, tzinfo=UTC), 2, departement="69", region="ARA")
    engine.dispose()
    ref = f"SSI-PDL-{YEAR}-0001"
    with RunningGateway(config) as gateway:
        # 1. The signed acknowledgement reaches the (unauthenticated) From with nothing of the attacker's
        # text; the victim named by Reply-To and « Courriel du déclarant » — a person's mail, not a
        # robot's notification — gets nothing at all.
        gateway.send(hostile(1), mail_from="dsi@chu-nantes.test")
        ack = first_to(smtp_sink, "dsi@chu-nantes.test")
        assert smtp_sink.messages_to("victime@autre.test") == []
        seen = readable(ack)
        assert ref in seen and "rançongiciel" in seen
        for echo in ("phish.test", "SUSPENDU", "Banque", "Réactivez"):
            assert echo not in seen, echo
        assert "DKIM-Signature" in parsed(ack)

        # 2. Staff close the case; an outsider's « #statut REF » and reply leave it closed.
        notification = parsed(first_to(smtp_sink, "agent@ars.test", "Nouvelle déclaration"))
        gateway.send(staff("agent@ars.test", "ssi-pdl@ars.test", f"RE: {notification['Subject']}",
                           "#qualifier significatif\n#clore\n", str(notification["Message-ID"])),
                     mail_from="agent@ars.test")
        wait_until(lambda: config.cli_json("cases", "show", ref)["status"] == "CLOS", timeout=20)
        gateway.send(casemail.message(sender="intrus@autre.test", to="ssi-pdl@ars.test", subject=f"#statut {ref}",
                                      body="\n"), mail_from="intrus@autre.test")
        gateway.send(casemail.message(sender="dsi@chu-nantes.test", to="ssi-pdl@ars.test", subject=f"RE: [{ref}]",
                                      body="Rouvrez.\n"), mail_from="dsi@chu-nantes.test")
        wait_until(lambda: any(e["type"] == "reouverture_refusee"
                               for e in config.cli_json("cases", "show", ref)["timeline"]), timeout=20)
        assert config.cli_json("cases", "show", ref)["status"] == "CLOS"

        # 3. PDL staff cannot push an ARA bulletin out.
        gateway.send(staff("agent-ara@ars.test", "ssi-ara@ars.test", "#bulletin Campagne ARA",
                           "#cible categorie=LBM\nTexte ARA.\n"), to=("ssi-ara@ars.test",),
                     mail_from="agent-ara@ars.test")
        preview = first_to(smtp_sink, "agent-ara@ars.test", "Aperçu")
        gateway.send(staff("agent@ars.test", "ssi-pdl@ars.test", "RE: Aperçu", "#diffuser\n",
                           str(parsed(preview)["Message-ID"])), mail_from="agent@ars.test")
        refusal = first_to(smtp_sink, "agent@ars.test", "Commande refusée")
        assert "région ARA" in readable(refusal)
        assert not any(re.search(r"#confirmer [0-9a-f]{12}", readable(m)) for m in smtp_sink.messages_to(
            "agent@ars.test"))
        with sqlite3.connect(config.db_path) as db:
            assert db.execute("SELECT region, status FROM bulletins").fetchall() == [("ARA", "draft")]
    assert gateway.proc.returncode == 0
