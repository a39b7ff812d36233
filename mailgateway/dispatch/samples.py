"""Sample data for every mail template, rendered by ``check-config`` to catch template errors early."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from mailgateway.dispatch.compose import MailSpec
from mailgateway.dispatch.render import Renderer
from mailgateway.dispatch.template_samples import EXTRA
from mailgateway.settings import Settings

SAMPLE_CASE: dict[str, Any] = {
    "reference": "SSI-ARA-2026-0001", "kind": "incident", "status": "RECU", "severity": "NON_QUALIFIE",
    "title": "Centre hospitalier — RANCONGICIEL", "establishment": "Centre hospitalier", "finess": "690781810",
    "assignee": None, "declarant": "dsi@chu-exemple.fr", "tlp": None,
}


def sample_context(settings: Settings) -> dict[str, Any]:
    region = settings.regions[0] if settings.regions else None
    return {
        "service_name": settings.outbound.service_name,
        "region_name": region.name if region else "Région",
        "region_address": region.address if region else "ssi@example.test",
        "region_code": region.code if region else "ARA",
        "case": SAMPLE_CASE,
        "received_at_fr": "27/11/2026 à 08:30",
        "subject": "Incident de sécurité",
        "declaration": {"finess": "690781810", "structure": "Centre hospitalier", "category": "ETABLISSEMENT_SANTE",
                        "incident_type": "RANCONGICIEL", "nature": "MALVEILLANT", "severity": "GRAVE",
                        "detected_at": "2026-11-27T08:30:00+01:00", "impacts": ["SOINS"], "summary": "Résumé",
                        "measures": None, "declarant": "dsi@chu-exemple.fr"},
        "alert": None,
        "establishment": None,
        "declarant": "dsi@chu-exemple.fr",
        "sender": {"address": "dsi@chu-exemple.fr", "authenticated": False, "method": None, "domain": "chu-exemple.fr"},
        "indicators": [{"type": "url", "value": "http://exemple.test/x"}],
        "results": [{"applied": True, "line": "#assigner moi", "message": None}],
        "refused_all": None,
        "confirmation": None,
        "help": None,
    }


def sample_mails(settings: Settings, templates: tuple[str, ...] | None = None,
                 extra: Mapping[str, Mapping[str, Any]] | None = None) -> Iterator[MailSpec]:
    """One sample mail per template; ``extra`` adds the contexts of templates that need more than
    ``sample_context`` (``template_samples.EXTRA`` is the sending machinery's and the features')."""
    renderer = Renderer(settings.outbound.templates_dir)
    names = templates or tuple(sorted(
        n.removesuffix(".subject.j2") for n in renderer._text.list_templates(extensions=["j2"])
        if n.endswith(".subject.j2")
    ))
    ctx = sample_context(settings)
    extra = {**EXTRA, **(extra or {})}
    for name in names:
        yield MailSpec(template=name, context={**ctx, **extra.get(name, {})}, to="dsi@chu-exemple.fr",
                       from_address=ctx["region_address"], from_name="ARS", idempotency_key=f"check:{name}")

