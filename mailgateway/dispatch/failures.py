"""Mail to staff that will never arrive: outbox rows ``failed`` (a 5yz answer), ``expired`` or
``bounced`` (a DSN at its return path).

A staff notification refused for good is a declaration nobody reads: it must not stay a line in
a log. ``mailgateway status`` counts it as a problem (exit 1), ``/metrics`` exposes the count
(``mailgateway_staff_mail_failed``) and the next digest lists it, for ``[outbound]
staff_failure_window_hours`` after the failure, or until ``outbox retry ID`` queues it again.

The sender records the failure instant in ``next_attempt_at`` (dispatch/sender.py: a final row
keeps the time of its last answer there), which the outbox index covers. Who is staff is the
caller's to say (``directory.staff.all_staff``): the sending machinery knows addresses, not roles.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import ColumnElement, and_, func, or_, select
from sqlalchemy.orm import Session

from mailgateway.clock import aware
from mailgateway.store.models import Case, OutboundMessage

FINAL_FAILURES = ("failed", "expired")


@dataclass(frozen=True)
class FailedMail:
    id: int
    recipient: str
    kind: str
    status: str
    failed_at: datetime
    answer: str
    case_ref: str | None
    region: str | None

    def line_fr(self) -> str:
        what = {"failed": "refusé définitivement", "bounced": "revenu en non-remise (avis de non-remise)"}.get(
            self.status, "abandonné (délai de réessai dépassé)")
        case = f", dossier {self.case_ref}" if self.case_ref else ""
        return (f"courriel n° {self.id} ({self.kind}) à {self.recipient} {what}{case} : "
                f"{' '.join(self.answer.split())[:200] or 'sans réponse du relais'}")


def _where(staff: Collection[str], since: datetime) -> ColumnElement[bool]:
    # A copy the relay took and a DSN then reported undelivered (at its VERP return path) is as
    # lost as one the relay refused (found by an outside tester: a bounced notification was silent).
    return and_(or_(and_(OutboundMessage.status.in_(FINAL_FAILURES), OutboundMessage.next_attempt_at >= since),
                    and_(OutboundMessage.status == "bounced", OutboundMessage.bounced_at >= since)),
                OutboundMessage.recipient.in_(sorted(staff)))


def count_staff_failures(session: Session, staff: Collection[str], since: datetime) -> int:
    if not staff:
        return 0
    return int(session.scalar(select(func.count()).select_from(OutboundMessage).where(_where(staff, since))) or 0)


def staff_failures(session: Session, staff: Collection[str], since: datetime, limit: int = 50) -> list[FailedMail]:
    """The latest final failures of mail to ``staff`` since ``since``, newest first."""
    if not staff:
        return []
    rows = session.execute(
        select(OutboundMessage.id, OutboundMessage.recipient, OutboundMessage.kind, OutboundMessage.status,
               OutboundMessage.next_attempt_at, OutboundMessage.last_answer, Case.reference, Case.region)
        .outerjoin(Case, Case.id == OutboundMessage.case_id)
        .where(_where(staff, since)).order_by(OutboundMessage.next_attempt_at.desc(), OutboundMessage.id.desc())
        .limit(limit)).all()
    return [FailedMail(r[0], r[1], r[2], r[3], aware(r[4]), r[5] or "", r[6], r[7]) for r in rows]
