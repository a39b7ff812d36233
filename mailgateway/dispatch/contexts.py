"""Template contexts every mail shares: who writes (the region) and what about (the case).

Feature code builds its own context on top of these two; ``samples.py`` renders every template
with the same keys for ``check-config``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from mailgateway.clock import french_instant as french_instant  # re-exported: templates' contexts use it
from mailgateway.dispatch.render import defang, libelle, type_indicateur
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


def staff_indicators(indicators: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Indicators for a mail people read: the value defanged (« hxxps://evil[.]example/x »), the
    type in French (« adresse IP »). The refanged value stays in the machine-readable files only
    (dispatch/indicators_out.py): a clickable link to a malicious site must never reach staff."""
    return [{**i, "value": defang(i.get("value")), "type_code": i.get("type"),
             "type": type_indicateur(i.get("type"))} for i in indicators]
