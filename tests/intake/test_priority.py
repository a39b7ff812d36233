"""Processing priority decided at accept (intake/priority.py): staff and ACSS mail first, by the
envelope and the From address only; a display name is not an address; case does not matter."""

from __future__ import annotations

import pytest
from sqlalchemy import insert, select
from sqlalchemy.orm import Session, sessionmaker

from mailgateway.clock import FixedClock
from mailgateway.intake.accept import Arrival, accept_batch
from mailgateway.intake.imap import accept_message
from mailgateway.intake.priority import HEADER_SCAN, NORMAL, URGENT, Prioritiser, PriorityRule, header_from
from mailgateway.intake.writer import AcceptWriter
from mailgateway.settings import parse_settings
from mailgateway.store.engine import transaction
from mailgateway.store.models import InboundMessage, StaffMember
from tests.support import casemail
from tests.support.casegateway import NOW, settings_data

SETTINGS = parse_settings(settings_data("sqlite://"))
RULE = PriorityRule.of_settings(SETTINGS)


def mail(sender: str) -> bytes:
    return casemail.message(sender=sender, to="ssi-ara@ars.test", subject="Objet", body="Bonjour\n")


@pytest.mark.parametrize(("mail_from", "header", "expected"), [
    ("agent@ars.test", "agent@ars.test", URGENT),                      # a staff command
    ("bounces@relay.example", "Agent <AGENT@ARS.TEST>", URGENT),       # From alone, any case
    ("AGENT@Ars.Test", "someone@gmail.test", URGENT),                  # envelope alone, any case
    ("alerte@esante.test", "alerte@esante.test", URGENT),              # an ACSS alert
    (None, "CERT <veille@cert.esante.test>", URGENT),                  # a subdomain of an ACSS domain
    ("collegue@ars.test", "collegue@ars.test", URGENT),                # the agency's domain
    ("dsi@chu.test", "dsi@chu.test", NORMAL),                          # a hospital's declaration
    ("dsi@chu.test", '"agent@ars.test" <dsi@chu.test>', NORMAL),       # forged display name only
    ("x@evil.test", "agent@ars.test.evil.test", NORMAL),               # a look-alike domain
    ("x@evil.test", "x@notars.test", NORMAL),                          # a suffix that is no subdomain
    ("", "MAILER-DAEMON@mx.chu.test", NORMAL),                         # a bounce
])
def test_priority_follows_envelope_and_from_address(mail_from: str | None, header: str, expected: int) -> None:
    assert RULE.priority(mail_from, mail(header)) == expected


def test_imported_staff_outside_the_agency_domain_are_urgent() -> None:
    rule = PriorityRule.of_settings(SETTINGS, frozenset({"Renfort@Prestataire.test"}))
    assert rule.priority("renfort@prestataire.test", mail("renfort@prestataire.test")) == URGENT
    assert RULE.priority("renfort@prestataire.test", mail("renfort@prestataire.test")) == NORMAL


def test_only_the_header_block_is_read() -> None:
    body_from = b"Subject: x\r\n\r\nFrom: agent@ars.test\r\n"
    assert header_from(body_from) is None
    late = b"X-Pad: " + b"a" * HEADER_SCAN + b"\r\nFrom: agent@ars.test\r\n\r\nbody"
    assert header_from(late) is None
    folded = b"Subject: x\r\nfrom: Agent\r\n <agent@ars.test>\r\nTo: y\r\n\r\n"
    assert header_from(folded) == "agent@ars.test"
    assert header_from(b"From: <agent@ars.test\r\n\r\n") == "agent@ars.test"  # unclosed: still bounded


def _priorities(factory: sessionmaker[Session]) -> dict[str, int]:
    with factory() as s:
        return {mf or "": p for mf, p in s.execute(select(InboundMessage.mail_from, InboundMessage.priority))}


def test_the_accept_writer_stores_the_priority(sqlite_factory: sessionmaker[Session]) -> None:
    factory = sqlite_factory
    engine = factory.kw["bind"]
    with engine.begin() as conn:  # imported by ``staff import``, not in the configuration
        conn.execute(insert(StaffMember), [{"address": "renfort@prestataire.test", "region": "ARA", "role": "agent"}])
    writer = AcceptWriter(factory, FixedClock(NOW), priority=Prioritiser(SETTINGS, engine))
    writer.start()
    try:
        futures = [writer.submit(mail(sender), source="smtp", mail_from=sender, rcpt_tos=["ssi-ara@ars.test"],
                                 region="ARA")
                   for sender in ("dsi@chu.test", "agent@ars.test", "renfort@prestataire.test")]
        for f in futures:
            f.result(timeout=10)
    finally:
        writer.stop()
    assert _priorities(factory) == {"dsi@chu.test": NORMAL, "agent@ars.test": URGENT,
                                    "renfort@prestataire.test": URGENT}


def test_imap_intake_and_batches_store_the_priority(sqlite_factory: sessionmaker[Session]) -> None:
    factory = sqlite_factory
    accept_message(factory, mail("agent@ars.test"), "ARA", "imap:ARA:INBOX:1:1", FixedClock(NOW), rule=RULE)
    with transaction(factory) as s:
        accept_batch(s, [Arrival.of(mail("dsi@chu.test"), source="smtp", mail_from="dsi@chu.test", rule=RULE),
                         Arrival.of(mail("dsi@chu.test"), source="smtp", mail_from="acss@esante.test")], NOW)
    assert _priorities(factory) == {"": URGENT, "dsi@chu.test": NORMAL, "acss@esante.test": NORMAL}  # no rule: NORMAL
