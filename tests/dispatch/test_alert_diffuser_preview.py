"""``#diffuser`` on an ACSS alert says what the relay will do before asking for ``#confirmer``
(issue 17), as a bulletin's preview does: how many establishments are targeted and will receive
it, a sample of them, and those the TLP keeps out with the rule and the setting that decides.

A relay nobody may receive (TLP:AMBER, no establishment domain in ``[outbound]
amber_allowed_domains``) changes nothing: no token, no bulletin, no DIFFUSEE, and staff read why.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import func, select

from mailgateway.app import build_app
from mailgateway.clock import FixedClock
from mailgateway.settings import parse_settings
from mailgateway.store.engine import transaction
from mailgateway.store.models import Bulletin, Case, Confirmation
from tests.support.bulletins import fill_directory
from tests.support.casegateway import NOW, Gateway, settings_data
from tests.support.db import at_head


def _gateway(url: str, *, sample: int = 10, **outbound: Any) -> Iterator[Gateway]:
    data = settings_data(at_head(url))
    data["outbound"] = outbound
    data["bulletins"] = {"preview_sample": sample}
    app = build_app(parse_settings(data), clock=FixedClock(NOW))
    with transaction(app.factory) as s:
        fill_directory(s, NOW, 3, category="LBM")  # ssi@e0.test, ssi@e1.test, ssi@e2.test
    try:
        yield Gateway(app, FixedClock(NOW))
    finally:
        app.close()


@pytest.fixture
def gw(sqlite_url: str) -> Iterator[Gateway]:
    yield from _gateway(sqlite_url, amber_allowed_domains=["e0.test"])


def alert(gw: Gateway, tlp: str) -> str:
    ref = gw.declare(7)
    with transaction(gw.app.factory) as s:
        case = s.scalars(select(Case).where(Case.reference == ref)).one()
        case.kind, case.status, case.tlp = "alert", "A_DIFFUSER", tlp
        case.fields = {"alert": {"authentic": True, "title": "Vulnérabilité critique", "targets": ["LBM"],
                                 "tlp": tlp, "reference": "CERTFR-2026-ALE-002", "cves": []}}
    return ref


def count(gw: Gateway, model: type[Any]) -> int:
    with gw.app.factory() as s:
        return int(s.scalar(select(func.count()).select_from(model)) or 0)


def test_the_preview_comes_before_the_token(gw: Gateway) -> None:
    ref = alert(gw, "AMBER")
    gw.command(ref, "#diffuser\n")
    text = gw.receipt_text()
    token = re.search(r"#confirmer ([0-9a-f]{12})", text)
    assert token is not None
    preview = text[: token.start()]
    assert "[en attente de confirmation] #diffuser" in preview and "[appliquée]" not in text
    assert "Aperçu de la diffusion (alerte TLP:AMBER)" in preview
    assert "l'alerte TLP:AMBER atteindra 1 établissement sur 3" in preview
    assert ("3 établissements ciblés ; 1 recevront l'alerte ; 2 établissements retenus par le TLP sur 3"
            in preview)
    assert "Laboratoire numéro 0 (FINESS 690000000, 69) : ssi@e0.test" in preview  # the sample
    refused = preview[preview.index("Refusés par le TLP"):]
    assert "[outbound] amber_allowed_domains" in refused and "e0.test" in refused
    assert "ssi@e1.test" in refused and "ssi@e2.test" in refused
    assert gw.case(ref).status == "A_DIFFUSER" and count(gw, Bulletin) == 0  # nothing sent yet
    gw.command(ref, f"#confirmer {token.group(1)}\n")
    assert "alerte relayée à 1 établissement" in gw.receipt_text()
    assert {r.recipient for r in gw.outbound("alerte_relais")} == {"ssi@e0.test"}


def test_the_sample_is_bounded_and_says_how_many_more(sqlite_url: str) -> None:
    for gw in _gateway(sqlite_url, sample=1):
        ref = alert(gw, "GREEN")
        gw.command(ref, "#diffuser\n")
        text = gw.receipt_text()
        assert "3 établissements ciblés ; 3 recevront l'alerte." in text
        assert "ssi@e0.test" in text and "ssi@e1.test" not in text and "Refusés" not in text


def test_amber_with_no_allowed_domain_changes_nothing_and_names_the_setting(sqlite_url: str) -> None:
    for gw in _gateway(sqlite_url):
        ref = alert(gw, "AMBER")
        gw.command(ref, "#diffuser\n")
        text = gw.receipt_text()
        assert "[refusée]  #diffuser" in text and "aucun des établissements ciblés (3)" in text
        assert "[outbound] amber_allowed_domains" in text and "relayée à 0" not in text
        assert "#confirmer" not in text
        assert gw.case(ref).status == "A_DIFFUSER"
        assert count(gw, Bulletin) == 0 and count(gw, Confirmation) == 0 and not gw.outbound("alerte_relais")


def test_statut_diffusee_cannot_pretend_an_alert_was_relayed(gw: Gateway) -> None:
    ref = alert(gw, "GREEN")
    gw.command(ref, "#statut diffusee\n")
    text = gw.receipt_text()
    assert "[refusée]  #statut diffusee" in text and "utilisez #diffuser" in text
    assert gw.case(ref).status == "A_DIFFUSER"
