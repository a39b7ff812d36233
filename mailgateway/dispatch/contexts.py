"""Template contexts every mail shares: who writes (the region) and what about (the case).

Feature code builds its own context on top of these two; ``samples.py`` renders every template
with the same keys for ``check-config``.
"""

from __future__ import annotations

from typing import Any

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


def case_context(case: Case) -> dict[str, Any]:
    """The fields of a case a template may show."""
    return {
        "reference": case.reference,
        "kind": case.kind,
        "status": case.status,
        "severity": case.severity,
        "title": case.title,
        "establishment": case.establishment,
        "finess": case.finess,
        "assignee": case.assignee,
        "declarant": case.declarant,
        "tlp": case.tlp,
    }
