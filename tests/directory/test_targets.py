from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mailgateway.directory import Target, parse_target
from mailgateway.errors import InputError


@pytest.mark.parametrize(
    ("expr", "expected"),
    [
        ("all", Target()),
        (" Tous ", Target()),
        ("category=LBM", Target(categories=frozenset({"LBM"}))),
        ("categorie=esms", Target(categories=frozenset({"ESMS"}))),
        ("catégorie=Établissement santé", Target(categories=frozenset({"ETABLISSEMENT_SANTE"}))),
        ("departement=69", Target(departements=frozenset({"69"}))),
        ("département=69|1|974", Target(departements=frozenset({"69", "01", "9D"}))),
        (
            "category=LBM|ESMS, departement=2a",
            Target(categories=frozenset({"LBM", "ESMS"}), departements=frozenset({"2A"})),
        ),
        ("finess=690781810|2a0000014", Target(finess=frozenset({"690781810", "2A0000014"}))),
    ],
)
def test_valid_expressions(expr: str, expected: Target) -> None:
    assert parse_target(expr) == expected


@pytest.mark.parametrize(
    ("expr", "message"),
    [
        ("", "cible vide"),
        ("category=PHARMACIE", "catégorie inconnue « PHARMACIE »"),
        ("departement=Rhône", "département invalide « Rhône »"),
        ("zone=ARA", "critère inconnu « zone »"),  # region= is accepted now (issue 17): the bulletin's own only
        ("category=LBM,,departement=69", "critère vide"),
        ("category=LBM,category=ESMS", "critère « category » répété"),
        ("category=", "valeur vide pour « category »"),
        ("departement=69|", "valeur vide"),
        ("all,category=LBM", "« all » ne se combine pas"),
        ("LBM", "sans « = »"),
        ("finess=12", "numéro FINESS invalide"),
    ],
)
def test_invalid_expressions_raise_input_error_in_french(expr: str, message: str) -> None:
    with pytest.raises(InputError, match=message):
        parse_target(expr)


def test_canonical_form_round_trips() -> None:
    target = parse_target("departement=974|69,categorie=esms|lbm")
    assert str(target) == "category=ESMS|LBM,departement=69|9D"
    assert parse_target(str(target)) == target
    assert str(parse_target("tous")) == "all"


def test_departements_outside_the_region_are_refused() -> None:
    parse_target("departement=69|01").check_region("ARA")
    with pytest.raises(InputError, match="hors de la région ARA : 75"):
        parse_target("departement=69|75").check_region("ARA")


_pieces = st.sampled_from(
    ["all", "category", "categorie", "departement", "finess", "=", ",", "|", "LBM", "69", "2A", "ESMS", " ", "é"]
)


@given(st.one_of(st.text(), st.lists(_pieces, max_size=12).map("".join)))
def test_parser_raises_nothing_but_input_error(expr: str) -> None:
    try:
        target = parse_target(expr)
    except InputError as exc:
        assert str(exc)
    else:
        assert parse_target(str(target)) == target


@pytest.mark.parametrize(("line", "expected"), [
    ("categorie=établissement de santé departement=38,74", "category=ETABLISSEMENT_SANTE,departement=38|74"),
    ("catégorie=laboratoire de biologie médicale,établissement de santé", "category=ETABLISSEMENT_SANTE|LBM"),
    ("categorie=LBM ESMS departement=69", "category=ESMS|LBM,departement=69"),
])
def test_a_mail_target_names_categories_in_french_with_their_blanks(line: str, expected: str) -> None:
    """An outside tester (an agent): « #cible categorie=établissement de santé » was refused with
    « catégorie inconnue « de » »."""
    from mailgateway.directory.targets import parse_cible
    assert str(parse_cible(line)) == expected
