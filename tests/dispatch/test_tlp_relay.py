"""TLP fails closed on the relay path (docs/guarantees.md): a genuine, DKIM-signed ACSS alert whose marking is
unknown, missing or AMBRE+STRICT is never relayed to establishments, and staff see the marking.

Before: "TLP:PURPLE" and an unmarked alert were relayed as TLP:CLEAR; "TLP:AMBRE+STRICT" was read
as AMBER and relayed to the AMBER allow-list. The establishments' domains are on that allow-list
here, so that an AMBER reading would reach them.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from sqlalchemy import select

from mailgateway.app import App, build_app
from mailgateway.bulletins.fanout import BulletinError, relay_alert
from mailgateway.clock import FixedClock
from mailgateway.intake.accept import accept_in
from mailgateway.store.engine import transaction
from mailgateway.store.models import Case, OutboundMessage
from tests.support import casemail
from tests.support.bulletins import bulletin_settings, fill_directory
from tests.support.dkim import GeneratedKey, rsa_key, zone

NOW = datetime(2026, 11, 27, 9, 0, tzinfo=UTC)
ESTABLISHMENTS = ["ssi@e0.test", "ssi@e1.test"]


@pytest.fixture(scope="module")
def acss_key() -> GeneratedKey:
    return rsa_key("rsa", "esante.test")


@pytest.fixture
def app(sqlite_url: str, acss_key: GeneratedKey) -> Iterator[App]:
    settings = bulletin_settings(
        sqlite_url,
        authentication={"nameservers": ["127.0.0.1"], "dns_timeout_seconds": 0.1, "acss_domains": ["esante.test"],
                        "static_keys": zone(acss_key)},
        acss={"address": "acss@esante.test"},
        outbound={"bounce_domain": "ars.test", "amber_allowed_domains": ["e0.test", "e1.test"]},
    )
    application = build_app(settings, clock=FixedClock(NOW))
    with transaction(application.factory) as s:
        fill_directory(s, NOW, 2, category="LBM")
    yield application
    application.close()


def _alert(marking: str, key: GeneratedKey) -> bytes:
    body = (f"{marking}\n\nRéférence : CERTFR-2026-ALE-012\nTitre : Vulnérabilité critique dans un VPN\n"
            "Structures concernées : laboratoires de biologie médicale\n\nRésumé :\nMettre à jour le VPN.\n")
    raw = casemail.message(sender="CERT Santé <alerte@esante.test>", to="ssi-ara@ars.test",
                           subject="Alerte - Vulnérabilité critique dans un VPN CERTFR-2026-ALE-012", body=body)
    return casemail.sign(raw, key)


def _receive(app: App, raw: bytes) -> Case:
    with transaction(app.factory) as s:
        inbound = accept_in(s, raw, source="cli", now=NOW).inbound_id
    result = app.processor.process(inbound)
    assert result.status == "processed" and result.case_ref, result
    with app.factory() as s:
        case = s.scalar(select(Case).where(Case.reference == result.case_ref))
        assert case is not None and case.kind == "alert" and case.status == "A_DIFFUSER"  # authentic
        s.expunge(case)
        return case


@pytest.mark.parametrize(("marking", "shown"), [
    ("TLP:PURPLE", "« PURPLE », non reconnu"),
    ("TLP: ???", "non reconnu"),
    ("Diffusion : restreinte", "« restreinte », non reconnu"),
    ("Merci de relayer.", "aucun marquage TLP"),
    ("TLP:AMBRE+STRICT", "TLP : AMBER+STRICT"),
])
def test_an_alert_whose_marking_is_not_understood_is_never_relayed_to_establishments(
    app: App, acss_key: GeneratedKey, marking: str, shown: str
) -> None:
    case = _receive(app, _alert(marking, acss_key))
    assert case.tlp == "AMBER+STRICT"
    with app.factory() as s:
        notification = s.scalars(select(OutboundMessage).where(OutboundMessage.kind == "notification_equipe")).first()
        assert notification is not None
        assert shown in casemail.text_of(notification.raw)  # staff see the marking as written
    with transaction(app.factory) as s:
        stored = s.get(Case, case.id)
        assert stored is not None
        # Refused outright, not "relayed to 0 establishments" (docs/guarantees.md), and the case stays put.
        with pytest.raises(BulletinError, match=r"TLP:AMBER\+STRICT"):
            relay_alert(app.env, s, stored, "agent@ars.test")
        assert stored.status == "A_DIFFUSER"
    with app.factory() as s:
        relayed = set(s.scalars(select(OutboundMessage.recipient).where(OutboundMessage.kind == "alerte_relais")))
    assert not relayed & set(ESTABLISHMENTS)


def test_a_clear_alert_is_still_relayed(app: App, acss_key: GeneratedKey) -> None:
    case = _receive(app, _alert("TLP:BLANC", acss_key))
    assert case.tlp == "CLEAR"
    with transaction(app.factory) as s:
        stored = s.get(Case, case.id)
        assert stored is not None
        relay_alert(app.env, s, stored, "agent@ars.test")
    with app.factory() as s:
        relayed = set(s.scalars(select(OutboundMessage.recipient).where(OutboundMessage.kind == "alerte_relais")))
    assert relayed == set(ESTABLISHMENTS)
