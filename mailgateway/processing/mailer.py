"""Queue one outbound mail under the rules that hold on every outbound path (DESIGN §8).

- never to a no-reply address, nor to ourselves (loops);
- automatic replies are capped per recipient per hour and per day, and per case (storms);
- TLP: RED never leaves the agency (staff only), AMBER / AMBER+STRICT only to allowed recipients,
  the label in the subject;
- a refused send is recorded on the case timeline with its reason.

The mail is composed (rendered, signed) here and queued with its final bytes in the caller's
transaction; the sender delivers it later.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import replace
from datetime import timedelta
from typing import Any

from sqlalchemy import and_, false, func, or_, select
from sqlalchemy import case as case_
from sqlalchemy.orm import Session

from mailgateway.cases.timeline import append_event
from mailgateway.clock import Clock
from mailgateway.dispatch import outbox
from mailgateway.dispatch.compose import Composer, MailSpec
from mailgateway.errors import PolicyRefusal
from mailgateway.settings import Settings
from mailgateway.store.models import AutoReplyLog, Case, OutboundMessage, StaffMember

NO_REPLY_RE = re.compile(
    r"^(no[-_.]?reply|do[-_.]?not[-_.]?reply|ne[-_.]?pas[-_.]?repondre|nepasrepondre|noreponse|"
    r"mailer-daemon|postmaster|bounces?)([+-].*)?@",
    re.IGNORECASE,
)
# RFC 3834 §2: lists and robots are never answered.
ROBOT_RE = re.compile(r"^(owner-|.*-(request|bounces?|owner)@)", re.IGNORECASE)


def is_no_reply(address: str) -> bool:
    return bool(NO_REPLY_RE.match(address) or ROBOT_RE.match(address))


def staff_addresses(settings: Settings, session: Session, region: str) -> list[str]:
    """Staff of ``region``: [[staff]] from the configuration plus imported staff."""
    found = {s.address.lower() for s in settings.staff if s.region == region}
    found.update(
        a.lower() for a in session.scalars(select(StaffMember.address).where(StaffMember.region == region))
    )
    return sorted(found)


def all_staff(settings: Settings, session: Session) -> set[str]:
    found = {s.address.lower() for s in settings.staff}
    found.update(a.lower() for a in session.scalars(select(StaffMember.address)))
    return found


class Mailer:
    def __init__(self, settings: Settings, composer: Composer, clock: Clock) -> None:
        self.settings = settings
        self.composer = composer
        self.clock = clock
        self.own = {r.address.lower() for r in settings.regions}

    def _tlp_allows(self, session: Session, tlp: str | None, recipient: str) -> bool:
        if tlp is None or tlp in ("CLEAR", "WHITE", "GREEN"):
            return True
        staff = all_staff(self.settings, session)
        if tlp == "RED":
            return recipient in staff
        domain = recipient.rpartition("@")[2]
        allowed_domains = {d.lower() for d in self.settings.outbound.amber_allowed_domains}
        acss = self.settings.acss.address.lower()
        if tlp == "AMBER+STRICT":
            # TLP 2.0: AMBER+STRICT stays within the recipient organisation: agency and ACSS only.
            return recipient in staff or recipient == acss
        return recipient in staff or recipient == acss or domain in allowed_domains

    def _cap_reached(self, session: Session, recipient: str, case: Case | None) -> str | None:
        now = self.clock.now()
        out = self.settings.outbound
        hour_ago, day_ago = now - timedelta(hours=1), now - timedelta(days=1)
        # One query for the three caps (this runs for every automatic reply).
        per_recipient = and_(AutoReplyLog.recipient == recipient, AutoReplyLog.at >= day_ago)
        per_case = AutoReplyLog.case_id == case.id if case is not None else false()
        row = session.execute(
            select(
                func.count(case_(( and_(per_recipient, AutoReplyLog.at >= hour_ago), 1))),
                func.count(case_((per_recipient, 1))),
                func.count(case_((per_case, 1))),
            ).where(or_(per_recipient, per_case))
        ).one()
        last_hour, last_day, for_case = (int(v or 0) for v in row)
        if last_hour >= out.auto_replies_per_hour:
            return f"plafond de réponses automatiques atteint pour {recipient} (par heure)"
        if last_day >= out.auto_replies_per_day:
            return f"plafond de réponses automatiques atteint pour {recipient} (par jour)"
        if case is not None and for_case >= out.auto_replies_per_case:
            return f"plafond de réponses automatiques atteint pour le dossier {case.reference}"
        return None

    def from_identity(self, region: str) -> tuple[str, str]:
        """The region's SSI address and display name: every mail of the gateway comes from it."""
        reg = self.settings.region(region)
        address = reg.address if reg else self.settings.regions[0].address
        return address, f"ARS {reg.name if reg else region} - Cellule SSI"

    def send_to_staff(
        self,
        session: Session,
        region: str,
        *,
        template: str,
        context: Mapping[str, Any],
        kind: str,
        key: str,
        recipients: Sequence[str] | None = None,
        case: Case | None = None,
        priority: int = 5,
        **spec: Any,
    ) -> int:
        """One mail per staff member of ``region`` (or per ``recipients``), idempotency key
        ``<key>:<address>``; returns how many were queued."""
        from_address, from_name = self.from_identity(region)
        sent = 0
        for address in recipients or staff_addresses(self.settings, session, region):
            mail = MailSpec(template=template, context=context, to=address, from_address=from_address,
                            from_name=from_name, idempotency_key=f"{key}:{address}",
                            auto_submitted="auto-generated", **spec)
            if self.send(session, mail, kind=kind, case=case, priority=priority) is not None:
                sent += 1
        return sent

    def send(
        self,
        session: Session,
        spec: MailSpec,
        *,
        kind: str,
        case: Case | None = None,
        auto_reply: bool = False,
        priority: int = 0,
        bulletin_id: int | None = None,
        actor: str = "passerelle",
    ) -> OutboundMessage | None:
        """Compose and queue ``spec``; return the outbox row, or None when refused or already queued."""
        recipient = spec.to.strip().lower()
        tlp = spec.tlp or (case.tlp if case is not None else None)
        reason: str | None = None
        if not recipient or "@" not in recipient:
            reason = f"adresse de destination invalide : {recipient!r}"
        elif is_no_reply(recipient):
            reason = f"adresse de non-réponse ou de robot : {recipient}"
        elif recipient in self.own:
            reason = f"adresse de la passerelle elle-même (boucle) : {recipient}"
        elif not self._tlp_allows(session, tlp, recipient):
            reason = f"TLP:{tlp} interdit l'envoi à {recipient}"
        elif auto_reply:
            reason = self._cap_reached(session, recipient, case)
        if reason is None:
            try:
                composed = self.composer.compose(replace(spec, to=recipient, tlp=tlp))
            except PolicyRefusal as exc:
                reason = exc.reason
        if reason is not None:
            if case is not None:
                append_event(
                    session, case, type="envoi_refuse", actor=actor, at=self.clock.now(),
                    data={"destinataire": recipient, "type": kind, "motif": reason},
                )
            return None
        row = outbox.enqueue(
            session,
            raw=composed.raw,
            recipient=recipient,
            message_id=composed.message_id,
            idempotency_key=spec.idempotency_key,
            kind=kind,
            now=self.clock.now(),
            settings=self.settings,
            case_id=case.id if case is not None else None,
            bulletin_id=bulletin_id,
            priority=priority,
        )
        if row is None:
            return None  # already queued by an earlier run: idempotent
        if auto_reply:
            session.add(AutoReplyLog(recipient=recipient, case_id=case.id if case else None, at=self.clock.now()))
        if case is not None:
            append_event(
                session, case, type="mail_sortant", actor=actor, at=self.clock.now(), outbound_id=row.id,
                data={"type": kind, "destinataire": recipient, "objet": composed.subject,
                      "message_id": composed.message_id},
            )
        return row

