"""Once only (docs/guarantees.md): replayed command mail and alerts act once; old command mail not at all;
a GRAVE case is closed with a confirmation even when the same mail requalifies it."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import func, select

from mailgateway.app import build_app
from mailgateway.clock import PARIS, FixedClock
from mailgateway.intake.accept import accept_in
from mailgateway.processing.replay import ALERT_REPLAYED, COMMAND_REPLAYED
from mailgateway.processing.runner import Result
from mailgateway.settings import parse_settings
from mailgateway.store.engine import transaction
from mailgateway.store.models import Bulletin, Case, InboundMessage, ReplayKey
from tests.support import casemail
from tests.support.bulletins import fill_directory
from tests.support.casegateway import NOW, Gateway, make_gateway, settings_data
from tests.support.db import at_head
from tests.support.dkim import rsa_key, zone
from tests.support.messages import make_alert

RECEIVED = b"Received: from relay.attacker.test (relay.attacker.test [192.0.2.66])\r\n\tby mx.ars.test; " \
           b"Fri, 27 Nov 2026 10:05:00 +0100\r\n"


@pytest.fixture
def gw(sqlite_url: str) -> Iterator[Gateway]:
    yield from make_gateway(sqlite_url)


def token_of(text: str) -> str:
    match = re.search(r"#confirmer ([0-9a-f]{12})", text)
    assert match, text
    return match.group(1)


def threaded(gw: Gateway, ref: str, body: str, **kw: Any) -> bytes:
    """A signed staff answer to the notification of ``ref``, as bytes (to be replayed)."""
    notification = gw.notification(ref, "agent@ars.test")
    kw.setdefault("subject", f"RE: [{ref}] Nouvelle déclaration")
    return casemail.staff_mail(body, in_reply_to=notification.message_id, **kw)


def receipts(gw: Gateway) -> list[str]:
    return [casemail.text_of(r.raw) for r in gw.outbound("recu_commandes", "agent@ars.test")]


# --- replays of command mail --------------------------------------------------------------------


def test_a_signed_command_mail_replayed_with_one_more_received_line_runs_once(gw: Gateway) -> None:
    ref = gw.declare()
    raw = threaded(gw, ref, "#note première\n#repondre Merci, nous revenons vers vous.\n")
    assert gw.feed(raw).status == "processed"
    assert len(gw.outbound("reponse", "dsi@chu.test")) == 1
    # Another content hash, the same DKIM signature and Message-ID: intake stores it again.
    replayed = gw.feed(RECEIVED + raw)
    assert replayed.status == "processed" and replayed.reason == COMMAND_REPLAYED
    assert len(gw.outbound("reponse", "dsi@chu.test")) == 1  # the declarant is not mailed twice
    notes = [e for e in gw.events(ref) if e.type == "note"]
    assert len(notes) == 1
    refused = [e for e in gw.events(ref) if e.type == "commande_refusee"]
    assert len(refused) == 1 and refused[0].data["motif"] == COMMAND_REPLAYED
    assert refused[0].data["deja_execute_par_message"] < replayed.inbound_id
    texts = receipts(gw)
    assert len(texts) == 2 and "[appliquée] #note première" in texts[0]
    # Most replays are a mail client resending: the receipt says when it was applied, calmly.
    when = NOW.astimezone(PARIS).strftime("%d/%m/%Y à %H:%M")
    assert (f"Ce message avait déjà été reçu et ses commandes appliquées le {when}.\r\n"
            "Rien n'a été appliqué une seconde fois : vous n'avez rien à faire.") in texts[1]
    assert "rejoué" not in texts[1] and "Aucune commande" not in texts[1]


def test_the_same_message_id_under_another_signature_is_refused(gw: Gateway) -> None:
    ref = gw.declare()
    first = threaded(gw, ref, "#qualifier significatif\n", message_id="<cmd-42@ars.test>")
    again = threaded(gw, ref, "#assigner referent@ars.test\n", message_id="<CMD-42@ars.test>")
    assert gw.feed(first).status == "processed"
    result = gw.feed(again)
    assert result.reason == COMMAND_REPLAYED
    assert gw.case(ref).assignee is None
    assert "Ce message avait déjà été reçu et ses commandes appliquées le" in receipts(gw)[-1]


def test_a_refused_forgery_does_not_burn_the_message_id_of_the_genuine_mail(gw: Gateway) -> None:
    ref = gw.declare()
    forged = threaded(gw, ref, "#qualifier significatif\n", message_id="<cmd-7@ars.test>", signed=False)
    genuine = threaded(gw, ref, "#qualifier significatif\n", message_id="<cmd-7@ars.test>")
    gw.feed(forged)
    assert gw.case(ref).severity == "NON_QUALIFIE"
    gw.feed(genuine)
    assert gw.case(ref).severity == "SIGNIFICATIF"


def test_a_replayed_confirmation_confirms_nothing_more(gw: Gateway) -> None:
    ref = gw.declare()
    gw.command(ref, "#qualifier grave\n#clore\n")
    token = token_of(gw.receipt_text())
    confirm = threaded(gw, ref, f"#confirmer {token}\n")
    gw.feed(confirm)
    assert gw.case(ref).status == "CLOS"
    gw.command(ref, "#rouvrir\n")
    assert gw.feed(RECEIVED + confirm).reason == COMMAND_REPLAYED
    assert gw.case(ref).status == "SUIVI"


def test_keys_are_recorded_with_the_commands_they_ran(gw: Gateway) -> None:
    ref = gw.declare()
    result = gw.feed(threaded(gw, ref, "#note x\n", message_id="<Keyed@ARS.test>"))
    with gw.app.factory() as s:
        keys = {k.key: k.inbound_id for k in s.scalars(select(ReplayKey))}
    # Scoped by the case's region.
    region = gw.case(ref).region
    assert keys.get(f"{region}|mid:keyed@ars.test") == result.inbound_id
    assert any(k.startswith(f"{region}|dkim:ars.test:") for k in keys)


# --- old, undated and future command mail -------------------------------------------------------


def test_a_command_dated_more_than_the_configured_age_before_reception_is_refused(gw: Gateway) -> None:
    ref = gw.declare()
    result = gw.feed(threaded(gw, ref, "#qualifier significatif\n", date=NOW - timedelta(days=8)))
    assert result.status == "processed"
    assert gw.case(ref).severity == "NON_QUALIFIE"
    assert "commande trop ancienne" in receipts(gw)[-1]
    refused = [e for e in gw.events(ref) if e.type == "commande_refusee"]
    assert refused and "trop ancienne" in refused[-1].data["motif"]
    # Refused, not recorded: nothing was run, so nothing is "already run" (the declaration that
    # opened the case has keys of its own).
    with gw.app.factory() as s:
        assert s.scalar(select(func.count()).select_from(ReplayKey)
                        .where(ReplayKey.inbound_id == result.inbound_id)) == 0


def test_an_undated_or_future_command_is_refused(gw: Gateway) -> None:
    ref = gw.declare()
    undated = casemail.sign(re.sub(rb"Date: [^\r]*\r\n", b"", threaded(gw, ref, "#qualifier grave\n",
                                                                      signed=False)))
    gw.feed(undated)
    assert gw.case(ref).severity == "NON_QUALIFIE"
    assert "en-tête Date absent" in receipts(gw)[-1]
    gw.feed(threaded(gw, ref, "#qualifier grave\n", date=NOW + timedelta(days=3)))
    assert gw.case(ref).severity == "NON_QUALIFIE"
    assert "daté dans le futur" in receipts(gw)[-1]
    gw.feed(threaded(gw, ref, "#qualifier grave\n", date=NOW - timedelta(days=6)))
    assert gw.case(ref).severity == "GRAVE"


def test_the_age_is_measured_from_reception_not_from_a_processing_backlog(gw: Gateway) -> None:
    ref = gw.declare()
    with transaction(gw.app.factory) as s:
        inbound = accept_in(s, threaded(gw, ref, "#qualifier significatif\n"), source="cli", now=NOW).inbound_id
    gw.clock.advance(days=9)  # the gateway was down for nine days
    gw.app.processor.process(inbound)
    assert gw.case(ref).severity == "SIGNIFICATIF"


# --- alerts -------------------------------------------------------------------------------------


ACSS_KEY = rsa_key("acss", "esante.test")


@pytest.fixture
def acss_gw(sqlite_url: str) -> Iterator[Gateway]:
    data = settings_data(at_head(sqlite_url))
    data["authentication"]["static_keys"] = {**data["authentication"]["static_keys"], **zone(ACSS_KEY)}
    clock = FixedClock(NOW)
    app = build_app(parse_settings(data), clock=clock)
    try:
        yield Gateway(app, clock)
    finally:
        app.close()


def test_an_authentic_alert_replayed_opens_one_case_and_is_relayed_once(acss_gw: Gateway) -> None:
    gw = acss_gw
    with transaction(gw.app.factory) as s:  # someone to relay to: a relay to nobody is refused
        fill_directory(s, NOW, 2, category="LBM")
    raw = casemail.sign(make_alert(sender="CERT Santé <alerte@esante.test>", to="ssi-ara@ars.test",
                                   message_id="<ale-12@esante.test>", tlp="TLP:CLEAR"), ACSS_KEY)
    first = gw.feed(raw)
    assert first.kind == "alert" and first.case_ref, first
    assert gw.case(first.case_ref).status == "A_DIFFUSER"
    notified = len(gw.outbound("notification_equipe"))
    second = gw.feed(RECEIVED + raw)
    assert second.status == "processed" and second.reason == ALERT_REPLAYED
    assert second.case_ref == first.case_ref
    with gw.app.factory() as s:
        assert s.scalar(select(func.count()).select_from(Case)) == 1
        row = s.get(InboundMessage, second.inbound_id)
        assert row is not None and row.case_id is not None
    assert len(gw.outbound("notification_equipe")) == notified  # staff are not asked twice
    replayed = [e for e in gw.events(first.case_ref) if e.type == "alerte_rejouee"]
    assert len(replayed) == 1 and replayed[0].data["deja_recue_par_message"] == first.inbound_id
    # Broadcast once; a replay of the approval relays nothing more.
    gw.command(first.case_ref, "#diffuser\n")
    confirm = threaded(gw, first.case_ref, f"#confirmer {token_of(gw.receipt_text())}\n")
    gw.feed(confirm)
    assert gw.case(first.case_ref).status == "DIFFUSEE"
    gw.feed(RECEIVED + confirm)
    with gw.app.factory() as s:
        assert s.scalar(select(func.count()).select_from(Bulletin)) == 1


def test_an_unauthenticated_copy_first_does_not_hide_the_genuine_alert(acss_gw: Gateway) -> None:
    gw = acss_gw
    plain = make_alert(sender="CERT Santé <alerte@esante.test>", to="ssi-ara@ars.test",
                       message_id="<ale-13@esante.test>")
    forged = gw.feed(plain)
    assert forged.case_ref and gw.case(forged.case_ref).status == "RECUE"
    genuine = gw.feed(casemail.sign(plain, ACSS_KEY))
    assert genuine.case_ref and genuine.case_ref != forged.case_ref
    assert gw.case(genuine.case_ref).status == "A_DIFFUSER"
    # ... and once the genuine one is in, an unsigned copy is a replay too.
    again = gw.feed(RECEIVED + plain)
    assert again.reason == ALERT_REPLAYED and again.case_ref == genuine.case_ref


# --- once per region (docs/guarantees.md: a message to several regional mailboxes is processed per region)


NATIONAL = "Diffusion ARS <diffusion-ars@esante.test>"  # the alert names no regional mailbox in To


def deliver(gw: Gateway, raw: bytes, region: str) -> Result:
    """``raw`` as delivered to ``region``'s SSI mailbox (SMTP envelope recipient / IMAP mailbox)."""
    address = f"ssi-{region.lower()}@ars.test"
    with transaction(gw.app.factory) as s:
        inbound = accept_in(s, raw, source="smtp", now=gw.clock.now(), rcpt_tos=[address],
                            region=region).inbound_id
    return gw.app.processor.process(inbound)


def relayed(region: str) -> bytes:
    """A distinct copy as another delivery carries it (one more Received: line, same signature)."""
    return (f"Received: from mx.esante.test by mx-{region.lower()}.ars.test; "
            "Fri, 27 Nov 2026 10:05:00 +0100\r\n").encode()


def cases_by_region(gw: Gateway) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    with gw.app.factory() as s:
        for case in s.scalars(select(Case).order_by(Case.id)):
            found.setdefault(case.region, []).append(case.reference)
    return found


def test_one_signed_alert_delivered_to_two_regions_opens_a_case_in_each(acss_gw: Gateway) -> None:
    gw = acss_gw
    raw = casemail.sign(make_alert(sender="CERT Santé <alerte@esante.test>", to=NATIONAL,
                                   message_id="<ale-20@esante.test>"), ACSS_KEY)
    ara = deliver(gw, relayed("ARA") + raw, "ARA")
    pdl = deliver(gw, relayed("PDL") + raw, "PDL")
    assert ara.reason is None and pdl.reason is None, (ara, pdl)
    assert ara.case_ref and ara.case_ref.startswith("SSI-ARA-")
    assert pdl.case_ref and pdl.case_ref.startswith("SSI-PDL-")
    assert gw.case(ara.case_ref).status == gw.case(pdl.case_ref).status == "A_DIFFUSER"
    # Each region's staff are told, in their region.
    assert gw.outbound("notification_equipe", "agent@ars.test")
    assert gw.outbound("notification_equipe", "pdl@ars.test")
    # A replay within one region is still refused.
    again = deliver(gw, RECEIVED + relayed("PDL") + raw, "PDL")
    assert again.reason == ALERT_REPLAYED and again.case_ref == pdl.case_ref
    assert cases_by_region(gw) == {"ARA": [ara.case_ref], "PDL": [pdl.case_ref]}
    with gw.app.factory() as s:
        keys = {k.key for k in s.scalars(select(ReplayKey))}
    assert {"ARA|mid:ale-20@esante.test", "PDL|mid:ale-20@esante.test"} <= keys


def test_a_bcc_copy_sent_to_the_wrong_region_first_does_not_suppress_the_right_one(acss_gw: Gateway) -> None:
    """An attacker Bcc'd on a genuine ACSS alert for PDL sends it to ssi-ara before the real
    delivery reaches ssi-pdl: the PDL case must still be opened (it used to be "rejoué")."""
    gw = acss_gw
    raw = casemail.sign(make_alert(sender="CERT Santé <alerte@esante.test>", to=NATIONAL,
                                   message_id="<ale-21@esante.test>"), ACSS_KEY)
    attacker = deliver(gw, RECEIVED + raw, "ARA")
    genuine = deliver(gw, relayed("PDL") + raw, "PDL")
    assert genuine.reason is None and genuine.case_ref and genuine.case_ref.startswith("SSI-PDL-"), genuine
    assert gw.case(genuine.case_ref).status == "A_DIFFUSER"
    assert gw.outbound("notification_equipe", "pdl@ars.test")
    assert attacker.case_ref and attacker.case_ref.startswith("SSI-ARA-")


def test_a_command_mail_copied_to_a_second_regional_mailbox_runs_once(gw: Gateway) -> None:
    """Commands are scoped by their case's region, not by the mailbox a copy landed in."""
    ref = gw.declare()
    raw = threaded(gw, ref, "#note une seule fois\n", to="ssi-ara@ars.test")
    assert deliver(gw, relayed("ARA") + raw, "ARA").reason != COMMAND_REPLAYED
    assert deliver(gw, relayed("PDL") + raw, "PDL").reason == COMMAND_REPLAYED
    assert len([e for e in gw.events(ref) if e.type == "note"]) == 1


# --- confirmation within one mail ---------------------------------------------------------------


def test_requalifying_a_grave_case_and_closing_it_in_one_mail_still_needs_the_token(gw: Gateway) -> None:
    ref = gw.declare()
    gw.command(ref, "#qualifier grave\n")
    gw.command(ref, "#qualifier sans-suite\n#clore\n")
    case = gw.case(ref)
    assert case.status != "CLOS" and case.severity == "SANS_SUITE"
    token = token_of(gw.receipt_text())
    gw.command(ref, f"#confirmer {token}\n")
    assert gw.case(ref).status == "CLOS"


@pytest.mark.parametrize("body", [
    "#qualifier grave\n#qualifier significatif\n#clore\n",  # GRAVE only in the middle of the mail
    "#qualifier sans-suite\n#statut clos\n",
    "#qualifier significatif\n#statut cloture\n",
])
def test_a_case_grave_at_any_point_of_the_mail_is_not_closed_without_confirmation(gw: Gateway, body: str) -> None:
    ref = gw.declare()
    if not body.startswith("#qualifier grave"):
        gw.command(ref, "#qualifier grave\n")
    gw.command(ref, body)
    assert gw.case(ref).status != "CLOS"
    assert "#confirmer" in gw.receipt_text()


def test_a_case_never_grave_is_still_closed_at_once(gw: Gateway) -> None:
    ref = gw.declare()
    gw.command(ref, "#qualifier significatif\n#qualifier sans-suite\n#clore\n")
    assert gw.case(ref).status == "CLOS"


def test_merging_a_grave_case_away_into_a_non_grave_one_needs_the_token(gw: Gateway) -> None:
    first = gw.declare(1)
    gw.clock.advance(hours=1)
    second = gw.declare(2)
    gw.command(second, "#qualifier grave\n")
    gw.command(second, f"#qualifier sans-suite\n#fusionner {first}\n")
    assert gw.case(second).merged_into_id is None and gw.case(second).status != "CLOS"
    gw.command(second, f"#confirmer {token_of(gw.receipt_text())}\n")
    merged = gw.case(second)
    assert merged.merged_into_id == gw.case(first).id and merged.status == "CLOS"


def test_merging_a_grave_case_into_a_grave_one_goes_on_at_once(gw: Gateway) -> None:
    first = gw.declare(1)
    gw.clock.advance(hours=1)
    second = gw.declare(2)
    gw.command(first, "#qualifier grave\n")
    gw.command(second, f"#qualifier grave\n#fusionner {first}\n")
    assert gw.case(second).merged_into_id == gw.case(first).id


def test_confirmer_without_its_token_names_the_one_waiting_on_the_case(gw: Gateway) -> None:
    # An outside tester: « #confirmer » alone, in answer to the receipt holding the token, got
    # « jeton de confirmation inconnu » and no word of which one.
    ref = gw.declare()
    gw.command(ref, "#qualifier grave\n#clore\n")
    token = token_of(gw.receipt_text())
    gw.command(ref, "#confirmer\n")
    assert gw.case(ref).status != "CLOS"
    assert (f"jeton manquant : recopiez la ligne « #confirmer <jeton> » du compte rendu ; en attente sur {ref} : "
            f"#confirmer {token} (#clore)") in gw.receipt_text()
