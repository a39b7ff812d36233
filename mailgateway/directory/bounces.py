"""Contact status changes driven by bounces, scored the way Mailman 3 scores list members.

Each bounce adds to the contact's score (permanent 1.0, temporary 0.5); at the threshold (5.0)
the contact becomes ``bouncing`` and bulletins fall back to the establishment's next contact
(targets.py). A score older than ``bounce_stale_days`` without a new bounce restarts from zero,
and, as in Mailman, only one bounce per contact and per day is scored: a full mailbox answering
every message of one busy day is one bad day, not ten. A permanent bounce (RFC 3463 5.x.x:
the mailbox does not exist) marks the contact bouncing at once. Every bounce is kept as a
ContactBounce row, scored or not, for the weekly report and for staff.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from mailgateway.clock import PARIS, aware
from mailgateway.directory.addresses import normalise_address
from mailgateway.settings import DirectorySettings
from mailgateway.store.models import Contact, ContactBounce


@dataclass(frozen=True)
class BouncePolicy:
    threshold: float = 5.0
    soft_score: float = 0.5
    hard_score: float = 1.0
    stale_after: timedelta = timedelta(days=7)
    hard_marks_bouncing: bool = True
    once_per_day: bool = True

    @classmethod
    def from_settings(cls, s: DirectorySettings) -> BouncePolicy:
        return cls(
            threshold=s.bounce_threshold,
            soft_score=s.soft_bounce_score,
            hard_score=s.hard_bounce_score,
            stale_after=timedelta(days=s.bounce_stale_days),
            hard_marks_bouncing=s.hard_bounce_marks_bouncing,
        )


DEFAULT_POLICY = BouncePolicy()


def record_bounce(
    session: Session,
    address: str,
    permanent: bool,
    diagnostic: str | None,
    now: datetime,
    outbound_id: int | None = None,
    *,
    policy: BouncePolicy = DEFAULT_POLICY,
) -> list[Contact]:
    """Score a bounce against every contact with this address; return the contacts touched.

    One address may serve several establishments (a GHT's shared SSI mailbox): all are scored.
    An unknown address touches nothing and returns an empty list.
    """
    canonical = normalise_address(address) or address.strip().lower()
    contacts = list(session.scalars(select(Contact).where(Contact.address == canonical).order_by(Contact.id)))
    today = now.astimezone(PARIS).date()
    for contact in contacts:
        last = aware(contact.last_bounce_at) if contact.last_bounce_at is not None else None
        if last is not None and now - last > policy.stale_after:
            contact.bounce_score = 0.0
        already_today = last is not None and last.astimezone(PARIS).date() == today
        if not (policy.once_per_day and already_today and not permanent):
            contact.bounce_score += policy.hard_score if permanent else policy.soft_score
        contact.last_bounce_at = now
        if contact.status == "active" and (
            (permanent and policy.hard_marks_bouncing) or contact.bounce_score >= policy.threshold
        ):
            contact.status = "bouncing"
        contact.updated_at = now
        session.add(
            ContactBounce(
                contact_id=contact.id,
                at=now,
                permanent=permanent,
                diagnostic=diagnostic,
                outbound_id=outbound_id,
            )
        )
    session.flush()
    return contacts


def reactivate(contact: Contact, now: datetime | None = None) -> None:
    """Staff confirmed the mailbox works again: active, score cleared (history is kept)."""
    contact.status = "active"
    contact.bounce_score = 0.0
    if now is not None:
        contact.updated_at = now


def disable(contact: Contact, now: datetime | None = None) -> None:
    """Stop using a contact without deleting it (bounce history and bulletin records stay)."""
    contact.status = "disabled"
    if now is not None:
        contact.updated_at = now
