"""Classification order: loop, bounce, auto_reply, reply/command, alert, declaration, unknown."""

from __future__ import annotations

import pytest

from mailgateway.mail.analyse import analyse
from mailgateway.mail.context import AnalysisContext
from mailgateway.mail.facts import SenderVerdict
from tests.support.messages import make_alert, make_declaration, make_dsn, make_message, make_reply
from tests.support.schema import assert_valid_facts

# A DKIM pass covering the steering headers (docs/guarantees.md: an uncovered Subject makes an alert not authentic).
SIGNED = frozenset({"from", "to", "subject", "date", "message-id", "in-reply-to", "references",
                    "content-type", "content-transfer-encoding", "mime-version"})
ACSS = SenderVerdict("alerte@esante.gouv.fr", "esante.gouv.fr", True, "dkim", "esante.gouv.fr", signed_headers=SIGNED)


def test_our_loop_header_makes_a_loop_even_for_a_declaration(ctx: AnalysisContext) -> None:
    raw = make_declaration(extra_headers={"X-Mailgateway-Loop": "mailgateway:ars-sante.test"})
    assert analyse(raw, ctx).kind == "loop"


def test_mail_from_our_own_address_is_a_loop(ctx: AnalysisContext) -> None:
    assert analyse(make_message(sender="ssi-ara@ars-sante.test"), ctx).kind == "loop"


def test_dsn_is_a_bounce_with_recipient_status_and_original_id(ctx: AnalysisContext) -> None:
    facts = analyse(make_dsn(), ctx)
    assert facts.kind == "bounce" and facts.bounce is not None
    assert facts.bounce.recipients == ("ssi@ch-exemple.test",)
    assert facts.bounce.permanent is True
    assert facts.bounce.original_message_id == "out-1@ars-sante.test"
    assert facts.bounce.verp_token == "tok123"
    assert_valid_facts(facts.to_json())


def test_delayed_dsn_is_not_permanent_and_headers_only_still_give_the_id(ctx: AnalysisContext) -> None:
    facts = analyse(make_dsn(status="4.4.1", action="delayed", headers_only=True), ctx)
    assert facts.bounce is not None and facts.bounce.permanent is False
    assert facts.bounce.original_message_id == "out-1@ars-sante.test"


def test_non_standard_bounce_is_found_by_flufl(ctx: AnalysisContext) -> None:
    body = (
        "Hi. This is the qmail-send program at mx.example.test.\n"
        "I'm afraid I wasn't able to deliver your message to the following addresses.\n"
        "This is a permanent error; I've given up. Sorry it didn't work out.\n\n"
        "<gone@ch-exemple.test>:\nSorry, no mailbox here by that name. (#5.1.1)\n\n"
        "--- Below this line is a copy of the message.\n"
    )
    raw = make_message(sender="MAILER-DAEMON@mx.example.test", subject="failure notice", body=body)
    facts = analyse(raw, ctx)
    assert facts.kind == "bounce" and facts.bounce is not None
    assert "gone@ch-exemple.test" in facts.bounce.recipients


@pytest.mark.parametrize(
    "headers",
    [
        {"Auto-Submitted": "auto-replied"},
        {"Precedence": "bulk"},
        {"X-Autoreply": "yes"},
        {"X-Auto-Response-Suppress": "All"},
        {"Return-Path": "<>"},
    ],
)
def test_auto_reply_headers(headers: dict[str, str], ctx: AnalysisContext) -> None:
    assert analyse(make_reply(extra_headers=headers), ctx).kind == "auto_reply"


@pytest.mark.parametrize(
    "subject",
    [
        "Réponse automatique : [SSI-ARA-2026-0042] Bulletin",
        "Absence du bureau",
        "Out of Office: x",
        "Automatic reply: [SSI-ARA-2026-0042]",
        "RE: Réponse automatique : x",
    ],
)
def test_out_of_office_subjects(subject: str, ctx: AnalysisContext) -> None:
    assert analyse(make_message(subject=subject, body="Je suis absent."), ctx).kind == "auto_reply"


def test_auto_submitted_no_is_not_an_auto_reply(ctx: AnalysisContext) -> None:
    assert analyse(make_reply(extra_headers={"Auto-Submitted": "no"}), ctx).kind == "reply"


def test_out_of_office_to_our_verp_address_is_an_auto_reply(ctx: AnalysisContext) -> None:
    raw = make_message(
        to="bounces+tok9@ars-sante.test",
        subject="Réponse automatique : x",
        extra_headers={"Auto-Submitted": "auto-replied"},
    )
    assert analyse(raw, ctx).kind == "auto_reply"


def test_reply_threaded_by_lookup(ctx: AnalysisContext) -> None:
    facts = analyse(make_reply(in_reply_to="<out-99@ars-sante.test>", subject="Re: sans tag"), ctx)
    assert (facts.kind, facts.case_ref, facts.region) == ("reply", "SSI-ARA-2026-0099", "ARA")
    assert facts.new_text == "Merci, voici les informations demandées."
    assert facts.commands == ()


def test_staff_reply_with_commands(ctx: AnalysisContext, staff_verdict: SenderVerdict) -> None:
    raw = make_reply(sender="referent.ssi@ars-sante.test", body="#assigner moi\n#Qualifier Grave\n#clôturer")
    facts = analyse(raw, ctx, staff_verdict)
    assert facts.kind == "command" and facts.case_ref == "SSI-ARA-2026-0042"
    assert [(c.name, c.args, c.accepted) for c in facts.commands] == [
        ("assigner", ("moi",), True),
        ("qualifier", ("grave",), True),
        ("clore", (), True),
    ]
    assert_valid_facts(facts.to_json())


def test_commands_without_authentication_are_refused_with_a_reason(ctx: AnalysisContext) -> None:
    facts = analyse(make_reply(sender="referent.ssi@ars-sante.test", body="#clore"), ctx)
    assert facts.kind == "command" and facts.sender.authenticated is False
    assert facts.commands[0].accepted is False and facts.commands[0].reason


def test_subject_query_command_without_thread(ctx: AnalysisContext, staff_verdict: SenderVerdict) -> None:
    facts = analyse(make_message(sender="referent.ssi@ars-sante.test", subject="#ouverts", body=""), ctx, staff_verdict)
    assert facts.kind == "command" and facts.commands[0].name == "ouverts" and facts.commands[0].accepted


def test_bulletin_request_by_mail(ctx: AnalysisContext, staff_verdict: SenderVerdict) -> None:
    raw = make_message(
        sender="referent.ssi@ars-sante.test",
        subject="#bulletin Campagne d'hameçonnage",
        body="#cible categorie=LBM departement=69\n\nMadame, Monsieur, ...",
    )
    facts = analyse(raw, ctx, staff_verdict)
    assert facts.kind == "command" and facts.is_bulletin_request
    assert [(c.name, c.args) for c in facts.commands] == [
        ("bulletin", ("Campagne d'hameçonnage",)),
        ("cible", ("categorie=LBM", "departement=69")),
    ]


def test_unthreaded_staff_commands_in_body(ctx: AnalysisContext, staff_verdict: SenderVerdict) -> None:
    raw = make_message(sender="referent.ssi@ars-sante.test", subject="point", body="#retards")
    assert analyse(raw, ctx, staff_verdict).kind == "command"


def test_authentic_acss_alert(ctx: AnalysisContext) -> None:
    facts = analyse(make_alert(), ctx, ACSS)
    assert facts.kind == "alert" and facts.alert is not None
    a = facts.alert
    assert (a.reference, a.tlp, a.authentic) == ("CERTFR-2026-ALE-012", "AMBER", True)
    assert a.title == "Vulnérabilité critique dans un VPN"
    assert a.targets == ("ETABLISSEMENT_SANTE", "LBM") and a.cves == ("CVE-2026-12345",)
    assert {"type": "url", "value": "https://malveillant.example/x"} in facts.to_json()["indicators"]


def test_spoofed_alert_is_recognised_but_not_authentic(ctx: AnalysisContext) -> None:
    facts = analyse(make_alert(sender="CERT Santé <alerte@esante-gouv.test>"), ctx)
    assert facts.kind == "alert" and facts.alert is not None and facts.alert.authentic is False


def test_alert_from_subdomain_of_acss_domain_authenticated(ctx: AnalysisContext) -> None:
    verdict = SenderVerdict("a@cert.esante.gouv.fr", "cert.esante.gouv.fr", True, "dkim", "cert.esante.gouv.fr",
                            signed_headers=SIGNED)
    facts = analyse(make_alert(sender="a@cert.esante.gouv.fr", extra_headers={"Precedence": "bulk"}), ctx, verdict)
    assert facts.kind == "alert" and facts.alert is not None and facts.alert.authentic


def test_unknown_mail_has_a_quarantine_reason(ctx: AnalysisContext) -> None:
    facts = analyse(make_message(subject="Déjeuner", body="On se voit à midi ?"), ctx)
    assert facts.kind == "unknown" and facts.quarantine_reason


def test_region_from_recipient_then_reference_then_default(ctx: AnalysisContext) -> None:
    from dataclasses import replace

    assert analyse(make_declaration(to="ssi-pdl@ars-sante.test"), ctx).region == "PDL"
    assert analyse(make_reply("SSI-PDL-2026-0001", to="x@y.test"), ctx).region == "PDL"
    single = replace(ctx, default_region="ARA")
    assert analyse(make_declaration(to="x@y.test"), single).region == "ARA"


def test_headers_in_facts(ctx: AnalysisContext) -> None:
    facts = analyse(make_reply(message_id="<m1@x.test>", reply_to="r@x.test"), ctx)
    assert facts.message_id == "m1@x.test" and facts.reply_to == "r@x.test"
    assert facts.in_reply_to == ("ack.SSI-ARA-2026-0042@ars-sante.test",)
    assert facts.recipients == ("ssi-ara@ars-sante.test",)
    assert facts.subject.startswith("RE: [SSI-ARA-2026-0042]")
