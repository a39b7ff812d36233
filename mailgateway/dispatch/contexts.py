"""Template contexts every mail shares: who writes (the region) and what about (the case).

Feature code builds its own context on top of these two; ``samples.py`` renders every template
with the same keys for ``check-config``.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from mailgateway.clock import PARIS, french_datetime
from mailgateway.dispatch.render import libelle
from mailgateway.settings import Settings
from mailgateway.store.models import Case


def region_context(settings: Settings, region: str) -> dict[str, Any]:
    """The service and the region a mail comes from (names, address, code)."""
    reg = settings.region(region)
    return {
        "service_name": settings.outbound.service_name,
        "region_name": reg.name if reg else region,
        "region_address": reg.address if reg else "",
        "region_code": region,
    }


def french_title(title: str | None) -> str | None:
    """A case title with every enumeration code word replaced by its French label."""
    if not title:
        return title
    return " ".join(str(libelle(word)) for word in title.split(" "))


def case_context(case: Case) -> dict[str, Any]:
    """The fields of a case a template may show."""
    return {
        "reference": case.reference,
        "kind": case.kind,
        "status": case.status,
        "severity": case.severity,
        # The title joins the structure and the incident type's code ("CH X — RANCONGICIEL"):
        # people read the French label (« rançongiciel »), never the enumeration code.
        "title": french_title(case.title),
        "establishment": case.establishment,
        "finess": case.finess,
        "category": case.category,
        "incident_type": case.incident_type,
        "nature": case.nature,
        "assignee": case.assignee,
        "declarant": case.declarant,
        "tlp": case.tlp,
    }


def french_instant(value: object) -> str | None:
    """« 27/11/2026 à 08:30 » (Paris) of an ISO 8601 instant kept in a case's fields (a declaration's
    ``detected_at``): mail shows people French dates, never ISO timestamps. A value that is not an
    instant is returned as it was written; a date without a time is shown as a French date."""
    if not isinstance(value, str) or not value.strip():
        return None
    try:
        parsed = datetime.fromisoformat(value.strip())
    except ValueError:
        return value
    if len(value.strip()) <= 10:  # a date alone: no time to convert
        return parsed.strftime("%d/%m/%Y")
    # A declaration's time without an offset was written in France: Paris time, not UTC.
    return french_datetime(parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=PARIS))
