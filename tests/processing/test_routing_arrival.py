"""Routing by arrival (processing/routing.py), the « hors région » flag (directory first, then the
FINESS prefix) and ``#transferer`` refusals and follow-up, through the real pipeline in-process.

The daemon-level proofs are tests/integration/test_routing_regions.py and
tests/intake/test_imap_routing.py; these pin the rules themselves."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import text

from mailgateway.app import build_app
from mailgateway.cases.views import format_case, show_case
from mailgateway.clock import FixedClock
from mailgateway.mail.facts import Declaration, MessageFacts
from mailgateway.processing.routing import AUTHORISING_REGION, named_region, resolve_region
from mailgateway.settings import parse_settings
from mailgateway.store.engine import transaction
from mailgateway.store.models import Establishment
from tests.support import casemail
from tests.support.casegateway import NOW, Gateway, make_gateway, settings_data
from tests.support.db import at_head
from tests.support.dkim import rsa_key, zone
from tests.support.messages import make_alert

SETTINGS = parse_settings(settings_data("sqlite://"))
# What the analysis makes of a mail written To ssi-pdl (Cc ignored for this purpose).
TO_PDL = MessageFacts(kind="declaration", region="PDL", recipients=("ssi-pdl@ars.test", "ssi-ara@ars.test"))


@pytest.mark.parametrize(("envelope_region", "rcpts", "expected"), [
    ("ARA", (), "ARA"),  # the IMAP mailbox
    (None, ("ssi-ara@ars.test",), "ARA"),  # the SMTP envelope recipient
    (None, ("SSI-ARA@ars-sante.test",), "ARA"),  # an alias domain: the local part
    (None, ("bounces+x@ars.test",), "PDL"),  # no regional recipient: today's fallbacks (To/Cc)
    (None, (), "PDL"),  # no arrival information (ingest, parse): To/Cc
])
def test_the_region_is_where_the_mail_arrived(envelope_region: str | None, rcpts: tuple[str, ...],
                                              expected: str) -> None:
    assert resolve_region(SETTINGS, TO_PDL, envelope_region, rcpts).region == expected


def test_the_authorising_region_comes_from_arrival_too() -> None:
    assert named_region(SETTINGS, TO_PDL, "ARA") == "ARA"
    assert named_region(SETTINGS, TO_PDL, None, ("ssi-ara@ars.test",)) == "ARA"
    assert named_region(SETTINGS, TO_PDL) == "PDL"  # no arrival: the regional address in To/Cc
    assert resolve_region(SETTINGS, TO_PDL, "ARA").extra[AUTHORISING_REGION] == "ARA"


def test_fallback_without_arrival_keeps_the_finess_then_single_region_order() -> None:
    facts = MessageFacts(kind="declaration", declaration=Declaration(finess="690781810"))
    assert resolve_region(SETTINGS, facts).region == "ARA"


@pytest.fixture
def gw(sqlite_url: str) -> Iterator[Gateway]:
    yield from make_gateway(sqlite_url)


def _establishment(gw: Gateway, finess: str, departement: str, region: str) -> None:
    with transaction(gw.app.factory) as s:
        s.add(Establishment(finess=finess, name="Centre hospitalier", departement=departement, region=region,
                            updated_at=NOW))


def test_out_of_region_uses_the_directory_before_the_finess_prefix(gw: Gateway) -> None:
    # 690781810 would be Rhône (ARA) by its prefix; the directory says Loire-Atlantique (PDL).
    _establishment(gw, "690781810", "44", "PDL")
    ref = gw.declare(1, finess="690781810")  # to ssi-ara
    assert ref.startswith("SSI-ARA-")
    [flag] = [e for e in gw.events(ref) if e.type == "hors_region"]
    assert flag.data["region_etablissement"] == "PDL" and flag.data["departement"] == "44"
    told = casemail.text_of(gw.notification(ref, "agent@ars.test").raw)
    assert "HORS RÉGION" in told and "#transferer PDL" in told


def test_an_establishment_of_the_arrival_region_is_not_flagged(gw: Gateway) -> None:
    ref = gw.declare(1, finess="690781810")  # Rhône, to ssi-ara
    assert not [e for e in gw.events(ref) if e.type == "hors_region"]
    assert "HORS RÉGION" not in casemail.text_of(gw.notification(ref, "agent@ars.test").raw)


def test_transfer_refusals_leave_the_case_where_it_is(gw: Gateway) -> None:
    ref = gw.declare(1, finess="440000289")  # Loire-Atlantique, to ssi-ara: hors région
    gw.command(ref, "#transferer")
    assert "région attendue" in gw.receipt_text()
    gw.command(ref, "#transferer ARA")
    assert f"{ref} relève déjà de la région ARA" in gw.receipt_text()
    gw.command(ref, "#transferer IDF")
    assert "région non configurée sur cette passerelle : IDF" in gw.receipt_text()
    unsigned = gw.command(ref, "#transferer PDL", signed=False)
    assert unsigned.status == "processed"
    assert "ce message n'est pas authentifié" in gw.receipt_text()
    assert gw.case(ref).status != "CLOS" and not [e for e in gw.events(ref) if e.type == "transfert"]


def test_a_reply_to_the_old_reference_reaches_the_transferred_case(gw: Gateway) -> None:
    ref = gw.declare(1, finess="440000289")
    gw.command(ref, "#transferer PDL")
    assert "nouvelle référence SSI-PDL-2026-0001" in gw.receipt_text()
    reply = casemail.message(sender="dsi@chu.test", to="ssi-ara@ars.test", subject=f"RE: [{ref}] Déclaration",
                             body="Les sauvegardes sont restaurées.\n")
    result = gw.feed(reply)
    assert result.case_ref == "SSI-PDL-2026-0001"
    assert gw.outbound("notification_reponse", "pdl@ars.test")
    # « cases show » of the old case says where it went, as a transfer (it said « fusionné dans »).
    with gw.app.factory() as s:
        detail = show_case(s, ref)
    assert detail is not None and "transféré à : SSI-PDL-2026-0001" in format_case(detail)


@pytest.mark.parametrize("signed", [False, True])
def test_the_declarant_is_told_of_the_transfer_quoting_nothing_unless_verified(gw: Gateway, signed: bool) -> None:
    raw = casemail.declaration(1, finess="440000289")
    result = gw.feed(casemail.sign(raw, casemail.establishment_key()) if signed else raw)
    assert result.case_ref is not None
    gw.command(result.case_ref, "#transferer PDL")
    told = casemail.text_of(gw.last("transfert", "dsi@chu.test").raw)
    assert "SSI-PDL-2026-0001" in told and result.case_ref in told and "ARS Pays de la Loire" in told
    assert ("Centre hospitalier" in told) is signed  # the structure name came from the mail
    assert not gw.outbound("cloture_declarant", "dsi@chu.test")  # one mail: the transfer's


ACSS_KEY = rsa_key("acss", "esante.test")


@pytest.fixture
def acss_gw(sqlite_url: str) -> Iterator[Gateway]:
    data = settings_data(at_head(sqlite_url))
    data["authentication"]["static_keys"].update(zone(ACSS_KEY))
    clock = FixedClock(NOW)
    app = build_app(parse_settings(data), clock=clock)
    try:
        yield Gateway(app, clock)
    finally:
        app.close()


def _alert(message_id: str, *, signed: bool = True) -> bytes:
    raw = make_alert(sender="CERT Santé <alerte@esante.test>", to="ssi-ara@ars.test", message_id=message_id,
                     reference="CERTFR-2026-ALE-040")
    return casemail.sign(raw, ACSS_KEY) if signed else raw


def test_a_forged_copy_first_does_not_make_the_genuine_alert_a_new_version(acss_gw: Gateway) -> None:
    forged = acss_gw.feed(_alert("<forged@attacker.test>", signed=False))
    genuine = acss_gw.feed(_alert("<ale-40@esante.test>"))
    assert forged.case_ref and genuine.case_ref and forged.case_ref != genuine.case_ref
    assert not [e for e in acss_gw.events(genuine.case_ref) if e.type == "alerte_nouvelle_version"]
    # The genuine one is recorded: a corrected version after it is linked to it.
    corrected = acss_gw.feed(_alert("<ale-40-v2@esante.test>"))
    assert corrected.case_ref is not None
    [flag] = [e for e in acss_gw.events(corrected.case_ref) if e.type == "alerte_nouvelle_version"]
    assert flag.data["dossier_precedent"] == genuine.case_ref


def test_analysis_reads_the_directory_for_the_establishment(gw: Gateway) -> None:
    """The analysis worker's directory look-up (processing/worker.py, a statement built once):
    of two FINESS numbers in a declaration, the one the directory knows is the establishment, and
    a mail that names no structure gets the directory's name. Another establishment in the
    directory must change nothing."""
    with transaction(gw.app.factory) as s:
        s.add(Establishment(finess="690000013", name="Clinique du Parc", departement="69", region="ARA",
                            updated_at=NOW))
        s.add(Establishment(finess="010000024", name="Centre hospitalier de l'Ain", departement="01",
                            region="ARA", updated_at=NOW))
    body = ("Bonjour,\n\nNotre ancien numéro 690781810 ne vaut plus ; établissement 690000013.\n"
            "Type d'incident : rançongiciel\nGravité : grave\n")
    result = gw.feed(casemail.message(sender="dsi@chu.test", to="ssi-ara@ars.test", subject="Incident",
                                      body=body, message_id="<two-numbers@chu.test>"))
    assert result.case_ref
    case = gw.case(result.case_ref)
    assert case.finess == "690000013"  # not the first number of the text: the one the directory knows
    assert case.establishment == "Clinique du Parc"


def test_a_declaration_naming_an_ej_is_its_only_et(gw: Gateway) -> None:
    """A FINESS juridique (EJ) with one géographique (ET) in the directory is that ET; with
    several, the number is kept and staff choose. Read by statements on the driver and memoised
    per batch (directory/establishments.py), through the EJ's index (migration 0006)."""
    with transaction(gw.app.factory) as s:
        s.add(Establishment(finess="690781810", finess_ej="690000013", name="CH de Nantes", departement="44",
                            region="PDL", category="ETABLISSEMENT_SANTE", updated_at=NOW))
        for et in ("690000039", "690000047"):
            s.add(Establishment(finess=et, finess_ej="690000021", name="Clinique", departement="69",
                                region="ARA", updated_at=NOW))
    only = gw.declare(1, finess="690000013")
    assert gw.case(only).finess == "690781810"
    [flag] = [e for e in gw.events(only) if e.type == "hors_region"]  # the ET's region, from the directory
    assert flag.data["region_etablissement"] == "PDL"
    # The category of the ET found fills the declaration's (the notification said « non précisée »).
    assert "Catégorie : établissement de santé" in casemail.text_of(gw.notification(only, "agent@ars.test").raw)
    several = gw.declare(2, finess="690000021")
    assert gw.case(several).finess == "690000021"
    told = casemail.text_of(gw.notification(several, "agent@ars.test").raw)
    assert "FINESS juridique (EJ) 690000021 : 2 établissements dans l'annuaire" in told
    assert "Clinique — FINESS 690000039, département 69" in told and "FINESS 690000047" in told
    assert not [e for e in gw.events(several) if e.type == "hors_region"]  # its sites are in ARA
    with gw.app.factory() as s:
        plan = " ".join(str(row[-1]) for row in s.execute(
            text("EXPLAIN QUERY PLAN SELECT finess FROM establishments WHERE finess_ej = '690000021'")))
    assert "ix_establishments_finess_ej" in plan  # not a scan of the whole directory


def test_an_ej_is_where_its_sites_are_not_where_its_number_was_registered(gw: Gateway) -> None:
    """Outside tester: a group registered in Lyon (EJ 690000054) whose two sites are in Pays de la
    Loire was flagged « hors région ARA » when declared to PDL, and transferred there. The sites
    decide: one region when they share one; none (no flag) when they are in several."""
    with transaction(gw.app.factory) as s:
        for et, dep in (("440100014", "44"), ("850100025", "85")):
            s.add(Establishment(finess=et, finess_ej="690000054", name=f"Site {dep}", departement=dep, region="PDL",
                                updated_at=NOW))
        for et, dep, region in (("690100037", "69", "ARA"), ("440100048", "44", "PDL")):
            s.add(Establishment(finess=et, finess_ej="690000062", name=f"Site {dep}", departement=dep,
                                region=region, updated_at=NOW))
    in_pdl = gw.declare(1, finess="690000054")  # to ssi-ara: its sites are all in PDL
    [flag] = [e for e in gw.events(in_pdl) if e.type == "hors_region"]
    assert flag.data["region_etablissement"] == "PDL" and flag.data["departement"] is None
    spread = gw.declare(2, finess="690000062")  # one site in ARA, one in PDL: no region to name
    assert not [e for e in gw.events(spread) if e.type == "hors_region"]


def test_staff_name_the_site_of_an_ej_with_finess(gw: Gateway) -> None:
    """An EJ of several sites: staff are shown them, then say which one with « #finess <ET> » (an
    outside tester found no way to). An EJ or a number the directory does not know is refused."""
    with transaction(gw.app.factory) as s:
        for et, name in (("690000039", "Clinique Nord"), ("690000047", "Clinique Sud")):
            s.add(Establishment(finess=et, finess_ej="690000021", name=name, departement="69", region="ARA",
                                category="ETABLISSEMENT_SANTE", updated_at=NOW))
    ref = gw.declare(1, finess="690000021")
    assert "#finess <FINESS de l'établissement>" in casemail.text_of(gw.notification(ref, "agent@ars.test").raw)
    gw.command(ref, "#finess 690000021")
    assert "690000021 est un FINESS juridique (EJ)" in gw.receipt_text()
    assert "690000039 Clinique Nord" in gw.receipt_text()
    gw.command(ref, "#finess 690000054")
    assert "FINESS 690000054 absent de l'annuaire" in gw.receipt_text()
    gw.command(ref, "#finess 123")
    assert "numéro FINESS géographique (ET) attendu" in gw.receipt_text()
    assert gw.case(ref).finess == "690000021"
    gw.command(ref, "#finess 690000047")
    assert "structure : Clinique Sud (FINESS 690000047)" in gw.receipt_text()
    case = gw.case(ref)
    assert (case.finess, case.establishment, case.category) == ("690000047", "Clinique Sud", "ETABLISSEMENT_SANTE")
    [event] = [e for e in gw.events(ref) if e.type == "structure"]
    assert event.data == {"de": "690000021", "vers": "690000047", "nom": "Clinique Sud"}
    with gw.app.factory() as s:
        detail = show_case(s, ref)
    assert detail is not None
    assert "Structure précisée : Clinique Sud (FINESS 690000047), auparavant FINESS 690000021" in format_case(detail)
    assert verify_references_intact(gw)


def verify_references_intact(gw: Gateway) -> bool:
    from mailgateway.cases.verify import verify_references
    with gw.app.factory() as s:
        breaks, _checked = verify_references(s, None)
    return breaks == []


def test_an_ej_of_many_sites_shows_the_first_ten_and_is_placed_by_all_of_them(gw: Gateway) -> None:
    """The sites of an EJ are read once (up to ``EJ_SITES_READ``): staff see the first
    ``EJ_SITES_SHOWN`` and are told there are more; where the EJ is comes from every site read,
    here eleven in PDL and the twelfth in ARA: no one region, no « hors région » flag."""
    with transaction(gw.app.factory) as s:
        for n in range(12):
            s.add(Establishment(finess=f"6901000{n:02d}", finess_ej="690000021", name=f"Site {n}",
                                departement="44" if n < 11 else "69", region="PDL" if n < 11 else "ARA",
                                updated_at=NOW))
    ref = gw.declare(1, finess="690000021")
    told = casemail.text_of(gw.notification(ref, "agent@ars.test").raw)
    assert "FINESS juridique (EJ) 690000021 : plus de 10 établissements dans l'annuaire" in told
    assert told.count("  - Site ") == 10 and "Site 9 —" in told and "Site 10 —" not in told
    assert not [e for e in gw.events(ref) if e.type == "hors_region"]
