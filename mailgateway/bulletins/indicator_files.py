"""The indicator files of a relayed alert or a bulletin (docs/indicators.md, "Out").

``relay_attachments`` is the one call of ``fanout.fan_out``: the files are built once per
bulletin and attached to every establishment's copy. Who receives the mail is the ``Mailer``'s
TLP gate's decision, not this module's; the files carry the bulletin's own label, so their markings
never claim less than the mail, and a RED one is never built (``check_tlp`` refuses RED before).

The indicators are the case's (found in the alert's text and its attached STIX/MISP files) for a
relayed alert, and those of the body for a bulletin written by staff.
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from mailgateway.dispatch.compose import Attachment
from mailgateway.dispatch.indicators_out import IndicatorSet, attachments
from mailgateway.mail.facts import Indicator as FoundIndicator
from mailgateway.mail.indicators import contact_line_phones, extract_indicators, signature_phones
from mailgateway.mail.labels import load_labels
from mailgateway.mail.tlp import relay_label
from mailgateway.settings import Settings
from mailgateway.store.models import Bulletin, Case, Indicator

MAX_EXPORTED = 200  # as many as a case keeps (cases/service.new_case)


def producer_name(settings: Settings, region: str) -> str:
    reg = settings.region(region)
    return f"{settings.outbound.service_name} — {reg.name if reg else region}"


def case_indicators(session: Session, case: Case) -> tuple[FoundIndicator, ...]:
    rows = session.scalars(select(Indicator).where(Indicator.case_id == case.id).order_by(Indicator.id)
                           .limit(MAX_EXPORTED))
    return tuple(FoundIndicator(r.type, r.value) for r in rows)


def case_set(settings: Settings, session: Session, case: Case, tlp: str | None = None) -> IndicatorSet:
    """The indicators of ``case`` with what an export says of the alert (reference, title, TLP, date).

    ``tlp`` None: the label the case's alert relays under (mail/tlp.py fails closed).
    """
    alert = dict((case.fields or {}).get("alert") or {})
    label = tlp or relay_label(alert.get("tlp") or case.tlp)
    return IndicatorSet(
        reference=str(alert.get("reference") or case.reference), title=str(alert.get("title") or case.title or ""),
        tlp=label, created=case.opened_at, indicators=case_indicators(session, case),
        producer=producer_name(settings, case.region), case_reference=case.reference,
    )


def relay_attachments(settings: Settings, session: Session, bulletin: Bulletin, case: Case | None) -> list[Attachment]:
    """The files of ``[outbound] indicator_formats`` for ``bulletin`` (none without indicators)."""
    formats = settings.outbound.indicator_formats
    if not formats or not bulletin.tlp:
        return []
    if case is not None:
        found = case_set(settings, session, case, tlp=bulletin.tlp)
    else:
        # The agent's own signature is no indicator of compromise: its numbers (Outlook writes no
        # « -- », a closing formula starts it) and the agency's addresses were exported to every
        # establishment as IOCs (found by an outside tester). The rule of declarations.
        body = bulletin.body or ""
        agency = {r.address.rpartition("@")[2].lower() for r in settings.regions}
        indicators = extract_indicators([body], noise_domains=(*load_labels().noise_domains, *agency),
                                        exclude_phones=signature_phones(body) + contact_line_phones(body))
        found = IndicatorSet(
            reference=f"bulletin-{bulletin.id}", title=bulletin.subject or "", tlp=bulletin.tlp,
            created=bulletin.created_at, indicators=indicators[:MAX_EXPORTED],
            producer=producer_name(settings, bulletin.region),
        )
    return attachments(found, formats)
