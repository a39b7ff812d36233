"""build_context turns Settings into the analysis context."""

from __future__ import annotations

from mailgateway.mail.context import build_context
from mailgateway.settings import parse_settings


def test_build_context_from_settings() -> None:
    settings = parse_settings(
        {
            "regions": [
                {"code": "ARA", "name": "ARA", "address": "SSI-ARA@ars.sante.fr"},
                {"code": "PDL", "name": "PDL", "address": "ssi-pdl@ars.sante.fr"},
            ],
            "staff": [
                {"address": "Referent@ars.sante.fr", "region": "ARA"},
                {"address": "referent@ars.sante.fr", "region": "PDL"},
            ],
            "labels": {"incident_types": {"RANCONGICIEL": ["blocage crypto"]}},
        }
    )
    ctx = build_context(settings, thread_lookup=lambda ids: "SSI-ARA-2026-0001")
    assert ctx.region_addresses == {"ssi-ara@ars.sante.fr": "ARA", "ssi-pdl@ars.sante.fr": "PDL"}
    assert {"ssi-ara@ars.sante.fr", "bounces@ars.sante.fr"} <= ctx.own_addresses
    assert ctx.staff == {"referent@ars.sante.fr": frozenset({"ARA", "PDL"})}
    assert ctx.loop_token == "mailgateway:ars.sante.fr"
    assert ctx.acss_domains == ("esante.gouv.fr",)
    assert ctx.extra_incident_types == {"RANCONGICIEL": ("blocage crypto",)}
    assert ctx.thread_lookup(["x"]) == "SSI-ARA-2026-0001"
    assert ctx.default_region is None
