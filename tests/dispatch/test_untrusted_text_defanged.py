"""Text an outsider chose (a structure name, a quarantined subject) reaches staff as text, its
links defanged (outside attack: « Cliquez https://evil.test/login pour valider » as the
structure name became a clickable link in the subject of a DKIM-signed agency mail)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support import casemail
from tests.support.casegateway import Gateway, make_gateway


@pytest.fixture
def gw(sqlite_url: str) -> Iterator[Gateway]:
    yield from make_gateway(sqlite_url)


def test_a_link_in_a_structure_name_is_defanged_in_the_notification_subject(gw: Gateway) -> None:
    body = ("Bonjour,\n\nNuméro FINESS : 690781810\n"
            "Nom de la structure : Cliquez https://evil.test/login pour valider\n"
            "Type d'incident : rançongiciel\nGravité : grave\n")
    raw = casemail.message(sender="dsi@chu.test", to="ssi-ara@ars.test", subject="Déclaration", body=body)
    assert gw.feed(raw).status == "processed"
    subject = str(casemail.parse(gw.last("notification_equipe", "agent@ars.test").raw)["Subject"])
    assert "https://evil.test" not in subject and "hxxps://evil[.]test/login" in subject
