"""Once only (issue 15): replayed command mail and alerts act once; old command mail not at all;
a GRAVE case is closed with a confirmation even when the same mail requalifies it."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import func, select

from mailgateway.app import build_app
from mailgateway.clock import FixedClock
from mailgateway.intake.accept import accept_in
from mailgateway.processing.replay import ALERT_REPLAYED, COMMAND_REPLAYED
from mailgateway.settings import parse_settings
from mailgateway.store.engine import transaction
from mailgateway.store.models import Bulletin, Case, InboundMessage, ReplayKey
from tests.support import casemail
from tests.support.casegateway import NOW, Gateway, make_gateway, settings_data
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
    assert f"Aucune commande n'a été appliquée : {COMMAND_REPLAYED}" in texts[1]


def test_the_same_message_id_under_another_signature_is_refused(gw: Gateway) -> None:
    ref = gw.declare()
    first = threaded(gw, ref, "#qualifier significatif\n", message_id="<cmd-42@ars.test>")
    again = threaded(gw, ref, "#assigner referent@ars.test\n", message_id="<CMD-42@ars.test>")
    assert gw.feed(first).status == "processed"
    result = gw.feed(again)
    assert result.reason == COMMAND_REPLAYED
    assert gw.case(ref).assignee is None
    assert COMMAND_REPLAYED in receipts(gw)[-1]


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
    assert keys.get("mid:keyed@ars.test") == result.inbound_id
    assert any(k.startswith("dkim:ars.test:") for k in keys)


# --- old, undated and future command mail -------------------------------------------------------


def test_a_command_dated_more_than_the_configured_age_before_reception_is_refused(gw: Gateway) -> None:
    ref = gw.declare()
    result = gw.feed(threaded(gw, ref, "#qualifier significatif\n", date=NOW - timedelta(days=8)))
    assert result.status == "processed"
    assert gw.case(ref).severity == "NON_QUALIFIE"
    assert "commande trop ancienne" in receipts(gw)[-1]
    refused = [e for e in gw.events(ref) if e.type == "commande_refusee"]
    assert refused and "trop ancienne" in refused[-1].data["motif"]
    # Refused, not recorded: nothing was run, so nothing is "already run".
    with gw.app.factory() as s:
        assert s.scalar(select(func.count()).select_from(ReplayKey)) == 0


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
    data = settings_data(sqlite_url)
    data["authentication"]["static_keys"] = {**data["authentication"]["static_keys"], **zone(ACSS_KEY)}
    clock = FixedClock(NOW)
    app = build_app(parse_settings(data), clock=clock)
    try:
        yield Gateway(app, clock)
    finally:
        app.close()


def test_an_authentic_alert_replayed_opens_one_case_and_is_relayed_once(acss_gw: Gateway) -> None:
    gw = acss_gw
    raw = casemail.sign(make_alert(sender="CERT Santé <alerte@esante.test>", to="ssi-ara@ars.test",
                                   message_id="<ale-12@esante.test>"), ACSS_KEY)
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
