"""Contacts import: the categories people write, and one error per unknown value (t2 probe, finding 7).

Before: « établissement de santé » (the gateway's own label), « CH », « CHU », « clinique » were
refused, and a file with one unknown category on 120 lines gave 120 identical error lines.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from mailgateway.directory import import_contacts
from mailgateway.directory.categories import normalise_category
from mailgateway.store.models import Establishment
from tests.directory.conftest import NOW
from tests.support.finess import write_csv

HEADER = "finess;nom;categorie;departement;email;role\n"


@pytest.mark.parametrize(("written", "code"), [
    ("établissement de santé", "ETABLISSEMENT_SANTE"), ("Etablissement de sante", "ETABLISSEMENT_SANTE"),
    ("CH", "ETABLISSEMENT_SANTE"), ("chu", "ETABLISSEMENT_SANTE"), ("Clinique", "ETABLISSEMENT_SANTE"),
    ("Centre hospitalier", "ETABLISSEMENT_SANTE"), ("hôpital d'instruction des armées", "HOPITAL_ARMEES"),
    ("hôpital d’instruction des armées", "HOPITAL_ARMEES"), ("Laboratoire de biologie médicale", "LBM"),
    ("centre de radiothérapie", "CENTRE_RADIOTHERAPIE"), ("établissement social ou médico-social", "ESMS"),
    ("EHPAD", "ESMS"), ("LBM", "LBM"), ("autre", "AUTRE"), ("pharmacie", None),
])
def test_french_labels_and_abbreviations_are_aliases(written: str, code: str | None) -> None:
    assert normalise_category(written) == code


def test_a_file_written_with_french_categories_is_imported(session: Session, tmp_path: Path) -> None:
    path = write_csv(tmp_path / "c.csv", HEADER
                     + "690000001;Centre hospitalier A;établissement de santé;69;ssi@cha.fr;ssi\n"
                     + "690000002;CHU B;CHU;69;ssi@chub.fr;ssi\n"
                     + "690000003;Clinique C;clinique;69;ssi@clinc.fr;ssi\n")
    report = import_contacts(session, path, NOW)
    assert not report.refused, report.to_text_fr()
    categories = set(session.scalars(select(Establishment.category)))
    assert categories == {"ETABLISSEMENT_SANTE"}


def test_an_unknown_category_on_many_lines_is_one_error(session: Session, tmp_path: Path) -> None:
    rows = "".join(f"69{n:07d};Officine {n};pharmacie;69;ssi@o{n}.fr;ssi\n" for n in range(120))
    path = write_csv(tmp_path / "c.csv", HEADER + rows + "690999999;Autre;PUI;69;ssi@pui.fr;ssi\n")
    report = import_contacts(session, path, NOW)
    assert report.refused
    text = report.to_text_fr()
    errors = [str(e) for e in report.errors]
    assert len(errors) == 2, text
    assert errors[0].startswith("ligne 2 : catégorie inconnue « pharmacie » (lignes 2, 3, 4 … 120 lignes) — "
                                "valeurs possibles : ETABLISSEMENT_SANTE (ou : établissement de santé, ES, CH, CHU")
    assert errors[1] == "ligne 122 : catégorie inconnue « PUI »"
    assert text.count("valeurs possibles") == 1
