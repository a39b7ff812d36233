"""A public mailbox provider's domain exempts nobody (directory/known.py; outside tester finding:
one establishment's SSI contact at a provider made every user of that provider exempt from the
staff-notification caps). Only the exact address — the directory contact, a staff member — is known."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from sqlalchemy.orm import Session

from mailgateway.directory.known import is_known_domain, is_public_mailbox_domain
from mailgateway.store.engine import transaction
from mailgateway.store.models import Contact, Establishment
from tests.directory.test_known_domains import one_establishment, settings
from tests.support import casemail
from tests.support.casegateway import gateway_from, settings_data
from tests.support.db import at_head
from tests.support.dkim import rsa_key, zone

NOW = datetime(2026, 11, 30, 9, 0, tzinfo=UTC)


@pytest.fixture
def directory(session: Session) -> Session:
    return one_establishment(session, name="Clinique", category="CL", rssi="Clinique.SSI@Orange.fr",
                             dsi="dsi@clinique-parc.test", staff="astreinte.ars@gmail.com")


@pytest.mark.parametrize("domain", ["gmail.com", "orange.fr", "wanadoo.fr", "laposte.net", "sfr.fr", "ORANGE.FR.",
                                    "gmx.fr", "medecin.mssante.fr", "mailo.com", "aol.fr", "libertysurf.fr",
                                    "tiscali.fr", "nordnet.fr", "mail.orange.fr", "tuta.com", "ik.me", "riseup.net"])
def test_providers_are_public(domain: str) -> None:
    assert is_public_mailbox_domain(domain)


@pytest.mark.parametrize("domain", ["chu-lyon.fr", "aphp.fr", "ars.sante.fr", "esante.gouv.fr", "chu-lyon.mssante.fr",
                                    "fr", "com"])
def test_institutions_are_not(domain: str) -> None:
    assert not is_public_mailbox_domain(domain)


def test_only_the_contacts_own_address_at_a_provider_is_known(directory: Session) -> None:
    s = settings()
    assert is_known_domain(s, directory, "orange.fr", "clinique.ssi@orange.fr")
    assert not is_known_domain(s, directory, "orange.fr", "stranger@orange.fr")
    assert not is_known_domain(s, directory, "orange.fr")
    # An address of another domain does not make the provider known either.
    assert not is_known_domain(s, directory, "orange.fr", "clinique.ssi@orange.fr.evil.test")
    # An institution's domain stays known by its contacts, whoever writes from it.
    assert is_known_domain(s, directory, "clinique-parc.test", "rssi@clinique-parc.test")


def test_a_staff_member_at_a_provider_makes_that_address_known_not_the_provider(directory: Session) -> None:
    s = settings()
    assert is_known_domain(s, directory, "gmail.com", "astreinte.ars@gmail.com")
    assert not is_known_domain(s, directory, "gmail.com", "someone@gmail.com")


def test_strangers_signing_at_a_provider_are_capped_by_mail(sqlite_url: str) -> None:
    """By mail: a clinic's SSI contact is at the provider; strangers at the same provider, each
    genuinely signed by the provider's key, are capped like any signing domain."""
    provider = rsa_key("rsa", "orange.fr")
    data = settings_data(at_head(sqlite_url))
    data["outbound"] = {"bounce_domain": "ars.test", "staff_notifications_per_sender_per_hour": 2}
    data["authentication"]["static_keys"] = {**data["authentication"]["static_keys"], **zone(provider)}
    for gw in gateway_from(data):
        with transaction(gw.app.factory) as s:
            s.add(Establishment(finess="690781810", name="Clinique", category="CL", departement="69",
                                region="ARA", source="finess", updated_at=NOW))
            s.flush()
            s.add(Contact(finess="690781810", address="clinique.ssi@orange.fr", role="rssi", status="active",
                          bounce_score=0.0, created_at=NOW, updated_at=NOW))
        for n in range(5):
            gw.feed(casemail.sign(casemail.declaration(500 + n, sender=f"inconnu{n}@orange.fr"), provider))
        staff = len({r.recipient for r in gw.outbound("notification_equipe")})
        assert len(gw.outbound("notification_equipe")) == 2 * staff  # capped at 2, as one signing domain
        # The clinic's own contact is still exempt.
        for n in range(3):
            gw.feed(casemail.sign(casemail.declaration(600 + n, sender="clinique.ssi@orange.fr"), provider))
        assert len(gw.outbound("notification_equipe")) == (2 + 3) * staff
