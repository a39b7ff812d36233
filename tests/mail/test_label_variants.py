"""Label variants of the portal and of hand-made forms, as data a site can extend; FINESS ET
before FINESS EJ; alert targets named in prose (issue 16, "Understanding")."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from mailgateway.app import build_app
from mailgateway.clock import FixedClock
from mailgateway.errors import ConfigError
from mailgateway.mail.alert import targets_of
from mailgateway.mail.analyse import analyse
from mailgateway.mail.context import AnalysisContext
from mailgateway.mail.labels import load_labels
from mailgateway.settings import parse_settings
from mailgateway.store.engine import transaction
from mailgateway.store.models import Establishment
from tests.support import casemail
from tests.support.casegateway import NOW, Gateway, settings_data
from tests.support.db import at_head
from tests.support.messages import make_message

ET, EJ = "690781810", "690000880"  # valid keys; the EJ is the legal entity of the ET
OTHER_ET = "690000013"


def declaration_with(ctx: AnalysisContext, lines: str) -> dict[str, object]:
    raw = make_message(subject="Signalement", body="Bonjour,\n\n" + lines + "\n\nCordialement")
    facts = analyse(raw, ctx)
    assert facts.kind == "declaration", facts.quarantine_reason
    assert facts.declaration is not None
    return facts.declaration.to_json()


@pytest.mark.parametrize("label", [
    "N° FINESS", "N°FINESS", "Numéro  FINESS", "NUMÉRO FINESS", "numero finess", "No. FINESS", "N° de FINESS",
    "Numéro FINESS (9 chiffres)", "**Numéro FINESS**", "Numéro FINESS ET", "N° FINESS géographique",
    "Numéro FINESS\u00a0",  # a no-break space before the colon (French typography)
])
def test_finess_label_variants(ctx: AnalysisContext, label: str) -> None:
    decl = declaration_with(ctx, f"{label} : {ET}\nType d'incident : rançongiciel\nGravité : grave")
    assert decl["finess"] == ET


@pytest.mark.parametrize(("label", "value", "expected"), [
    ("Gravité ressentie", "très grave", "GRAVE"),
    ("GRAVITÉ", "significative", "SIGNIFICATIF"),
    ("Gravite percue", "grave", "GRAVE"),
    ("Niveau de gravité estimé", "moyen", "SIGNIFICATIF"),
])
def test_severity_label_variants(ctx: AnalysisContext, label: str, value: str, expected: str) -> None:
    decl = declaration_with(ctx, f"N° FINESS : {ET}\nType d'incident : rançongiciel\n{label} : {value}")
    assert decl["severity"] == expected


@pytest.mark.parametrize(("value", "expected"), [
    # « Gravité » is feminine: its adjectives are, too (found by an outside tester: all were lost).
    ("élevée", "GRAVE"), ("3/4 (élevée)", "GRAVE"), ("majeure", "GRAVE"), ("Très élevée", "GRAVE"),
    ("moyenne", "SIGNIFICATIF"), ("modérée", "SIGNIFICATIF"), ("importante", "SIGNIFICATIF"),
    ("mineure", "NON_QUALIFIE"), ("faible", "NON_QUALIFIE"),
    # What the declarant denies is never what is declared.
    ("non grave", "NON_QUALIFIE"), ("pas grave a priori", "NON_QUALIFIE"), ("Pas très grave", "NON_QUALIFIE"),
    ("sans gravité", "NON_QUALIFIE"), ("non significatif", "NON_QUALIFIE"), ("grave mais pas critique", "GRAVE"),
    ("pas du tout grave", "NON_QUALIFIE"), ("faible (pas du tout grave)", "NON_QUALIFIE"),
    ("pas vraiment très grave", "NON_QUALIFIE"), ("guère grave", "NON_QUALIFIE"), ("Grave (non maîtrisé)", "GRAVE"),
    ("Élevée - pas de données touchées", "GRAVE"), ("grave car pas de sauvegarde", "GRAVE"),
    ("grave sans impact patient", "GRAVE"), ("pas grave car sauvegardes intactes", "NON_QUALIFIE"),
    ("critical", "GRAVE"), ("high", "GRAVE"), ("medium", "SIGNIFICATIF"), ("low", "NON_QUALIFIE"),
])
def test_severity_values_as_declarants_write_them(ctx: AnalysisContext, value: str, expected: str) -> None:
    decl = declaration_with(ctx, f"N° FINESS : {ET}\nType d'incident : rançongiciel\nGravité : {value}")
    assert decl["severity"] == expected


@pytest.mark.parametrize(("text", "expected"), [
    ("Il s'agit d'un incident très grave : les urgences sont fermées.", "GRAVE"),
    ("Ce n'est pas un incident grave, mais nous préférons vous le signaler.", "NON_QUALIFIE"),
    ("Aucun incident grave à signaler hormis un rançongiciel sur un poste.", "NON_QUALIFIE"),
    ("Il ne s'agit en aucun cas d'un incident grave.", "NON_QUALIFIE"),
    ("Nous sommes loin d'un incident grave.", "NON_QUALIFIE"),
    ("Pas de réponse du prestataire, un incident grave est en cours.", "GRAVE"),
])
def test_seriousness_in_free_text_reads_its_negation(ctx: AnalysisContext, text: str, expected: str) -> None:
    decl = declaration_with(ctx, f"N° FINESS : {ET}\nType d'incident : rançongiciel\n\n{text}")
    assert decl["severity"] == expected


@pytest.mark.parametrize("separator", ["\t", "\n", "\n\n"])
def test_a_form_written_as_a_table_keeps_its_fields(ctx: AnalysisContext, separator: str) -> None:
    """Found by an outside tester: an Outlook table (one cell a line once converted) or a
    tab-separated form lost its severity; only « Label : valeur » lines were read."""
    rows = [("Numéro FINESS", ET), ("Type d'incident", "Rançongiciel"), ("Gravité", "Grave"),
            ("Date de détection", "30/11/2026 06:45")]
    decl = declaration_with(ctx, "\n".join(f"{label}{separator}{value}" for label, value in rows))
    assert decl["severity"] == "GRAVE" and decl["finess"] == ET
    assert decl["detected_at"] == "2026-11-30T06:45:00+01:00"


def test_a_table_in_quoted_text_fills_nothing(ctx: AnalysisContext) -> None:
    """Found by an outside tester: a quoted « > Gravité<TAB>Critique » made the declaration GRAVE.
    (A forwarded message that reads as a form is the declaration, by design: docs/understanding.md.)"""
    decl = declaration_with(ctx, f"N° FINESS : {ET}\nType d'incident : rançongiciel\n\n> Gravité\tCritique\n")
    assert decl["severity"] == "NON_QUALIFIE"


def test_a_table_cell_never_takes_the_next_label_as_its_value(ctx: AnalysisContext) -> None:
    decl = declaration_with(ctx, f"Nom de la structure\nNuméro FINESS : {ET}\nType d'incident : rançongiciel")
    assert decl["structure"] != f"Numéro FINESS : {ET}" and decl["finess"] == ET
    decl = declaration_with(ctx, f"Nom de la structure\nGravité\nNuméro FINESS : {ET}\nType d'incident : rançongiciel")
    assert decl["structure"] != "Gravité"


def test_other_label_variants(ctx: AnalysisContext) -> None:
    decl = declaration_with(ctx, (
        f"Numéro FINESS : {ET}\nType d'évènement : hameçonnage\nDate et heure de découverte : 27/11/2026 à 08h30\n"
        "Description succincte de l'incident : une secrétaire a saisi son mot de passe sur un faux site.\n"
        "Mesures prises ou envisagées : mot de passe changé."))
    assert decl["incident_type"] == "HAMECONNAGE" and decl["detected_at"] == "2026-11-27T08:30:00+01:00"
    assert "faux site" in str(decl["summary"]) and decl["measures"] == "mot de passe changé."


def test_a_site_extends_the_labels_in_its_configuration(ctx: AnalysisContext) -> None:
    # (« Criticité … : grave » is read anyway, in a sentence as on a line: a site's own word here.)
    lines = (f"N° FINESS : {ET}\nNature de l'évènement SSI : rançongiciel\nNiveau d'alerte interne : grave\n"
             "Établissement déclarant SSI : Clinique du Lac")
    decl = declaration_with(ctx, lines)
    assert decl["severity"] == "NON_QUALIFIE" and decl["structure"] != "Clinique du Lac"
    site = AnalysisContext(**{**ctx.__dict__, "extra_field_labels": {
        "severity": ("Niveau d'alerte interne",), "structure": ("Établissement déclarant SSI",)}})
    decl = declaration_with(site, lines)
    assert decl["severity"] == "GRAVE" and decl["structure"] == "Clinique du Lac"


def test_the_example_configuration_documents_the_extension_point() -> None:
    example = (Path(__file__).resolve().parents[2] / "config" / "mailgateway.example.toml").read_text()
    assert "[labels.fields]" in example
    settings = parse_settings({**settings_data("sqlite://"), "labels": {"fields": {"severity": ["Criticité perçue"]}}})
    assert settings.labels.fields["severity"] == ("Criticité perçue",)


def test_labelled_et_wins_over_ej_in_any_order(ctx: AnalysisContext) -> None:
    decl = declaration_with(ctx, f"FINESS EJ : {EJ}\nFINESS ET : {OTHER_ET}\nType d'incident : rançongiciel")
    assert (decl["finess"], decl["finess_ej"]) == (OTHER_ET, EJ)
    decl = declaration_with(ctx, f"Numéro FINESS géographique : {OTHER_ET}\nN° FINESS juridique : {EJ}\n"
                                 "Type d'incident : rançongiciel")
    assert (decl["finess"], decl["finess_ej"]) == (OTHER_ET, EJ)


def test_the_directory_tells_the_et_when_labels_do_not(ctx: AnalysisContext) -> None:
    # Both numbers under a bare « FINESS » label: the one the directory knows (keyed by ET) wins.
    unknown_ej = "690000021"
    decl = declaration_with(ctx, f"FINESS : {unknown_ej} / {ET}\nType d'incident : rançongiciel")
    assert decl["finess"] == ET


@pytest.fixture
def gw(sqlite_url: str) -> Iterator[Gateway]:
    app = build_app(parse_settings(settings_data(at_head(sqlite_url))), clock=FixedClock(NOW))
    at = datetime(2026, 1, 1, tzinfo=UTC)
    with transaction(app.factory) as s:
        s.add(Establishment(finess=ET, finess_ej=EJ, name="Centre hospitalier de l'annuaire",
                            category="ETABLISSEMENT_SANTE", departement="69", region="ARA", updated_at=at))
    try:
        yield Gateway(app, FixedClock(NOW))
    finally:
        app.close()


def declare(gw: Gateway, lines: str) -> str:
    result = gw.feed(casemail.message(sender="dsi@chu.test", to="ssi-ara@ars.test", subject="Déclaration",
                                      body=f"Bonjour,\n\n{lines}\nType d'incident : rançongiciel\nGravité : grave\n"))
    assert result.case_ref, result
    return result.case_ref


def test_by_mail_an_ej_alone_becomes_its_single_et(gw: Gateway) -> None:
    case = gw.case(declare(gw, f"Numéro FINESS : {EJ}"))
    assert case.finess == ET and case.establishment == "Centre hospitalier de l'annuaire"
    assert case.fields["declaration"]["finess_ej"] == EJ


def test_by_mail_the_et_is_kept_and_the_ej_recorded(gw: Gateway) -> None:
    case = gw.case(declare(gw, f"FINESS EJ : {EJ}\nFINESS : {ET}"))
    assert case.finess == ET and case.fields["declaration"]["finess_ej"] == EJ


@pytest.mark.parametrize(("text", "targets"), [
    ("Cette alerte s'adresse aux établissements et services médico-sociaux.", ("ESMS",)),
    ("Les laboratoires de biologie médicale doivent appliquer le correctif.", ("LBM",)),
    ("Destinataires : centres de radiothérapie et hôpitaux des armées", ("CENTRE_RADIOTHERAPIE", "HOPITAL_ARMEES")),
    ("Tous les établissements de santé sont concernés.", ("ETABLISSEMENT_SANTE",)),
    ("Le CH a mis à jour son labo hier.", ()),  # category words are not targets in prose
])
def test_alert_targets_named_in_prose(text: str, targets: tuple[str, ...]) -> None:
    assert targets_of(None, text, load_labels()) == targets


SITE_LABELS = """
[fields]
severity = ["Criticité perçue"]
structure = ["Établissement déclarant SSI"]

[severities]
GRAVE = ["rouge vif"]

[alert_targets]
ESMS = ["résidences pour personnes âgées"]

[courtesy]
phrases = ["merci infiniment"]
"""


def test_a_site_label_file_extends_the_tables_end_to_end(tmp_path: Path) -> None:
    (tmp_path / "etiquettes.toml").write_text(SITE_LABELS, encoding="utf-8")
    config = tmp_path / "mailgateway.toml"
    data = settings_data(f"sqlite:///{tmp_path / 'db.sqlite'}")
    data["labels"] = {"file": "etiquettes.toml", "severities": {"SIGNIFICATIF": ["orange"]}}
    settings = parse_settings(data, source=str(config))  # relative to the configuration file
    assert settings.labels.fields["severity"] == ("Criticité perçue",)
    assert settings.labels.courtesy == ("merci infiniment",)
    app = build_app(settings, clock=FixedClock(NOW))
    try:
        gw = Gateway(app, FixedClock(NOW))
        ref = declare(gw, f"N° FINESS : {ET}\nCriticité perçue : orange\n"
                          "Établissement déclarant SSI : Clinique du Lac")
        case = gw.case(ref)
        assert case.fields["declaration"]["severity"] == "SIGNIFICATIF" and case.establishment == "Clinique du Lac"
    finally:
        app.close()
    labels = load_labels(extra_alert_targets=settings.labels.alert_targets, extra_courtesy=settings.labels.courtesy)
    assert targets_of(None, "Pour les résidences pour personnes âgées.", labels) == ("ESMS",)


@pytest.mark.parametrize(("labels", "key"), [
    ({"fields": {"severty": ["x"]}}, "labels.fields.severty"),
    ({"severities": {"TRES_GRAVE": ["x"]}}, "labels.severities.TRES_GRAVE"),
    ({"file": "absent.toml"}, "labels.file"),
])
def test_misspelt_label_names_and_unreadable_files_are_configuration_errors(
        tmp_path: Path, labels: dict[str, object], key: str) -> None:
    data = {**settings_data("sqlite://"), "labels": labels}
    with pytest.raises(ConfigError) as info:
        parse_settings(data, source=str(tmp_path / "mailgateway.toml"))
    assert key in str(info.value)


def test_site_severity_wording_from_the_file(tmp_path: Path) -> None:
    (tmp_path / "etiquettes.toml").write_text(SITE_LABELS, encoding="utf-8")
    settings = parse_settings({**settings_data("sqlite://"), "labels": {"file": str(tmp_path / "etiquettes.toml")}})
    labels = load_labels(settings.labels.fields, extra_severities=settings.labels.severities)
    assert labels.severities.first("rouge vif") == "GRAVE" and load_labels().severities.first("rouge vif") is None
