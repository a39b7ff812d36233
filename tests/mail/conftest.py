"""Shared fixtures of the mail analysis tests."""

from __future__ import annotations

import pytest

from mailgateway.mail.context import AnalysisContext, EstablishmentInfo
from mailgateway.mail.facts import SenderVerdict
from mailgateway.mail.labels import Labels, load_labels

STAFF = "referent.ssi@ars-sante.test"


def _establishments(finess: str) -> EstablishmentInfo | None:
    if finess == "690781810":
        return EstablishmentInfo(finess, "CH Exemple (annuaire)", "ETABLISSEMENT_SANTE", "69", "ARA")
    if finess == "690000880":
        return EstablishmentInfo(finess, "Laboratoire Exemple", "611", "69", "ARA")
    return None


@pytest.fixture
def ctx() -> AnalysisContext:
    return AnalysisContext(
        region_addresses={"ssi-ara@ars-sante.test": "ARA", "ssi-pdl@ars-sante.test": "PDL"},
        own_addresses=frozenset({"ssi-ara@ars-sante.test", "ssi-pdl@ars-sante.test", "bounces@ars-sante.test"}),
        bounce_domain="ars-sante.test",
        loop_token="mailgateway:ars-sante.test",
        staff={STAFF: frozenset({"ARA"}), "agent.pdl@ars-sante.test": frozenset({"PDL"})},
        acss_domains=("esante.gouv.fr",),
        thread_lookup=lambda ids: "SSI-ARA-2026-0099" if "out-99@ars-sante.test" in ids else None,
        establishment_lookup=_establishments,
    )


@pytest.fixture
def labels() -> Labels:
    return load_labels()


SIGNED = frozenset({"from", "to", "cc", "subject", "date", "message-id", "in-reply-to", "references",
                    "content-type", "content-transfer-encoding", "mime-version"})


@pytest.fixture
def staff_verdict() -> SenderVerdict:
    # A DKIM pass whose h= covers the steering headers, as mail clients' signers produce (docs/guarantees.md:
    # an uncovered Subject/In-Reply-To/References steers nothing).
    return SenderVerdict(
        address=STAFF, domain="ars-sante.test", authenticated=True, method="dkim", auth_domain="ars-sante.test",
        signed_headers=SIGNED,
    )
