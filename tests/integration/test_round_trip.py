"""First round-trip: a declaration mailed in becomes a case and the declarant gets a
signed, threaded French acknowledgement — through the real daemon, a real relay, real SMTP."""

from __future__ import annotations

import email
import json
import smtplib
from datetime import datetime
from email import policy
from pathlib import Path

import dkim
import pytest

from tests.support.gateway import DECLARATION, GatewayConfig, RunningGateway, wait_until
from tests.support.servers import SmtpSink

YEAR = datetime.now().year


PORTAL = """\
From: Portail de signalement <ne-pas-repondre@signalement.test>
To: ssi-pdl@ars.test
Subject: Nouveau signalement d'incident de sécurité des systèmes d'information
Message-ID: <portal-77@signalement.test>
Date: Fri, 27 Nov 2026 10:00:00 +0100
MIME-Version: 1.0
Content-Type: text/plain; charset=utf-8
Content-Transfer-Encoding: 8bit

Un nouvel incident a été déclaré sur le portail.

Numéro FINESS : 490000031
Nom de la structure : Centre hospitalier de Cholet
Courriel du déclarant : rssi@ch-cholet.test
Type d'incident : Hameçonnage
Date de détection : 26/11/2026 à 17h05
"""


def _message(raw: bytes) -> email.message.EmailMessage:
    return email.message_from_bytes(raw, policy=policy.default)  # type: ignore[return-value]


@pytest.fixture
def gateway(tmp_path: Path, smtp_sink: SmtpSink) -> RunningGateway:
    config = GatewayConfig(tmp_path / "gw", relay_port=smtp_sink.port)
    with RunningGateway(config) as gw:
        yield gw


def test_declaration_by_smtp_gets_signed_threaded_french_acknowledgement(
    gateway: RunningGateway, smtp_sink: SmtpSink
) -> None:
    gateway.send(DECLARATION.encode(), mail_from="dsi@chu-nantes.test")
    ack = wait_until(lambda: smtp_sink.messages_to("dsi@chu-nantes.test"), timeout=10)[0]
    msg = _message(ack.raw)
    ref = f"SSI-PDL-{YEAR}-0001"
    assert f"[{ref}]" in msg["Subject"]
    assert "Accusé de réception" in msg["Subject"]
    assert msg["In-Reply-To"] == "<decl-1@chu-nantes.test>"
    assert "<decl-1@chu-nantes.test>" in msg["References"]
    assert msg["Auto-Submitted"] == "auto-replied"
    assert msg.get_content_type() in ("multipart/alternative", "multipart/mixed")
    text = msg.get_body(("plain",)).get_content()
    html = msg.get_body(("html",)).get_content()
    assert ref in text and ref in html
    assert "ssi-pdl@ars.test" in text  # how to reach the handling service
    assert "répondez" in text.lower()  # how to reply
    assert "27/11/2026" in text or str(YEAR) in text  # date received
    # The envelope sender is a VERP return path, so a bounce names its message exactly.
    assert ack.mail_from.startswith("bounces+") and ack.mail_from.endswith("@ars.test")
    zone = {f"{k}.": v.encode() for k, v in gateway.config.dkim_zone.items()}
    assert dkim.verify(ack.raw, dnsfunc=lambda name, timeout=5: zone.get(
        name.decode() if isinstance(name, bytes) else name))

    cases = gateway.config.cli_json("cases", "list")
    assert [c["reference"] for c in cases] == [ref]
    assert cases[0]["finess"] == "440000289"
    assert cases[0]["declarant"] == "dsi@chu-nantes.test"
    detail = gateway.config.cli_json("cases", "show", ref)
    types = [e["type"] for e in detail["timeline"]]
    assert types[0] == "message_recu"
    assert "mail_sortant" in types
    assert gateway.config.cli("cases", "verify").returncode == 0


def test_portal_notification_is_acknowledged_to_the_declarant_not_the_no_reply_sender(
    gateway: RunningGateway, smtp_sink: SmtpSink
) -> None:
    gateway.send(PORTAL.encode(), mail_from="ne-pas-repondre@signalement.test")
    ack = wait_until(lambda: smtp_sink.messages_to("rssi@ch-cholet.test"), timeout=10)[0]
    assert "Accusé de réception" in _message(ack.raw)["Subject"]
    # Staff are notified too; nothing ever goes to the portal's no-reply address.
    wait_until(lambda: smtp_sink.messages_to("referent@ars.test"), timeout=10)
    assert smtp_sink.messages_to("ne-pas-repondre@signalement.test") == []


def test_same_message_twice_is_one_case_and_one_acknowledgement(
    gateway: RunningGateway, smtp_sink: SmtpSink
) -> None:
    gateway.send(DECLARATION.encode())
    gateway.send(DECLARATION.encode())
    wait_until(lambda: smtp_sink.messages_to("dsi@chu-nantes.test"), timeout=10)
    wait_until(lambda: smtp_sink.messages_to("agent@ars.test"), timeout=10)
    assert len(gateway.config.cli_json("cases", "list")) == 1
    assert len(smtp_sink.messages_to("dsi@chu-nantes.test")) == 1


def test_unknown_recipient_is_refused_at_rcpt(gateway: RunningGateway) -> None:
    with smtplib.SMTP("127.0.0.1", gateway.config.smtp_port, local_hostname="client.test") as s:
        s.ehlo()
        s.mail("dsi@chu-nantes.test")
        code, answer = s.rcpt("personne@ars.test")
    assert code == 550 and b"5.1.1" in answer


def test_too_large_message_is_refused_with_552(gateway: RunningGateway) -> None:
    big = DECLARATION.encode() + b"x" * 80 + (b"\r\n" + b"y" * 76) * 15000  # > 1 MiB configured
    with pytest.raises(smtplib.SMTPResponseException) as err:
        gateway.send(big)
    assert err.value.smtp_code == 552


def test_message_that_breaks_processing_is_quarantined_and_the_daemon_keeps_running(
    gateway: RunningGateway, smtp_sink: SmtpSink
) -> None:
    # One header line: a header block that is not one (junk lines) gets 550 5.6.0 at
    # SMTP (tests/integration/test_one_view.py); the garbage below it still reaches processing.
    garbage = b"X-Garbage: \xff\r\n\r\n" + b"\x00\xff\xfe garbage that is not a message\r\n" * 10
    gateway.send(garbage)
    gateway.send(DECLARATION.encode())
    wait_until(lambda: smtp_sink.messages_to("dsi@chu-nantes.test"), timeout=10)
    status = json.loads(gateway.config.cli("status", "--json", check=False).stdout)
    assert status["quarantined"] == 1  # the garbage: kept, with its reason; the declaration processed
    assert status["inbound"]["processed"] == {"declaration": 1}
