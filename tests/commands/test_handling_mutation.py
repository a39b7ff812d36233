"""``commands/handling.py`` decides who may command a case and whose reply may change its status
(docs/guarantees.md): its rules checked one by one on a real (SQLite) directory, with the exact
French reasons staff read on their receipts. Fast enough to be the mutation-testing selection of
the module (docs/mutation.md); the end-to-end behaviour by mail is in tests/cases/."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import pytest
from sqlalchemy.orm import Session

from mailgateway.clock import FixedClock
from mailgateway.commands import handling
from mailgateway.commands.table import HELP_POINTER, Ctx, help_text
from mailgateway.dispatch.mailer import Mailer
from mailgateway.mail.facts import Command, MessageFacts, SenderVerdict
from mailgateway.processing.context import Env, agency_domains
from mailgateway.settings import DkimSettings, RegionSettings, StaffSettings, parse_settings
from mailgateway.store.models import Case, Confirmation, Contact, Establishment, InboundMessage, StaffMember
from tests.support.casegateway import settings_data

NOW = datetime(2026, 11, 27, 9, 0, tzinfo=UTC)


@pytest.fixture
def s(rolled_back_session: Session) -> Session:
    """A session on the module's database, rolled back after each test (tests/conftest.py)."""
    return rolled_back_session


@pytest.fixture(scope="module")
def env() -> Env:
    # The settings of tests/support/casegateway.py: regions ARA (ssi-ara@ars.test) and PDL, staff
    # agent@ / referent@ (ARA) and pdl@ (PDL) of ars.test, ACSS acss@esante.test + esante.test.
    # Only the settings are read by the rules under test (no mail is sent here).
    return Env(settings=parse_settings(settings_data("sqlite://")), mailer=cast(Mailer, None),
               clock=FixedClock(NOW))


def authenticated(address: str | None = "agent@ars.test", **kw: Any) -> SenderVerdict:
    domain = address.rpartition("@")[2] if address else None
    return SenderVerdict(address=address, domain=domain, authenticated=True, method="dkim", **kw)


def staff_member(s: Session, address: str, region: str) -> None:
    s.add(StaffMember(address=address, region=region))
    s.flush()


_numbers = iter(range(1, 100_000))


def case(s: Session, **fields: Any) -> Case:
    values: dict[str, Any] = {"region": "ARA", "kind": "incident", "status": "CLOS", "severity": "NON_QUALIFIE",
                              "title": "t", "opened_at": NOW, "updated_at": NOW, "fields": {}, "event_count": 0}
    values.update(fields)
    row = Case(reference=f"SSI-ARA-2026-{next(_numbers):04d}", **values)
    s.add(row)
    s.flush()
    return row


# --- who may command -------------------------------------------------------------------------


def test_agency_domains_are_the_regions_the_staffs_and_the_signing_domain(env: Env) -> None:
    settings = replace(env.settings,
                       regions=(RegionSettings(code="ARA", address="SSI-ARA@Region.TEST"),
                                RegionSettings(code="PDL", address="")),
                       staff=(StaffSettings(address="Agent@Staff.TEST", region="ARA"),),
                       dkim=DkimSettings(domain="Sign.TEST"))
    assert agency_domains(settings) == {"region.test", "staff.test", "sign.test"}
    unsigned = replace(settings, dkim=DkimSettings(domain=""))
    assert agency_domains(unsigned) == {"region.test", "staff.test"}
    assert agency_domains(replace(settings, dkim=None)) == {"region.test",
                                                                                             "staff.test"}


def test_looks_like_staff_listed_imported_or_of_an_agency_domain(env: Env, s: Session) -> None:
    staff_member(s, "imported@partenaire.test", "ARA")
    assert handling.looks_like_staff(env, s, "agent@ars.test")
    assert handling.looks_like_staff(env, s, "imported@partenaire.test")
    assert handling.looks_like_staff(env, s, "inconnu@ars.test")  # the agency's domain
    assert not handling.looks_like_staff(env, s, "dsi@chu.test")
    assert not handling.looks_like_staff(env, s, "ars.test@chu.test")


def test_staff_regions_from_the_configuration_and_the_import(env: Env, s: Session) -> None:
    assert handling._staff_regions(env, s, "agent@ars.test") == {"ARA"}
    staff_member(s, "agent@ars.test", "PDL")
    assert handling._staff_regions(env, s, "agent@ars.test") == {"ARA", "PDL"}
    assert handling._staff_regions(env, s, "dsi@chu.test") == set()


def test_a_command_without_a_case_acts_in_the_mailbox_region_else_the_senders_own(env: Env, s: Session) -> None:
    def region(facts_region: str | None, sender: str) -> str | None:
        return handling._query_region(env, s, MessageFacts(region=facts_region), sender)

    assert region("ARA", "agent@ars.test") == "ARA"  # staff of the mailbox's region
    assert region("PDL", "agent@ars.test") == "ARA"  # written to another region's mailbox: its own
    assert region(None, "agent@ars.test") == "ARA"
    assert region("PDL", "dsi@chu.test") == "PDL"  # nobody's staff: the mailbox (then refused)
    assert region(None, "dsi@chu.test") is None
    staff_member(s, "agent@ars.test", "PDL")
    staff_member(s, "agent@ars.test", "COR")
    assert region("PDL", "agent@ars.test") == "PDL"
    assert region("BRE", "agent@ars.test") == "BRE"  # several regions, none the mailbox's: no guess
    assert region(None, "agent@ars.test") is None


def test_refusal_reasons_in_order(env: Env, s: Session) -> None:
    def refusal(sender: str, region: str | None, verdict: SenderVerdict) -> str | None:
        return handling._refusal(env, s, MessageFacts(sender=verdict), sender, region)

    unsigned = SenderVerdict(address="agent@ars.test", detail="dkim=none (no signature)")
    assert refusal("", "ARA", unsigned) == "expéditeur absent : commande ignorée"
    assert refusal("agent@ars.test", "ARA", unsigned) == (
        "message non authentifié : commande ignorée (dkim=none (no signature))")
    assert refusal("agent@ars.test", "ARA", SenderVerdict(address="agent@ars.test")) == (
        "message non authentifié : commande ignorée (signature DKIM absente ou invalide)")
    assert refusal("agent@ars.test", None, authenticated()) == "région inconnue : commande ignorée"
    assert refusal("pdl@ars.test", "ARA", authenticated("pdl@ars.test")) == (
        "pdl@ars.test ne fait pas partie des agents SSI de la région ARA : commande ignorée")
    assert refusal("agent@ars.test", "ARA", authenticated()) is None
    staff_member(s, "pdl@ars.test", "ARA")
    assert refusal("pdl@ars.test", "ARA", authenticated("pdl@ars.test")) is None


def test_a_token_names_the_case_of_its_pending_command(s: Session) -> None:
    target = case(s)
    orphan = Confirmation(token="aaaa", case_id=None, command="clore", args=[], requested_by="a@ars.test",
                          created_at=NOW, expires_at=NOW + timedelta(hours=1))
    pending = Confirmation(token="bbbb", case_id=target.id, command="clore", args=[], requested_by="a@ars.test",
                           created_at=NOW, expires_at=NOW + timedelta(hours=1))
    s.add_all([orphan, pending])
    s.flush()

    def found(*commands: Command) -> Case | None:
        return handling._case_from_token(s, commands)

    assert found(Command("confirmer", ("BBBB",))) is target
    assert found(Command("annuler", ("bbbb",))) is target
    assert found(Command("confirmer", ("aaaa",)), Command("annuler", ("bbbb",))) is target  # the next one counts
    assert found(Command("confirmer", ("cccc",)), Command("confirmer", ("bbbb",))) is target
    assert found(Command("note", ("bbbb",))) is None
    assert found(Command("confirmer", ())) is None
    assert found(Command("confirmer", ("aaaa",))) is None
    assert found() is None


# --- receipts and duplicates -----------------------------------------------------------------


def test_a_repeated_command_is_reported_as_a_duplicate(env: Env) -> None:
    assert handling._duplicate(Command("note", ("x",), True, None, "#note x")) == {
        "name": "note", "line": "#note x", "applied": False,
        "message": "déjà dans ce message (objet ou corps) : exécutée une seule fois", "digest": False,
        "pending": False, "preview": None, "text": None, "duplicate": True}


def test_help_the_whole_list_a_pointer_or_nothing(env: Env) -> None:
    ctx = Ctx(env=env, session=cast(Session, None), inbound=cast(Any, None), facts=MessageFacts(), case=None,
              actor="agent@ars.test", region="ARA", now=NOW)
    assert handling._help(ctx) is None
    ctx.help_pointer = True
    assert handling._help(ctx) == HELP_POINTER
    ctx.show_help = True
    assert handling._help(ctx) == help_text()


def test_written_to_the_gateway_alone(env: Env) -> None:
    def written(*recipients: str) -> bool:
        return handling.written_to_the_gateway(env, MessageFacts(recipients=recipients), "agent@ars.test")

    assert written("ssi-ara@ars.test", " SSI-PDL@ARS.test ")  # the gateway's mailboxes, any case
    assert written("ssi-ara@ars.test", "agent@ars.test")  # the sender copying itself
    assert written()
    assert not written("ssi-ara@ars.test", "referent@ars.test")  # a colleague: agents talking
    assert not written("ssi-ara@ars.test", "autre@ars.test")
    assert not written("ssi-ara@ars.test", "dsi@chu.test")


# --- replies: who speaks for the case ------------------------------------------------------


def test_from_acss_only_authenticated_from_its_address_or_domains(env: Env) -> None:
    def acss(address: str, verdict: SenderVerdict) -> bool:
        return handling._from_acss(env, address, MessageFacts(sender=verdict))

    assert acss("acss@esante.test", authenticated("acss@esante.test"))
    assert acss("cert@esante.test", authenticated("cert@esante.test"))
    assert not acss("acss@esante.test", SenderVerdict(address="acss@esante.test"))
    assert not acss("dsi@chu.test", authenticated("dsi@chu.test"))
    settings = replace(env.settings, acss=replace(env.settings.acss, address="ACSS@Cellule.TEST"),
                       authentication=replace(env.settings.authentication, acss_domains=("Esante.TEST",)))
    other = replace(env, settings=settings)
    assert handling._from_acss(other, "acss@cellule.test", MessageFacts(sender=authenticated("acss@cellule.test")))
    assert handling._from_acss(other, "x@esante.test", MessageFacts(sender=authenticated("x@esante.test")))
    assert not handling._from_acss(other, "x@cellule.test", MessageFacts(sender=authenticated("x@cellule.test")))


def test_case_domains_declarant_contacts_and_the_national_cell(env: Env, s: Session) -> None:
    s.add(Establishment(finess="690000011", name="CH", updated_at=NOW))
    s.flush()
    s.add(Contact(finess="690000011", address="RSSI@Contact.TEST", role="rssi", created_at=NOW, updated_at=NOW))
    s.flush()
    settings = replace(env.settings, acss=replace(env.settings.acss, address="ACSS@Cellule.TEST"),
                       authentication=replace(env.settings.authentication, acss_domains=("Esante.TEST", "")))
    other = replace(env, settings=settings)
    full = case(s, declarant="DSI@CHU.test", finess="690000011")
    assert handling._case_domains(other, s, full) == {"chu.test", "contact.test", "cellule.test", "esante.test"}
    bare = case(s, declarant="pas une adresse", finess=None)
    assert handling._case_domains(other, s, bare) == {"cellule.test", "esante.test"}
    assert handling._case_domains(other, s, case(s, declarant=None)) == {"cellule.test", "esante.test"}


def test_status_refusal_who_may_reopen_a_closed_case(env: Env, s: Session) -> None:
    closed = case(s, declarant="dsi@chu.test")

    def why(verdict: SenderVerdict) -> str | None:
        return handling.status_refusal(env, s, closed, MessageFacts(sender=verdict))

    assert why(SenderVerdict(address="dsi@chu.test")) == "réponse non authentifiée"
    assert why(authenticated("attaquant@autre.test")) == (
        "attaquant@autre.test n'appartient pas à l'établissement du dossier")
    assert why(authenticated(" Attaquant@Autre.TEST ")) == (
        "attaquant@autre.test n'appartient pas à l'établissement du dossier")
    assert why(authenticated(None)) == "expéditeur inconnu n'appartient pas à l'établissement du dossier"
    assert why(authenticated("rssi@chu.test")) is None
    assert why(authenticated(" RSSI@CHU.test")) is None
    assert why(authenticated("cert@esante.test")) is None


# --- the domain is what follows the last "@" (RFC 5322 §3.4.1: a quoted local part may hold one) -------


def test_quoted_local_parts_holding_an_at_sign(env: Env, s: Session) -> None:
    settings = replace(env.settings,
                       regions=(RegionSettings(code="ARA", address='"ssi@x"@Region.TEST'),),
                       staff=(StaffSettings(address='"a@b"@Staff.TEST', region="ARA"),),
                       dkim=None, acss=replace(env.settings.acss, address='"a@x"@Cellule.TEST'))
    other = replace(env, settings=settings)
    assert agency_domains(other.settings) == {"region.test", "staff.test"}
    assert handling.looks_like_staff(env, s, '"x@y"@ars.test')
    assert handling.written_to_the_gateway(other, MessageFacts(recipients=(' "SSI@x"@region.test',)), "")
    assert handling._from_acss(env, '"x@y"@esante.test', MessageFacts(sender=authenticated('"x@y"@esante.test')))
    s.add(Establishment(finess="690000012", name="CH", updated_at=NOW))
    s.flush()
    s.add(Contact(finess="690000012", address='"r@x"@Contact.TEST', role="rssi", created_at=NOW, updated_at=NOW))
    s.flush()
    row = case(s, declarant='"dsi@x"@CHU.test', finess="690000012")
    assert handling._case_domains(other, s, row) == {"chu.test", "contact.test", "cellule.test", "esante.test"}
    reply = MessageFacts(sender=authenticated('"dsi@y"@chu.test'))
    assert handling.status_refusal(other, s, row, reply) is None


def test_a_follow_up_case_carries_the_closed_ones_declaration(env: Env, s: Session) -> None:
    closed = case(s, title="T" * 600, finess="690781810", establishment="CH", category="CH", incident_type="x",
                  nature="cyber", declarant="dsi@chu.test", tlp="AMBER")
    row = InboundMessage(sha256="f" * 64, raw=b"x", size=1, source="cli", received_at=NOW, region="ARA")
    s.add(row)
    s.flush()
    new = handling._follow_up(env, s, row, MessageFacts(message_id="<r@chu.test>"), closed)
    assert new.title == f"Suite de {closed.reference} — {'T' * 600}"[:500] and len(new.title) == 500
    assert new.fields == {"suite_de": closed.reference}
    assert (new.region, new.kind, new.status) == ("ARA", "incident", "RECU")
    for name in ("finess", "establishment", "category", "incident_type", "nature", "declarant", "tlp"):
        assert getattr(new, name) == getattr(closed, name), name
    assert (new.linked_case_id, closed.linked_case_id) == (closed.id, new.id)
