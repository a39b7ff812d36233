"""Unguessable identifiers (docs/guarantees.md) from outside: forged DSNs over SMTP against the
real daemon, bulletins at a real sink.

The attack: compute the Message-ID of a bulletin (it used to be ``sha256("bulletin:<id>:<FINESS>")``)
or learn a real one, mail an anonymous DSN naming it, and the establishment's contact was marked
bouncing, so the next alert silently went elsewhere. Now only a DSN at the message's own random
VERP return path acts, and one delivery never drops a contact.
"""

from __future__ import annotations

import email
import email.policy
import hashlib
import smtplib
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from mailgateway.store.engine import make_engine
from mailgateway.store.models import Contact, InboundMessage
from tests.support.bulletins import dsn, fill_directory, finess
from tests.support.gateway import GatewayConfig, RunningGateway, wait_until
from tests.support.servers import SmtpSink

DOMAIN = "ars.test"


def _send_bulletin(config: GatewayConfig, body: Path) -> int:
    out = config.cli_json("bulletin", "send", "--region", "PDL", "--target", "category=LBM", "--subject",
                          "Hameçonnage", "--body-file", str(body), "--yes")
    return int(out["id"])


def _forged(to: str, recipient: str, message_id: str, n: int) -> bytes:
    # Distinct DSNs (another Message-ID each), so that no deduplication hides the attempt.
    return dsn(to, recipient, message_id).replace(b"<dsn-1@mx.e1.test>", f"<dsn-{n}@mx.e1.test>".encode())


def _deliver(gateway: RunningGateway, raw: bytes, to: str) -> None:
    try:
        gateway.send(raw, to=(to,), mail_from="")  # DSNs have a null reverse-path (RFC 3464 §2)
    except smtplib.SMTPRecipientsRefused:
        pass  # refusing a guessed VERP address at RCPT is as good as ignoring its DSN


def test_forged_dsns_over_smtp_never_drop_a_contact_but_a_real_verp_bounce_counts(
    tmp_path: Path, smtp_sink: SmtpSink
) -> None:
    config = GatewayConfig(tmp_path / "gw", relay_port=smtp_sink.port)
    config.cli("db", "upgrade")
    engine = make_engine(f"sqlite:///{config.db_path}")
    with Session(engine) as s, s.begin():
        fill_directory(s, datetime(2026, 11, 27, tzinfo=UTC), 3, departement="44", region="PDL",
                       roles=("ssi", "rssi"))
    body = tmp_path / "bulletin.txt"
    body.write_text("Une campagne d'hameçonnage vise les laboratoires.\n", encoding="utf-8")

    def processed() -> int:
        with Session(engine) as s:
            return int(s.scalar(select(func.count()).select_from(InboundMessage)
                                .where(InboundMessage.status != "received")) or 0)

    try:
        with RunningGateway(config) as gateway:
            first = _send_bulletin(config, body)
            wait_until(lambda: all(smtp_sink.messages_to(f"ssi@e{n}.test") for n in range(3)), timeout=30)
            delivered = {n: smtp_sink.messages_to(f"ssi@e{n}.test")[0] for n in range(3)}
            real_mid = str(email.message_from_bytes(delivered[1].raw, policy=email.policy.default)["Message-ID"])
            key = f"bulletin:{first}:{finess(0, '44')}"
            computed = f"<mg.{hashlib.sha256(key.encode()).hexdigest()[:32]}@{DOMAIN}>"
            assert computed != str(email.message_from_bytes(delivered[0].raw,
                                                            policy=email.policy.default)["Message-ID"])

            sent = 0
            # 1. The computed (old-style) Message-ID of e0's bulletin, to the regional mailbox.
            _deliver(gateway, _forged("ssi-pdl@ars.test", "ssi@e0.test", computed, 1), "ssi-pdl@ars.test")
            sent += 1
            # 2. The same at a guessed VERP return path.
            guessed = f"bounces+{'0' * 32}@{DOMAIN}"
            _deliver(gateway, _forged(guessed, "ssi@e0.test", computed, 2), guessed)
            # 3. e1's real Message-ID (learnt from a forwarded copy), three times.
            for n in range(3, 6):
                _deliver(gateway, _forged("ssi-pdl@ars.test", "ssi@e1.test", real_mid, n), "ssi-pdl@ars.test")
                sent += 1
            # 4. A genuine DSN for e2, at the VERP return path its bulletin went out with.
            real_mid_2 = str(email.message_from_bytes(delivered[2].raw, policy=email.policy.default)["Message-ID"])
            _deliver(gateway, _forged(delivered[2].mail_from, "ssi@e2.test", real_mid_2, 6), delivered[2].mail_from)
            sent += 1
            wait_until(lambda: processed() >= sent, timeout=30)

            # The genuine bounce acted: e2's bulletin fell back to its rssi.
            wait_until(lambda: smtp_sink.messages_to("rssi@e2.test"), timeout=30)
            status = config.cli_json("bulletin", "status", str(first))
            assert status["bounced"] == 1

            # The next alert still reaches every establishment's own contact.
            second = _send_bulletin(config, body)
            assert second != first
            wait_until(lambda: all(len(smtp_sink.messages_to(f"ssi@e{n}.test")) == 2 for n in range(3)),
                       timeout=30)
        assert gateway.proc.returncode == 0
        assert not smtp_sink.messages_to("rssi@e0.test") and not smtp_sink.messages_to("rssi@e1.test")
        with Session(engine) as s:
            statuses = {address: status for address, status in
                        s.execute(select(Contact.address, Contact.status).where(Contact.role == "ssi"))}
        # One delivery bounced, even genuinely, is not yet a dead mailbox (bounce_min_messages = 2).
        assert statuses == {"ssi@e0.test": "active", "ssi@e1.test": "active", "ssi@e2.test": "active"}
    finally:
        engine.dispose()
