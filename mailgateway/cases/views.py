"""Read models of cases for the CLI (``cases list``, ``cases show``, ``cases verify``)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from mailgateway.cases.story import french_datetime_of, label, labelled, story
from mailgateway.cases.timeline import ChainBreak
from mailgateway.cases.verify import ledger_heads, verify_references
from mailgateway.clock import aware
from mailgateway.store.models import Case, CaseEvent, Indicator

# Control characters a declarant wrote (« CH \x1b]0;PWNED\x07\x1b[2J ») never reach the operator's
# terminal as such: an escape sequence retitles the window, clears the screen or rewrites lines of
# the output (outside tester). Shown as « \x1b »; line ends are the views' own.
_TERMINAL_SAFE = {c: f"\\x{c:02x}" for c in (*range(0x20), *range(0x7F, 0xA0)) if c != 0x0A}


def terminal_safe(text: str) -> str:
    """``text`` with every control character but the line end written as ``\\xNN``."""
    return text.translate(_TERMINAL_SAFE)


def _iso(value: Any) -> str | None:
    return aware(value).isoformat() if value is not None else None


def case_summary(case: Case) -> dict[str, Any]:
    return {
        "reference": case.reference,
        "region": case.region,
        "kind": case.kind,
        "status": case.status,
        "severity": case.severity,
        "title": case.title,
        "finess": case.finess,
        "establishment": case.establishment,
        "category": case.category,
        "incident_type": case.incident_type,
        "nature": case.nature,
        "tlp": case.tlp,
        "declarant": case.declarant,
        "assignee": case.assignee,
        "opened_at": _iso(case.opened_at),
        "updated_at": _iso(case.updated_at),
        "acknowledged_at": _iso(case.acknowledged_at),
        "closed_at": _iso(case.closed_at),
    }


def list_cases(session: Session, *, status: str | None = None, region: str | None = None,
               limit: int = 1000) -> list[dict[str, Any]]:
    stmt = select(Case)
    if status:
        stmt = stmt.where(Case.status == status.upper())
    if region:
        stmt = stmt.where(Case.region == region.upper())
    stmt = stmt.order_by(Case.opened_at.desc(), Case.id.desc())
    if limit > 0:
        stmt = stmt.limit(limit)
    return [case_summary(c) for c in session.scalars(stmt)]


def format_case_list(rows: list[dict[str, Any]]) -> str:
    """``cases list``: a header line, then one case per line; statuses and severities in French,
    instants in Paris time. ``--json`` is the form for scripts."""
    width = max([len("RÉFÉRENCE"), *(len(r["reference"]) for r in rows)])
    lines = [f"{'RÉFÉRENCE':<{width}}  {'STATUT':<18} {'GRAVITÉ':<14} {'OUVERT LE':<18}  {'MIS À JOUR LE':<18}  TITRE"]
    for r in rows:
        lines.append(f"{r['reference']:<{width}}  {label(r['status']):<18} {label(r['severity']):<14} "
                     f"{french_datetime_of(r['opened_at']):<18}  {french_datetime_of(r['updated_at']):<18}  "
                     f"{labelled(r['title'] or '')}")
    return terminal_safe("\n".join(lines))


def show_case(session: Session, reference: str) -> dict[str, Any] | None:
    case = session.scalar(select(Case).where(Case.reference == reference.strip().upper()))
    if case is None:
        return None
    events = list(session.scalars(select(CaseEvent).where(CaseEvent.case_id == case.id).order_by(CaseEvent.seq)))
    indicators = session.scalars(select(Indicator).where(Indicator.case_id == case.id).order_by(Indicator.id))
    merged = session.get(Case, case.merged_into_id) if case.merged_into_id else None
    linked = session.get(Case, case.linked_case_id) if case.linked_case_id else None
    return {
        **case_summary(case),
        "fields": case.fields,
        "merged_into": merged.reference if merged else None,
        "linked_case": linked.reference if linked else None,
        "indicators": [{"type": i.type, "value": i.value} for i in indicators],
        "timeline": [
            {"seq": e.seq, "at": _iso(e.at), "actor": e.actor, "type": e.type, "data": e.data,
             "inbound_id": e.inbound_id, "outbound_id": e.outbound_id, "hash": e.hash}
            for e in events
        ],
        # The same French story as « #statut REF » by mail (cases/story.py), oldest first.
        "story": story(events),
    }


def format_case(detail: dict[str, Any]) -> str:
    """``cases show REF``: the case in French, then its story (the same lines as « #statut REF »)."""
    lines = [
        f"{detail['reference']} — {labelled(detail['title'] or '')}",
        f"  statut : {label(detail['status'])}   gravité : {label(detail['severity'])}   région : {detail['region']}"
        + (f"   TLP:{detail['tlp']}" if detail.get("tlp") else ""),
        f"  structure : {detail['establishment'] or '—'} (FINESS {detail['finess'] or '—'})",
        f"  déclarant : {detail['declarant'] or '—'}   assigné à : {detail['assignee'] or '—'}",
        f"  ouvert le {french_datetime_of(detail['opened_at'])}, dernière activité le "
        f"{french_datetime_of(detail['updated_at'])}",
    ]
    if detail.get("merged_into"):
        # A transfer to another region also points the old case at the new one (so replies follow
        # it): said as a transfer, not a merge (outside tester).
        moved = any(event["type"] == "transfert" for event in detail.get("timeline", ()))
        lines.append(f"  {'transféré à' if moved else 'fusionné dans'} : {detail['merged_into']}")
    if detail.get("linked_case"):
        lines.append(f"  dossier lié : {detail['linked_case']}")
    lines.append("  chronologie :")
    lines += [f"    {line}" for line in detail["story"]]
    return terminal_safe("\n".join(lines))


def verify_cases(session: Session, reference: str | None) -> tuple[list[ChainBreak], int]:
    """Problems found by ``cases verify`` (first one first) and the number of cases checked."""
    return verify_references(session, reference)


def audit_heads(session: Session) -> list[tuple[str, int, str]]:
    """(region, ledger entries, head hash): printed by ``cases verify`` to be anchored elsewhere."""
    return ledger_heads(session)
