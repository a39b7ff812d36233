"""Unguessable identifiers (docs/guarantees.md): outbound identifiers nobody outside can compute,
and bounces that must be ours.

Message-IDs used to be ``sha256(key)`` of guessable keys (``bulletin:<id>:<FINESS>``,
``acknowledgement:<id>``): anyone could forge a DSN that dropped a contact from the next alert,
or thread a mail into any case. These tests compute the old value and check that it is useless.
"""

from __future__ import annotations

import asyncio
import hashlib
import threading
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from mailgateway.app import App, build_app
from mailgateway.bulletins.fanout import approve_bulletin, create_bulletin
from mailgateway.bulletins.tracking import UNMATCHED_BOUNCE, UNVERIFIED_BOUNCE, permanent_failure_hook
from mailgateway.clock import FixedClock
from mailgateway.dispatch import outbox
from mailgateway.dispatch.compose import MailSpec
from mailgateway.dispatch.samples import sample_mails
from mailgateway.dispatch.sender import Sender
from mailgateway.intake.accept import accept_in
from mailgateway.store.engine import make_engine, make_sessionmaker, transaction
from mailgateway.store.installation import MESSAGE_ID_SECRET, load_secret
from mailgateway.store.models import BulletinRecipient, Contact, ContactBounce, InboundMessage, OutboundMessage
from tests.support.bulletins import bulletin_settings, dsn, fill_directory, finess

NOW = datetime(2026, 11, 27, 9, 0, tzinfo=UTC)


def old_message_id(key: str, domain: str) -> str:
    """The pre-issue-15 Message-ID: what an outsider can compute from a guessable key."""
    return f"<mg.{hashlib.sha256(key.encode()).hexdigest()[:32]}@{domain}>"


def _app(url: str, clock: FixedClock | None = None) -> App:
    return build_app(bulletin_settings(url), clock=clock or FixedClock(NOW))


@pytest.fixture
def app(sqlite_url: str) -> Iterator[App]:
    application = _app(sqlite_url)
    with transaction(application.factory) as s:
        fill_directory(s, NOW, 3, roles=("ssi", "rssi"))
    yield application
    application.close()


def _spec(app: App, key: str) -> MailSpec:
    return replace(next(iter(sample_mails(app.settings))), idempotency_key=key)


def test_message_ids_and_verp_tokens_differ_between_installations_with_identical_data(tmp_path: Path) -> None:
    key = "bulletin:1:690000001"
    ids, tokens = [], []
    for name in ("a", "b"):
        application = _app(f"sqlite:///{tmp_path / name}.db")
        try:
            mid = application.composer.message_id(key)
            with transaction(application.factory) as s:
                row = outbox.enqueue(s, raw=b"x", recipient="ssi@e1.test", message_id=mid, idempotency_key=key,
                                     kind="bulletin", now=NOW, settings=application.settings)
                assert row is not None
                tokens.append(row.verp_token)
            ids.append(mid)
        finally:
            application.close()
    domain = ids[0].rsplit("@", 1)[1].rstrip(">")
    assert ids[0] != ids[1]
    assert old_message_id(key, domain) not in ids
    assert tokens[0] != tokens[1]
    for token in tokens:
        assert len(token) >= 32 and int(token, 16) >= 0  # 128 random bits
        assert token not in hashlib.sha256(key.encode()).hexdigest()
    # The token part of a Message-ID carries at least 128 bits as well.
    assert all(len(m.split(".", 1)[1].split("@", 1)[0]) >= 26 for m in ids)


def test_message_ids_are_stable_across_restarts_of_one_installation(sqlite_url: str) -> None:
    first = _app(sqlite_url)
    try:
        mid = first.composer.compose(_spec(first, "k1")).message_id
    finally:
        first.close()
    second = _app(sqlite_url)
    try:
        assert second.composer.compose(_spec(second, "k1")).message_id == mid
        assert second.composer.message_id("k2") != mid
    finally:
        second.close()


def test_instances_starting_together_create_one_secret(db_url: str) -> None:
    engine = make_engine(db_url)
    from mailgateway.store.engine import upgrade

    upgrade(db_url)
    factory = make_sessionmaker(engine)
    barrier = threading.Barrier(4)
    found: list[bytes] = []
    errors: list[BaseException] = []

    def start() -> None:
        barrier.wait()
        try:
            found.append(load_secret(factory, MESSAGE_ID_SECRET))
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=start, daemon=True) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    engine.dispose()
    assert errors == []
    assert len(found) == 4 and len(set(found)) == 1 and len(found[0]) == 32


# --- bounces ----------------------------------------------------------------------------------------


def flush(app: App) -> None:
    sender = Sender(app.settings, app.factory, app.clock, "test",
                    on_permanent_failure=permanent_failure_hook(app.env))
    asyncio.run(sender.flush(include_backoff=True))


def process(app: App, raw: bytes) -> Any:
    with transaction(app.factory) as s:
        inbound = accept_in(s, raw, source="cli", now=app.clock.now()).inbound_id
    return app.processor.process(inbound)


def _bulletin(app: App) -> int:
    with transaction(app.factory) as s:
        bulletin = create_bulletin(s, app.settings, region="ARA", target="category=LBM", subject="Hameçonnage",
                                   body="Texte", tlp="GREEN", author="agent@ars.test", now=NOW)
        approve_bulletin(app.env, s, bulletin.id, "agent@ars.test")
        return bulletin.id


def _row(app: App, bulletin_id: int, recipient: str) -> OutboundMessage:
    with app.factory() as s:
        row = s.scalar(select(OutboundMessage).where(OutboundMessage.bulletin_id == bulletin_id,
                                                     OutboundMessage.recipient == recipient))
        assert row is not None
        return row


def _contact(app: App, address: str) -> Contact:
    with app.factory() as s:
        contact = s.scalar(select(Contact).where(Contact.address == address))
        assert contact is not None
        return contact


def _count(app: App, model: Any, *where: Any) -> int:
    with app.factory() as s:
        return int(s.scalar(select(func.count()).select_from(model).where(*where)) or 0)


def test_an_anonymous_dsn_naming_a_computed_old_style_message_id_changes_nothing(app: App) -> None:
    bulletin_id = _bulletin(app)
    flush(app)
    domain = _row(app, bulletin_id, "ssi@e1.test").message_id.rsplit("@", 1)[1].rstrip(">")
    guessed = old_message_id(f"bulletin:{bulletin_id}:{finess(1)}", domain)
    # To the regional mailbox and to a guessed VERP address alike.
    for to in ("ssi-ara@ars.test", "bounces+00000000000000000000@ars.test"):
        result = process(app, dsn(to, "ssi@e1.test", guessed))
        assert result.kind == "bounce" and result.status == "processed" and result.reason == UNMATCHED_BOUNCE
    assert _contact(app, "ssi@e1.test").status == "active"
    assert _row(app, bulletin_id, "ssi@e1.test").status == "sent"
    assert _count(app, ContactBounce) == 0


def test_a_forged_dsn_naming_a_real_message_id_does_not_drop_the_contact(app: App) -> None:
    bulletin_id = _bulletin(app)
    flush(app)
    real = _row(app, bulletin_id, "ssi@e1.test").message_id
    # The attacker learnt a real Message-ID (a forwarded bulletin) and sends DSNs from outside,
    # several times: never through the message's own random VERP return path.
    for n in range(3):
        forged = dsn("ssi-ara@ars.test", "ssi@e1.test", real).replace(b"<dsn-1@", f"<dsn-{n}@".encode())
        result = process(app, forged)
        assert result.status == "processed" and result.reason == UNVERIFIED_BOUNCE
    contact = _contact(app, "ssi@e1.test")
    assert (contact.status, contact.bounce_score) == ("active", 0.0)
    assert _row(app, bulletin_id, "ssi@e1.test").status == "sent"  # not marked bounced, no fallback
    assert _count(app, OutboundMessage, OutboundMessage.recipient == "rssi@e1.test") == 0
    assert _count(app, ContactBounce, ContactBounce.evidence == "message_id") == 3  # recorded for staff
    # The next bulletin still goes to the contact.
    second = _bulletin(app)
    assert _row(app, second, "ssi@e1.test").recipient == "ssi@e1.test"


def test_a_real_verp_dsn_still_bounces_the_message_and_falls_back(app: App) -> None:
    bulletin_id = _bulletin(app)
    flush(app)
    row = _row(app, bulletin_id, "ssi@e1.test")
    result = process(app, dsn(row.mail_from, "ssi@e1.test", row.message_id))
    assert result.status == "processed" and result.reason is None
    assert _row(app, bulletin_id, "ssi@e1.test").status == "bounced"
    with app.factory() as s:
        rec = s.scalar(select(BulletinRecipient).where(BulletinRecipient.bulletin_id == bulletin_id,
                                                       BulletinRecipient.finess == finess(1)))
    assert rec is not None and rec.address == "rssi@e1.test"
    contact = _contact(app, "ssi@e1.test")
    assert (contact.status, contact.bounce_score) == ("active", 1.0)  # one delivery: not yet dropped


# --- threading --------------------------------------------------------------------------------------


def _declaration() -> bytes:
    return (
        "From: dsi@chu.test\r\nTo: ssi-ara@ars.test\r\nSubject: Incident\r\n"
        "Message-ID: <d1@chu.test>\r\nDate: Fri, 27 Nov 2026 09:00:00 +0100\r\n"
        "Content-Type: text/plain; charset=utf-8\r\n\r\n"
        "Numéro FINESS : 690781810\r\nType d'incident : rançongiciel\r\nServeurs chiffrés.\r\n"
    ).encode()


def _reply(in_reply_to: str, n: int) -> bytes:
    return (
        f"From: tiers@autre.test\r\nTo: ssi-ara@ars.test\r\nSubject: Re: votre message\r\n"
        f"Message-ID: <r{n}@autre.test>\r\nIn-Reply-To: {in_reply_to}\r\nReferences: {in_reply_to}\r\n"
        "Date: Fri, 27 Nov 2026 10:00:00 +0100\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
        "Merci, voici des informations complémentaires.\r\n"
    ).encode()


def test_a_reply_threaded_on_a_guessed_message_id_does_not_join_the_case(app: App) -> None:
    opened = process(app, _declaration())
    assert opened.case_ref
    with app.factory() as s:
        ack = s.scalar(select(OutboundMessage).where(OutboundMessage.kind == "accuse_reception"))
        assert ack is not None
        inbound_id = s.scalar(select(InboundMessage.id).where(InboundMessage.message_id.is_not(None)).limit(1))
    domain = ack.message_id.rsplit("@", 1)[1].rstrip(">")
    guessed = old_message_id(f"acknowledgement:{inbound_id}", domain)
    assert guessed != ack.message_id
    assert process(app, _reply(guessed, 1)).case_ref != opened.case_ref
    # Control: the real Message-ID (known to whoever received our mail) still threads.
    assert process(app, _reply(ack.message_id, 2)).case_ref == opened.case_ref
