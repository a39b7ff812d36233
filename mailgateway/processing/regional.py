"""What arriving in several regions means for processing (docs/guarantees.md, "The region is where
the mail arrived").

Intake stores one row per receiving region (intake/accept.py), each processed on its own:

- ``copy_prehandler``: a reply or a command belongs to its case, not to a mailbox. The copy that
  reached a second regional mailbox (a staff member or an establishment writing To: PDL, Cc: ARA)
  is attached once, by the copy of the case's region; the other copies are recorded as copies,
  with no second notification, attachment or receipt.
- ``link_alert``: a national alert opens one case per receiving region; the cases are linked by
  the alert reference (``AlertReceipt``) and each region's staff see where else it arrived. The
  same reference again in one region (a corrected version, a resend under a new Message-ID) opens
  a new case *linked* to the earlier one and flagged « nouvelle version », so a second broadcast
  never happens without staff seeing the first: a new case rather than an update of the first,
  because the first may already be broadcast or closed, and each version needs its own approval
  (a plain resend is merged by staff with ``#fusionner``).
- ``out_of_region``: a declaration whose establishment belongs to another configured region is
  flagged « hors région » (``#transferer <REGION>`` moves it: commands/table.py).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from mailgateway.cases import service
from mailgateway.cases.timeline import append_event
from mailgateway.clock import french_datetime
from mailgateway.directory.establishments import establishment, establishments_of_ej
from mailgateway.directory.regions import region_of_departement
from mailgateway.mail.facts import MessageFacts
from mailgateway.processing.context import Env, Outcome
from mailgateway.processing.routing import finess_departement
from mailgateway.settings import Settings
from mailgateway.store.models import AlertReceipt, Case, InboundMessage

__all__ = ["copy_prehandler", "establishment_region", "link_alert", "out_of_region"]

_CASE_BOUND = frozenset({"reply", "command"})


def _copies(session: Session, inbound: InboundMessage) -> list[InboundMessage]:
    """The other rows holding the same bytes (other receiving regions)."""
    return list(session.scalars(select(InboundMessage).where(InboundMessage.sha256 == inbound.sha256,
                                                             InboundMessage.id != inbound.id)
                                .order_by(InboundMessage.id).limit(50)))


def copy_prehandler(env: Env, session: Session, inbound: InboundMessage, facts: MessageFacts) -> Outcome | None:
    """A reply or command already attached to its case by another region's copy, or whose copy
    for the case's own region is still to be processed: recorded as a copy, nothing else."""
    if facts.kind not in _CASE_BOUND or inbound.region is None:
        return None
    case = service.threaded_case(session, facts)
    if case is None:
        return None
    copies = _copies(session, inbound)
    done = next((c for c in copies if c.case_id == case.id), None)
    pending = next((c for c in copies if c.region == case.region and c.status == "received"), None)
    if done is None and (pending is None or inbound.region == case.region):
        return None
    # Not attached (case_id stays None): only the copy that acted is the case's message.
    return Outcome("processed", reason=f"copie reçue aussi par la boîte SSI {inbound.region} : traitée une fois "
                                       f"pour le dossier {case.reference}", case=case)


def link_alert(env: Env, session: Session, case: Case, inbound: InboundMessage, facts: MessageFacts) -> dict[str, Any]:
    """Link a new alert case to the other regions' cases of the same alert and to an earlier case
    of the same reference in its own region; return what the staff notification shows."""
    now = env.clock.now()
    reference = (facts.alert.reference if facts.alert else None) or None
    extra: dict[str, Any] = {}
    receipts = list(session.scalars(select(AlertReceipt).where(AlertReceipt.reference == reference)
                                    .order_by(AlertReceipt.id).limit(200))) if reference else []
    # Same reference already received in this region: a new version, linked and flagged.
    earlier = next((r for r in receipts if r.region == case.region and r.case_id != case.id), None)
    previous = session.get(Case, earlier.case_id) if earlier is not None else None
    if earlier is not None and previous is not None:
        received_fr = french_datetime(earlier.received_at)
        case.linked_case_id = previous.id
        append_event(session, case, type="alerte_nouvelle_version", actor="passerelle", at=now,
                     inbound_id=inbound.id,
                     data={"reference_alerte": reference, "dossier_precedent": previous.reference,
                           "recue_le": received_fr})
        append_event(session, previous, type="alerte_nouvelle_version_recue", actor="passerelle", at=now,
                     inbound_id=inbound.id,
                     data={"reference_alerte": reference, "nouveau_dossier": case.reference})
        extra["alert_previous"] = {"reference": reference, "case": previous.reference, "received_fr": received_fr,
                                   "status": previous.status}
    # Other regions: cases already opened for this alert, and copies of these very bytes waiting.
    others: dict[str, str | None] = {}
    for receipt in receipts:
        if receipt.region != case.region and receipt.region not in others:
            other = session.get(Case, receipt.case_id)
            others[receipt.region] = other.reference if other is not None else None
    for copy in _copies(session, inbound):
        if copy.region and copy.region != case.region:
            other = session.get(Case, copy.case_id) if copy.case_id else None
            if others.get(copy.region) is None:
                others[copy.region] = other.reference if other is not None else None
    if others:
        listed = [{"region": code, "case": ref} for code, ref in sorted(others.items())]
        append_event(session, case, type="alerte_autres_regions", actor="passerelle", at=now,
                     data={"reference_alerte": reference, "regions": [x["region"] for x in listed],
                           "dossiers": [x["case"] for x in listed if x["case"]]})
        for item in listed:
            other = service.by_reference(session, item["case"]) if item["case"] else None
            if other is not None:
                append_event(session, other, type="alerte_recue_aussi", actor="passerelle", at=now,
                             data={"reference_alerte": reference, "region": case.region, "dossier": case.reference})
        extra["alert_other_regions"] = listed
    # Only an authentic alert is recorded: a forged copy with the same reference arriving first must
    # not make the genuine alert look like a « nouvelle version » of it (as for replay keys).
    if reference and facts.alert is not None and facts.alert.authentic:
        session.add(AlertReceipt(reference=reference[:100], region=case.region, case_id=case.id,
                                 inbound_id=inbound.id, received_at=inbound.received_at))
    return extra


def establishment_region(settings: Settings, session: Session, finess: str | None) -> tuple[str | None, str | None]:
    """(region, département) of a FINESS establishment: the directory first, else the number's prefix.

    A juridique number (EJ) of several sites in the directory is where its sites are: one region
    when they all are in one (its département when they share one too), none when they are in
    several. Never its own prefix: an EJ is registered where the legal entity sits (a group's seat
    in Paris or Lyon), not where its hospitals are (outside tester: a Nantes site of a Lyon group
    was flagged « hors région » and transferred to ARA)."""
    if not finess:
        return None, None
    est = establishment(session, finess)
    if est is not None and (est.region or est.departement):
        departement = est.departement
        return (est.region or region_of_departement(departement)), departement
    if est is None:
        sites = establishments_of_ej(session, finess)
        if sites:
            regions = {s.region or region_of_departement(s.departement) for s in sites}
            departements = {s.departement for s in sites}
            if len(regions) != 1:
                return None, None
            return regions.pop(), (departements.pop() if len(departements) == 1 else None)
    departement = finess_departement(finess)
    return region_of_departement(departement), departement


def out_of_region(env: Env, session: Session, case: Case, inbound: InboundMessage,
                  facts: MessageFacts) -> dict[str, Any]:
    """Flag a declaration whose establishment belongs to another configured region (« hors
    région »): a timeline event, and what the staff notification shows."""
    home, departement = establishment_region(env.settings, session, case.finess)
    if home is None or home == case.region or env.settings.region(home) is None:
        return {}
    target = env.settings.region(home)
    assert target is not None
    append_event(session, case, type="hors_region", actor="passerelle", at=env.clock.now(), inbound_id=inbound.id,
                 data={"finess": case.finess, "departement": departement, "region_etablissement": home,
                       "region_reception": case.region})
    # The home region may have received this very message too (one transaction to both mailboxes):
    # then transferring would only make a duplicate there.
    copy = next((c for c in _copies(session, inbound) if c.region == home), None)
    there = session.get(Case, copy.case_id) if copy is not None and copy.case_id else None
    return {"out_of_region": {"region": home, "region_name": target.name, "departement": departement,
                              "finess": case.finess, "also_received": copy is not None,
                              "case_there": there.reference if there is not None else None}}
