"""``#cible`` lines as staff write them (issue 17): each line is one set of establishments and
several lines are a union; French keys, accented or not, with comma-separated values; errors in
French naming the key as written. The bulletin text is the whole text (format=flowed unwrapped).
``#aide`` documents ``#bulletin``, ``#cible`` and ``#lu``.

Before: every clause of every line was joined with "and" (two lines selected their intersection,
usually nobody), ``categorie=LBM,ESMS`` was refused, and ``#aide`` did not mention bulletins.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import select

from mailgateway.store.engine import transaction
from mailgateway.store.models import Bulletin
from tests.support import casemail
from tests.support.bulletins import fill_directory, finess
from tests.support.casegateway import NOW, Gateway, make_gateway

BODY = ("Une campagne d'hameçonnage vise actuellement les laboratoires et les établissements médico-sociaux "
        "de la région : ne cliquez sur aucun lien reçu au sujet de résultats d'analyses.")


@pytest.fixture
def gw(sqlite_url: str) -> Iterator[Gateway]:
    for gateway in make_gateway(sqlite_url):
        with transaction(gateway.app.factory) as s:
            fill_directory(s, NOW, 3, category="LBM", departement="69")  # e0..e2
            fill_directory(s, NOW, 2, category="ESMS", departement="01", start=10)  # e10, e11
            fill_directory(s, NOW, 2, category="LBM", departement="01", start=20)  # e20, e21
            fill_directory(s, NOW, 2, category="ETABLISSEMENT_SANTE", departement="69", start=30)  # e30, e31
        yield gateway


def request(gw: Gateway, lines: str, body: str = BODY) -> str:
    gw.feed(casemail.staff_mail(f"{lines}\n{body}\n", subject="#bulletin Hameçonnage"))
    return casemail.text_of(gw.last("bulletin_apercu", "agent@ars.test").raw).replace("\r\n", "\n")


def bulletin(gw: Gateway) -> Bulletin:
    with gw.app.factory() as s:
        row = s.scalars(select(Bulletin).order_by(Bulletin.id.desc())).first()
        assert row is not None
        s.expunge(row)
        return row


def test_several_cible_lines_are_a_union_with_french_keys_and_comma_values(gw: Gateway) -> None:
    preview = request(gw, "#cible catégorie=LBM département=69\n"
                          "#cible categorie = ESMS, LBM   departement : 01\n"
                          f"#cible finess={finess(30)}")
    assert "Destinataires : 8 établissements" in preview, preview  # 3 + (2 + 2) + 1
    target = bulletin(gw).target
    assert target == f"category=ESMS|LBM,departement=01 ; category=LBM,departement=69 ; finess={finess(30)}"
    # In French, not in codes (outside tester: « catégorie ETABLISSEMENT_SANTE ou LBM »).
    assert "catégorie laboratoire de biologie médicale et département 69" in preview, preview
    assert "; ou FINESS 690000030" in preview and "Cible : catégorie ESMS" not in preview


def test_one_line_with_several_keys_is_an_intersection(gw: Gateway) -> None:
    preview = request(gw, "#cible categorie=LBM,ESMS departement=01")
    assert "Destinataires : 4 établissements" in preview


def test_cible_tous_and_region_of_the_bulletin(gw: Gateway) -> None:
    assert "Destinataires : 9 établissements" in request(gw, "#cible tous")
    assert "Destinataires : 5 établissements" in request(gw, "#cible région=ARA département=69")


@pytest.mark.parametrize(("line", "message"), [
    ("#cible catégorie=PHARMACIE", "categorie : catégorie inconnue « PHARMACIE »"),
    ("#cible departement=Rhône", "departement : département invalide « Rhône »"),
    ("#cible departement=75", "département(s) hors de la région ARA : 75"),
    ("#cible région=PDL", "« PDL » n'est pas la région du bulletin (ARA)"),
    ("#cible zone=69", "critère inconnu « zone » (critères : categorie, departement, region, finess"),
    ("#cible LBM", "valeur « LBM » sans critère devant"),
    ("#cible categorie=", "valeur vide pour « categorie »"),
])
def test_errors_are_in_french_and_name_the_key(gw: Gateway, line: str, message: str) -> None:
    text = request(gw, line)
    assert "Votre demande n'a pas été appliquée" in text and message in text, text
    with gw.app.factory() as s:
        assert s.scalar(select(Bulletin.id)) is None


def test_the_bulletin_body_is_the_whole_flowed_text(gw: Gateway) -> None:
    cut = BODY.rindex(" ", 0, 72)
    wrapped = BODY[:cut] + " \n" + BODY[cut + 1:]  # Thunderbird's soft break at a space (RFC 3676)
    raw = casemail.message(sender="agent@ars.test", to="ssi-ara@ars.test", subject="#bulletin Hameçonnage",
                           body=f"#cible categorie=LBM\n{wrapped}\n\n# Que faire ?\nPrévenez votre RSSI.\n-- \nAgent")
    raw = raw.replace(b"Content-Type: text/plain; charset=utf-8", b"Content-Type: text/plain; charset=utf-8; "
                                                                  b"format=flowed")
    gw.feed(casemail.sign(raw))
    assert bulletin(gw).body == f"{BODY}\n\n# Que faire ?\nPrévenez votre RSSI.\n"


def test_aide_documents_the_bulletin_commands(gw: Gateway) -> None:
    gw.feed(casemail.staff_mail("#aide\n", subject="aide"))
    text = gw.receipt_text()
    for command in ("#bulletin <titre>", "#cible categorie=", "#lu", "#tlp GREEN", "plusieurs lignes s'additionnent"):
        assert command in text, command


def test_a_misspelt_approval_gets_the_nearest_command(gw: Gateway) -> None:
    request(gw, "#cible categorie=LBM")
    preview = gw.last("bulletin_apercu", "agent@ars.test")
    gw.feed(casemail.staff_mail("#difuser\n", in_reply_to=preview.message_id,
                                subject="RE: [Bulletin 1] Aperçu du bulletin : Hameçonnage"))
    text = casemail.text_of(gw.last("bulletin_apercu", "agent@ars.test").raw)
    assert "commande inconnue « #difuser » ; vouliez-vous écrire « #diffuser » ?" in text, text
    assert bulletin(gw).status == "draft"
