"""``#diffuser`` / ``#confirmer`` on an ACSS alert case: a relay nobody may receive is refused with
its reason, withheld establishments are counted, and pending commands are not shown as applied.

Before: a TLP:AMBER (or AMBER+STRICT: unknown markings fail closed to it) alert got a token with no
warning, then "[appliquée] #confirmer … — alerte relayée à 0 établissement(s)", and the case went to
DIFFUSEE; "#clore" on a GRAVE case and "#diffuser" were listed "[appliquée]" while waiting for a token.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import func, select, update

from mailgateway.app import build_app
from mailgateway.settings import parse_settings
from mailgateway.store.engine import transaction
from mailgateway.store.models import Bulletin, Case, Contact
from tests.support.bulletins import fill_directory
from tests.support.casegateway import NOW, Gateway, settings_data
from tests.support.db import at_head

ESTABLISHMENTS = 2


def _gateway(url: str, **outbound: Any) -> Iterator[Gateway]:
    from mailgateway.clock import FixedClock

    clock = FixedClock(NOW)
    data = settings_data(at_head(url))
    data["outbound"] = outbound
    app = build_app(parse_settings(data), clock=clock)
    with transaction(app.factory) as s:
        fill_directory(s, NOW, ESTABLISHMENTS, category="LBM")  # ssi@e0.test, ssi@e1.test
    try:
        yield Gateway(app, clock)
    finally:
        app.close()


@pytest.fixture
def gw(sqlite_url: str) -> Iterator[Gateway]:
    yield from _gateway(sqlite_url)


def alert(gw: Gateway, tlp: str | None) -> str:
    ref = gw.declare(9)
    with transaction(gw.app.factory) as s:
        case = s.scalars(select(Case).where(Case.reference == ref)).one()
        case.kind, case.status, case.tlp = "alert", "A_DIFFUSER", tlp
        case.fields = {"alert": {"authentic": True, "title": "Vulnérabilité critique", "targets": ["LBM"],
                                 "tlp": tlp, "reference": "CERTFR-2026-ALE-001", "cves": ["CVE-2026-1234"]}}
    return ref


def token_of(text: str) -> str:
    match = re.search(r"#confirmer ([0-9a-f]{12})", text)
    assert match, text
    return match.group(1)


def bulletins(gw: Gateway) -> int:
    with gw.app.factory() as s:
        return int(s.scalar(select(func.count()).select_from(Bulletin)) or 0)


@pytest.mark.parametrize(("tlp", "shown"), [("AMBER", "TLP:AMBER"), ("AMBER+STRICT", "TLP:AMBER+STRICT"),
                                            (None, "TLP:AMBER+STRICT"), ("PURPLE", "TLP:AMBER+STRICT")])
def test_diffuser_is_refused_at_once_when_the_tlp_lets_no_establishment_receive_the_alert(
        gw: Gateway, tlp: str | None, shown: str) -> None:
    ref = alert(gw, tlp)
    gw.command(ref, "#diffuser\n")
    text = gw.receipt_text()
    assert "[refusée]  #diffuser" in text and "[appliquée]" not in text
    assert "#confirmer" not in text  # no token for a relay that would reach nobody
    assert shown in text and f"aucun des établissements ciblés ({ESTABLISHMENTS})" in text
    assert "TLP:CLEAR ou TLP:GREEN" in text and "#bulletin" in text  # what to do instead
    if tlp == "AMBER":
        assert "amber_allowed_domains" in text
    assert gw.case(ref).status == "A_DIFFUSER" and bulletins(gw) == 0


def test_confirmer_is_refused_and_the_case_keeps_its_status_when_nobody_can_receive_the_relay(gw: Gateway) -> None:
    ref = alert(gw, "CLEAR")
    gw.command(ref, "#diffuser\n")
    token = token_of(gw.receipt_text())
    with transaction(gw.app.factory) as s:  # the marking is corrected to AMBER meanwhile
        case = s.scalars(select(Case).where(Case.reference == ref)).one()
        case.tlp = "AMBER"
        case.fields = {"alert": {**case.fields["alert"], "tlp": "AMBER"}}
    gw.command(ref, f"#confirmer {token}\n")
    text = gw.receipt_text()
    assert f"[refusée]  #confirmer {token}" in text and "relayée à 0" not in text and "TLP:AMBER" in text
    assert gw.case(ref).status == "A_DIFFUSER" and bulletins(gw) == 0
    assert not gw.outbound("alerte_relais")


def test_confirmer_is_refused_when_every_address_is_refused_for_another_reason(gw: Gateway) -> None:
    ref = alert(gw, "CLEAR")
    gw.command(ref, "#diffuser\n")
    token = token_of(gw.receipt_text())
    with transaction(gw.app.factory) as s:  # only robot addresses left: the Mailer refuses them all
        s.execute(update(Contact).values(address=func.replace(Contact.address, "ssi@", "no-reply@")))
    gw.command(ref, f"#confirmer {token}\n")
    text = gw.receipt_text()
    assert f"[refusée]  #confirmer {token}" in text and "alerte non relayée" in text
    assert gw.case(ref).status == "A_DIFFUSER" and bulletins(gw) == 0  # the draft bulletin was undone


def test_establishments_withheld_by_the_tlp_are_counted_in_the_receipts(sqlite_url: str) -> None:
    for gw in _gateway(sqlite_url, amber_allowed_domains=["e0.test"]):
        ref = alert(gw, "AMBER")
        gw.command(ref, "#diffuser\n")
        text = gw.receipt_text()
        assert "[en attente de confirmation] #diffuser" in text and "atteindra 1 établissement " in text
        assert "1 établissement retenu par le TLP sur 2" in text and "amber_allowed_domains" in text
        gw.command(ref, f"#confirmer {token_of(text)}\n")
        text = gw.receipt_text()
        assert "[appliquée] #confirmer" in text and "alerte relayée à 1 établissement" in text
        assert "1 établissement retenu par le TLP sur 2" in text
        assert gw.case(ref).status == "DIFFUSEE"
        assert {r.recipient for r in gw.outbound("alerte_relais")} == {"ssi@e0.test"}


def test_a_command_waiting_for_its_token_is_not_shown_as_applied(gw: Gateway) -> None:
    ref = gw.declare()
    gw.command(ref, "#qualifier grave\n#clore\n")
    text = gw.receipt_text()
    assert "[appliquée] #qualifier grave" in text
    assert "[en attente de confirmation] #clore" in text and "[appliquée] #clore" not in text
    assert f"#confirmer {token_of(text)}" in text and "pas encore appliquée" in text
    assert gw.case(ref).status != "CLOS"
    ref = alert(gw, "CLEAR")
    gw.command(ref, "#diffuser\n")
    text = gw.receipt_text()
    assert "[en attente de confirmation] #diffuser" in text and "[appliquée]" not in text
    gw.command(ref, f"#confirmer {token_of(text)}\n")
    assert "[appliquée] #confirmer" in gw.receipt_text() and gw.case(ref).status == "DIFFUSEE"
