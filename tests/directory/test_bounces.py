from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import func, insert, select
from sqlalchemy.orm import Session

from mailgateway.directory import BouncePolicy, import_finess, reactivate, record_bounce
from mailgateway.directory.bounces import reactivate_address
from mailgateway.settings import DirectorySettings
from mailgateway.store.models import Contact, ContactBounce
from tests.directory.conftest import DATA, NOW


@pytest.fixture
def contact(session: Session) -> Contact:
    import_finess(session, DATA / "finess-sample.csv", NOW)
    session.execute(
        insert(Contact),
        [
            {"finess": f, "address": "ssi@ght.fr", "role": "ssi", "created_at": NOW, "updated_at": NOW}
            for f in ("690781810", "690000880")  # one GHT mailbox serving two establishments
        ],
    )
    found = session.scalars(select(Contact).order_by(Contact.id)).first()
    assert found is not None
    return found


def test_hard_bounce_marks_every_contact_of_the_address_bouncing(session: Session, contact: Contact) -> None:
    touched = record_bounce(session, "SSI@GHT.fr", True, "550 5.1.1 user unknown", NOW)
    assert [c.status for c in touched] == ["active", "active"]  # one refusal (bounce_min_messages = 2)
    touched = record_bounce(session, "SSI@GHT.fr", True, "550 5.1.1 user unknown", NOW + timedelta(days=1))
    assert [c.status for c in touched] == ["bouncing", "bouncing"]
    assert touched[0].bounce_score == 2.0
    assert session.scalar(select(func.count()).select_from(ContactBounce)) == 4


def test_soft_bounces_reach_the_threshold_at_five_points(session: Session, contact: Contact) -> None:
    for day in range(9):
        record_bounce(session, "ssi@ght.fr", False, "452 4.2.2 mailbox full", NOW + timedelta(days=day))
    assert (contact.bounce_score, contact.status) == (4.5, "active")
    record_bounce(session, "ssi@ght.fr", False, "452 4.2.2 mailbox full", NOW + timedelta(days=9))
    # Scored for the reports, but a full mailbox never takes the contact out of use.
    assert (contact.bounce_score, contact.status) == (5.0, "active")


def test_soft_bounces_of_one_day_score_once_but_are_all_recorded(session: Session, contact: Contact) -> None:
    for minute in range(20):
        record_bounce(session, "ssi@ght.fr", False, "mailbox full", NOW + timedelta(minutes=minute))
    assert (contact.bounce_score, contact.status) == (0.5, "active")
    count = session.scalar(
        select(func.count()).select_from(ContactBounce).where(ContactBounce.contact_id == contact.id)
    )
    assert count == 20


def test_score_restarts_after_a_quiet_week(session: Session, contact: Contact) -> None:
    for day in range(8):
        record_bounce(session, "ssi@ght.fr", False, None, NOW + timedelta(days=day))
    assert contact.bounce_score == 4.0
    record_bounce(session, "ssi@ght.fr", False, None, NOW + timedelta(days=7 + 8))
    assert (contact.bounce_score, contact.status) == (0.5, "active")


def test_policy_comes_from_settings_and_reactivate_clears_the_score(session: Session, contact: Contact) -> None:
    policy = BouncePolicy.from_settings(DirectorySettings(bounce_threshold=1.0, hard_bounce_marks_bouncing=False))
    record_bounce(session, "ssi@ght.fr", False, None, NOW, policy=policy)
    assert contact.status == "active"
    record_bounce(session, "ssi@ght.fr", True, None, NOW + timedelta(days=1), policy=policy)
    assert (contact.bounce_score, contact.status) == (1.5, "bouncing")
    reactivate(contact, NOW)
    assert (contact.bounce_score, contact.status) == (0.0, "active")


def test_unknown_address_touches_nothing(session: Session, contact: Contact) -> None:
    assert record_bounce(session, "nobody@nowhere.fr", True, None, NOW) == []


# --- forged bounces; evidence and distinct deliveries -----------------------------------


def _sent(session: Session, n: int, recipient: str = "ssi@ght.fr") -> int:
    """One outbound message to ``recipient`` (its id), as the fan-out would queue it."""
    from mailgateway.dispatch import outbox
    from mailgateway.settings import OutboundSettings, Settings

    settings = Settings(outbound=OutboundSettings(bounce_domain="ars.test"))
    row = outbox.enqueue(session, raw=b"x", recipient=recipient, message_id=f"<m{n}@ars.test>",
                         idempotency_key=f"bulletin:{n}:{recipient}", kind="bulletin", now=NOW, settings=settings)
    assert row is not None
    return row.id


def test_dsns_naming_only_message_ids_never_mark_a_contact_bouncing(session: Session, contact: Contact) -> None:
    # An anonymous DSN names a Message-ID of ours (learnt from a forwarded mail): one per bulletin,
    # for five bulletins, each sent twice. Recorded, never scored, the contact stays.
    for n in range(5):
        outbound = _sent(session, n)
        for minute in range(2):
            record_bounce(session, "ssi@ght.fr", True, "550 5.1.1", NOW + timedelta(days=n, minutes=minute),
                          outbound_id=outbound, evidence="message_id")
    assert (contact.status, contact.bounce_score) == ("active", 0.0)
    count = session.scalar(
        select(func.count()).select_from(ContactBounce).where(ContactBounce.contact_id == contact.id))
    assert count == 10


def test_one_delivery_bounced_many_times_by_verp_is_one_failure(session: Session, contact: Contact) -> None:
    outbound = _sent(session, 1)
    for minute in range(6):
        record_bounce(session, "ssi@ght.fr", True, "550 5.1.1", NOW + timedelta(minutes=minute),
                      outbound_id=outbound, evidence="verp")
    assert (contact.status, contact.bounce_score) == ("active", 1.0)


def test_verp_failures_on_two_distinct_messages_mark_the_contact_bouncing(
    session: Session, contact: Contact
) -> None:
    record_bounce(session, "ssi@ght.fr", True, "550", NOW, outbound_id=_sent(session, 1), evidence="verp")
    assert contact.status == "active"
    record_bounce(session, "ssi@ght.fr", True, "550", NOW + timedelta(days=20), outbound_id=_sent(session, 2),
                  evidence="verp")
    assert contact.status == "bouncing"


def test_a_weak_dsn_counts_only_beside_a_verp_failure(session: Session, contact: Contact) -> None:
    record_bounce(session, "ssi@ght.fr", True, "550", NOW, outbound_id=_sent(session, 1), evidence="message_id")
    assert contact.status == "active"
    record_bounce(session, "ssi@ght.fr", True, "550", NOW + timedelta(days=1), outbound_id=_sent(session, 2),
                  evidence="verp")
    assert contact.status == "bouncing"


def test_distinct_messages_are_counted_within_the_window_and_since_reactivation(
    session: Session, contact: Contact
) -> None:
    policy = BouncePolicy.from_settings(DirectorySettings(bounce_min_messages=3, bounce_window_days=30))
    for n, day in ((1, 0), (2, 40), (3, 41)):  # the first is out of the window by the third
        record_bounce(session, "ssi@ght.fr", True, "550", NOW + timedelta(days=day), outbound_id=_sent(session, n),
                      evidence="verp", policy=policy)
    assert contact.status == "active"
    record_bounce(session, "ssi@ght.fr", True, "550", NOW + timedelta(days=42), outbound_id=_sent(session, 4),
                  evidence="verp", policy=policy)
    assert contact.status == "bouncing"
    reactivate(contact, NOW + timedelta(days=43))
    record_bounce(session, "ssi@ght.fr", True, "550", NOW + timedelta(days=44), outbound_id=_sent(session, 5),
                  evidence="verp", policy=policy)
    assert contact.status == "active"


def test_the_relays_own_5xx_counts_as_one_refused_message(session: Session, contact: Contact) -> None:
    # One relay refusal is one refused message: the second distinct message marks the contact.
    record_bounce(session, "ssi@ght.fr", True, "550 5.1.1", NOW, outbound_id=_sent(session, 1), evidence="relay")
    assert contact.status == "active"
    record_bounce(session, "ssi@ght.fr", True, "550 5.1.1", NOW, outbound_id=_sent(session, 2), evidence="relay")
    assert contact.status == "bouncing"


def test_newly_out_of_use_names_only_contacts_a_bounce_took_out_of_use(session: Session, contact: Contact) -> None:
    """What "Contact à corriger" relies on (docs/guarantees.md): one VERP DSN leaves the contact active."""
    from mailgateway.directory.bounces import newly_out_of_use, statuses_of

    before = statuses_of(session, "SSI@ght.fr")
    touched = record_bounce(session, "ssi@ght.fr", True, "550 5.1.1", NOW, outbound_id=None, evidence="verp")
    assert [c.status for c in touched] == ["active", "active"] and not newly_out_of_use(touched, before)
    before = statuses_of(session, "ssi@ght.fr")
    touched = record_bounce(session, "ssi@ght.fr", True, "550 5.1.1", NOW, outbound_id=None, evidence="relay")
    assert newly_out_of_use(touched, before) == touched and {c.status for c in touched} == {"bouncing"}
    before = statuses_of(session, "ssi@ght.fr")
    touched = record_bounce(session, "ssi@ght.fr", True, "550 5.1.1", NOW, evidence="relay")
    assert not newly_out_of_use(touched, before)  # already out of use: no second notice


def test_reactivation_sees_a_bounce_of_the_same_transaction(session: Session, contact: Contact) -> None:
    """``reactivate_address`` reads without flushing the whole session first (issue 19: it is
    asked of every authenticated message), except when a contact change is pending: a bounce and
    then authenticated mail from that mailbox in one processing batch still reactivate it."""
    contact.status = "bouncing"  # pending, not flushed
    assert [c.id for c in reactivate_address(session, "SSI@ght.fr", NOW)] == [contact.id]
    assert contact.status == "active"


def test_reactivation_sees_a_bounce_flushed_earlier_in_the_transaction(session: Session, contact: Contact) -> None:
    """The hot path (one statement on the driver, store/fast.py) reads the transaction's own rows."""
    contact.status = "bouncing"
    session.flush()
    assert not session.dirty
    assert [c.id for c in reactivate_address(session, "ssi@GHT.fr", NOW)] == [contact.id]
    assert contact.status == "active"
    assert reactivate_address(session, "ssi@ght.fr", NOW) == []  # active again: nothing to do


def test_reactivation_of_an_unknown_or_active_address_flushes_nothing(session: Session, contact: Contact) -> None:
    session.add(ContactBounce(contact_id=contact.id, at=NOW, permanent=True, diagnostic="550 5.1.1"))
    assert reactivate_address(session, "ssi@ght.fr", NOW) == []
    assert reactivate_address(session, "inconnu@ailleurs.test", NOW) == []
    assert len(session.new) == 1  # the pending row stayed pending: no flush for nothing
