"""A person quoting a mail log is not a bounce (found by two outside testers: a hospital's
declaration pasting « RCPT TO:<…> » or « 550 5.1.1 <…>: Recipient address rejected » from its
mail server's log — common in a phishing or mail incident — was dropped as a bounce: no case,
no acknowledgement, no quarantine). A report found by its words and an address alone (no RFC
3464 part, no VERP token, no report's sender, subject or null return path) gives way to an
authenticated sender, a case reference or a declaration; real bounces keep their evidence."""

from __future__ import annotations

import pytest

from mailgateway.mail.analyse import analyse
from mailgateway.mail.context import AnalysisContext
from mailgateway.mail.facts import SenderVerdict

LOGS = [
    "RCPT TO:<ssi-pdl@ars-sante.test>",
    "Extrait du journal :\nto=<ssi-pdl@ars-sante.test>, status=bounced (550 user unknown)",
    "Le serveur a répondu 550 5.1.1 <jean@chu-exemple.test>: Recipient address rejected",
]
CHU = SenderVerdict("rssi@chu-exemple.test", "chu-exemple.test", True, "dkim", "chu-exemple.test",
                    signed_headers=frozenset({"from", "to", "subject", "date", "message-id"}))


def _mail(subject: str, body: str, sender: str = "rssi@chu-exemple.test") -> bytes:
    return (f"From: {sender}\r\nTo: ssi-ara@ars-sante.test\r\nSubject: {subject}\r\n"
            "Date: Sat, 05 Dec 2026 23:10:17 +0100\r\nMessage-ID: <q1@chu-exemple.test>\r\nMIME-Version: 1.0\r\n"
            "Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
            + body.replace("\n", "\r\n") + "\r\n").encode()


DECLARATION = "Numéro FINESS : 690781810\nType d'incident : hameçonnage\nGravité : grave\n\n{log}\n"


@pytest.mark.parametrize("log", LOGS)
@pytest.mark.parametrize("verdict", [CHU, None], ids=["authenticated", "unauthenticated"])
def test_a_declaration_quoting_a_mail_log_is_a_declaration(ctx: AnalysisContext, log: str,
                                                           verdict: SenderVerdict | None) -> None:
    facts = analyse(_mail("Déclaration d'incident", DECLARATION.format(log=log)), ctx, verdict)
    assert facts.kind == "declaration" and facts.bounce is None


@pytest.mark.parametrize("log", LOGS)
def test_an_authenticated_mail_quoting_a_log_is_not_a_bounce(ctx: AnalysisContext, log: str) -> None:
    facts = analyse(_mail("Les journaux demandés", f"Bonjour,\n\n{log}\n\nCordialement"), ctx, CHU)
    assert facts.kind != "bounce"


@pytest.mark.parametrize("verdict", [CHU, None], ids=["authenticated", "unauthenticated"])
def test_a_case_reply_quoting_a_log_is_a_reply(ctx: AnalysisContext, verdict: SenderVerdict | None) -> None:
    facts = analyse(_mail("[SSI-ARA-2026-0099] journaux", f"Voici le journal :\n{LOGS[2]}\n"), ctx, verdict)
    assert facts.kind == "reply" and facts.case_ref == "SSI-ARA-2026-0099"


def test_a_report_with_a_reports_sender_is_still_a_bounce(ctx: AnalysisContext) -> None:
    raw = _mail("Undelivered Mail Returned to Sender",
                f"This is the mail system at host mx.chu-exemple.test.\n\nI'm sorry to have to inform you that "
                f"your message could not be delivered.\n\n{LOGS[2]}\n", sender="MAILER-DAEMON@mx.chu-exemple.test")
    facts = analyse(raw, ctx, None)
    assert facts.kind == "bounce" and facts.bounce is not None and not facts.bounce.words_only


DSN_FIELDS = ("Reporting-MTA: dns; mx.chu-exemple.test\nFinal-Recipient: rfc822; victime@hopital-b.test\n"
              "Action: failed\nStatus: 5.1.1\nDiagnostic-Code: smtp; 550 5.1.1 user unknown")


@pytest.mark.parametrize(("subject", "quoted"), [
    ("Déclaration d'incident : compte messagerie compromis", DSN_FIELDS),  # DSN fields quoted
    ("TR: Undelivered Mail Returned to Sender", LOGS[2]),  # a report's subject, forwarded
    ("Déclaration d'incident : Mail delivery failed", LOGS[0]),
])
@pytest.mark.parametrize("verdict", [CHU, None], ids=["authenticated", "unauthenticated"])
def test_a_declaration_quoting_a_report_is_a_declaration(ctx: AnalysisContext, subject: str, quoted: str,
                                                         verdict: SenderVerdict | None) -> None:
    """A report about no mail of ours (no VERP token, no Message-ID we sent) could only be ignored
    as a bounce: when it reads as a declaration it is one (found by an outside tester)."""
    facts = analyse(_mail(subject, DECLARATION.format(log=quoted)), ctx, verdict)
    assert facts.kind == "declaration"


def test_a_report_about_our_mail_stays_a_bounce_even_naming_a_case(ctx: AnalysisContext) -> None:
    """A non-delivery report sent to the regional mailbox, quoting our acknowledgement (its
    Message-ID is ours) and its subject with the case reference: a bounce, never a case reply."""
    body = (f"Votre message n'a pas pu être remis.\n\n{LOGS[2]}\n\nMessage d'origine :\n"
            "> From: ARS <ssi-ara@ars-sante.test>\n> Message-ID: <mg.abc@ars-sante.test>\n"
            + DECLARATION.format(log=""))
    raw = _mail("[SSI-ARA-2026-0099] Accusé de réception", body, sender="postmaster@chu-exemple.test")
    raw = raw.replace(b"Content-Type: text/plain", b"In-Reply-To: <mg.abc@ars-sante.test>\r\nContent-Type: text/plain")
    facts = analyse(raw, ctx, None)
    assert facts.kind == "bounce"


def test_only_an_authenticated_senders_thread_orders_our_references(ctx: AnalysisContext) -> None:
    """An outsider's References must not choose the thread our mail joins (found by an outside
    tester): their mail is answered with the Message-IDs ordered to find the case, ours first."""
    raw = _mail("Déclaration d'incident", DECLARATION.format(log="")).replace(
        b"Content-Type: text/plain",
        b"References: <alert-77@esante.gouv.fr> <x@evil.test>\r\nIn-Reply-To: <out-99@ars-sante.test>\r\n"
        b"Content-Type: text/plain")
    assert analyse(raw, ctx, None).thread_chain == ()
    signed = SenderVerdict(CHU.address, CHU.domain, True, "dkim", CHU.auth_domain,
                           signed_headers=CHU.signed_headers | {"references", "in-reply-to"})
    assert analyse(raw, ctx, signed).thread_chain == ("alert-77@esante.gouv.fr", "x@evil.test",
                                                      "out-99@ars-sante.test")
