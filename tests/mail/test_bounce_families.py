"""Bounces as MTAs write them (mail/bounce.py, mail/ndr.py), through the real ``analyse``.

Each fixture in tests/data/bounces/ is a report for a message we sent to ``%RCPT%`` with our VERP
return path; the returned message's To: names other people (direction@, cadre@, qualite@). The
tests check: recognised as a bounce (even with an empty return path or Auto-Submitted), the
address we sent to (never the returned message's To:, RFC 3464 Original-Recipient over
Final-Recipient, the address an alias was expanded from), the report's own diagnostic kept, and
the mail that must never be a bounce (challenge/response, whitelist confirmations, vacation
replies, read receipts, an ordinary reply).
"""

from __future__ import annotations

import signal
import time
from pathlib import Path
from types import FrameType

import pytest

from mailgateway.mail import ndr
from mailgateway.mail.analyse import analyse
from mailgateway.mail.bounce import detect_bounce, verp_token
from mailgateway.mail.context import AnalysisContext
from mailgateway.mail.facts import MessageFacts
from mailgateway.mail.parse import parse_message

DATA = Path(__file__).resolve().parents[1] / "data" / "bounces"
RCPT = "jean.dupont@ch-exemple.fr"
VERP = "bounces+5f3a9c@ars-sante.test"
MID = "<bulletin-42.690000001@ars-sante.test>"
# Addresses of the returned message's To:/Cc: in every fixture: never a bounced recipient.
RETURNED_TO = {"direction@ch-exemple.fr", "cadre@ch-exemple.fr", "qualite@ch-exemple.fr"}


def sample(name: str, *, to: str = VERP, rcpt: str = RCPT) -> bytes:
    raw = (DATA / name).read_bytes()
    return raw.replace(b"%VERP%", to.encode()).replace(b"%RCPT%", rcpt.encode()).replace(b"%MID%", MID.encode())


def facts_of(name: str, ctx: AnalysisContext, **kwargs: str) -> MessageFacts:
    return analyse(sample(name, **kwargs), ctx)


# (fixture, diagnostic words that must reach staff)
FAMILIES = [
    ("qmail.eml", "no mailbox here by that name"),
    ("exim.eml", "550 5.1.1 User unknown"),
    ("sendmail.eml", "User unknown"),
    ("postfix-original-recipient.eml", "user unknown"),
    ("office365-en.eml", "couldn't be found"),
    ("exchange-fr-remise-impossible.eml", "L'adresse de messagerie que vous avez entrée est introuvable"),
    ("exchange-fr-remise-echouee.eml", "La boîte aux lettres du destinataire est pleine"),
    ("lotus-notes.eml", "not listed in public Name & Address Book"),
    ("groupwise-user-not-found.eml", "user not found"),
    ("null-sender-plain.eml", "mailbox unavailable"),
    ("nonstandard-report-type.eml", "Utilisateur inconnu"),
    ("broken-mime.eml", "Mailbox full"),
    ("dsn-as-attachment.eml", "No such user"),
    ("isp-fr-plain.eml", "adresse inconnue"),
]


@pytest.mark.parametrize(("name", "words"), FAMILIES, ids=[f[0] for f in FAMILIES])
def test_each_family_is_a_bounce_for_the_address_we_sent_to_with_its_diagnostic(
    name: str, words: str, ctx: AnalysisContext
) -> None:
    facts = facts_of(name, ctx)
    assert facts.kind == "bounce", facts.extra
    bounce = facts.bounce
    assert bounce is not None
    assert bounce.recipients == (RCPT,)
    assert bounce.verp_token == "5f3a9c"
    assert bounce.original_message_id == MID.strip("<>")
    # A full mailbox (Exchange's 5.2.2) is a soft bounce: it never takes the contact out of use.
    assert bounce.permanent is (name not in ("exchange-fr-remise-echouee.eml", "broken-mime.eml"))
    assert bounce.diagnostic is not None and words in bounce.diagnostic


def test_original_recipient_is_reported_rather_than_final_recipient(ctx: AnalysisContext) -> None:
    # RFC 3464 §2.3.1: Original-Recipient is the address as we gave it; the Final-Recipient
    # (jean.dupont@exch01.ch-exemple.local, jdupont@boites...) is where an alias led.
    for name in ("exchange-fr-remise-echouee.eml", "postfix-original-recipient.eml", "dsn-as-attachment.eml"):
        bounce = facts_of(name, ctx).bounce
        assert bounce is not None and bounce.recipients == (RCPT,), name


def test_an_exim_alias_reports_the_address_it_was_generated_from(ctx: AnalysisContext) -> None:
    bounce = facts_of("exim.eml", ctx).bounce
    assert bounce is not None
    assert "secretariat@annuaire.ch-exemple.fr" not in bounce.recipients
    assert bounce.recipients == (RCPT,)


@pytest.mark.parametrize("name", sorted(p.name for p in DATA.glob("*.eml")))
def test_a_recipient_is_never_taken_from_the_returned_message_to(name: str, ctx: AnalysisContext) -> None:
    facts = facts_of(name, ctx)
    reported = set(facts.bounce.recipients) if facts.bounce else set()
    assert not reported & RETURNED_TO


def test_a_report_naming_nobody_reports_nobody_and_still_counts_as_a_bounce(ctx: AnalysisContext) -> None:
    """The old detector once "invented" a recipient from the returned message's To:. A report that
    names no address is still a bounce (its VERP token names the delivery), with no recipient."""
    facts = facts_of("invented-recipient.eml", ctx)
    assert facts.kind == "bounce" and facts.bounce is not None
    assert facts.bounce.recipients == ()
    assert facts.bounce.verp_token == "5f3a9c"
    assert facts.bounce.diagnostic and "could not be delivered" in facts.bounce.diagnostic


@pytest.mark.parametrize("name", ["groupwise-user-not-found.eml", "null-sender-plain.eml", "lotus-notes.eml",
                                  "exchange-fr-remise-impossible.eml", "invented-recipient.eml", "isp-fr-plain.eml"])
def test_a_report_with_an_empty_return_path_is_a_bounce_not_an_auto_reply(name: str, ctx: AnalysisContext) -> None:
    raw = sample(name)
    assert b"Return-Path: <>" in raw
    facts = analyse(raw, ctx)
    assert facts.kind == "bounce", facts.extra
    assert "auto_reply" not in facts.extra


def test_a_report_with_auto_submitted_and_no_address_is_still_a_bounce(ctx: AnalysisContext) -> None:
    raw = sample("invented-recipient.eml").replace(b"Return-Path: <>\r\n", b"Auto-Submitted: auto-replied\r\n")
    assert analyse(raw, ctx).kind == "bounce"


def test_a_report_sent_elsewhere_than_our_verp_address_names_the_recipient(ctx: AnalysisContext) -> None:
    facts = facts_of("qmail.eml", ctx, to="ssi-ara@ars-sante.test")
    assert facts.kind == "bounce" and facts.bounce is not None
    assert facts.bounce.verp_token is None and facts.bounce.recipients == (RCPT,)


NEVER_BOUNCES = ["challenge-response.eml", "whitelist-confirmation-fr.eml", "vacation.eml", "read-receipt-mdn.eml",
                 "read-receipt-outlook.eml", "ordinary-reply.eml"]


@pytest.mark.parametrize("name", NEVER_BOUNCES)
def test_challenges_confirmations_vacations_receipts_and_replies_are_never_bounces(
    name: str, ctx: AnalysisContext
) -> None:
    assert facts_of(name, ctx).kind != "bounce"
    # Not even at our VERP return path, with a null reverse-path: the detector itself says no.
    raw = sample(name).replace(b"To: ssi-ara@ars-sante.test", f"To: {VERP}".encode())
    pm = parse_message(raw)
    assert detect_bounce(pm, verp_token(pm, "bounces", "ars-sante.test")) is None


def test_a_challenge_from_a_mailer_daemon_address_is_still_no_bounce() -> None:
    raw = sample("challenge-response.eml").replace(b"From: Boxbe <notification@boxbe.com>",
                                                   b"From: MAILER-DAEMON@mx.ch-exemple.fr")
    assert detect_bounce(parse_message(raw), None) is None


def test_a_dsn_of_successful_deliveries_only_is_no_bounce(ctx: AnalysisContext) -> None:
    raw = sample("postfix-original-recipient.eml").replace(b"Action: failed", b"Action: delivered").replace(
        b"Status: 5.1.1", b"Status: 2.0.0")
    pm = parse_message(raw)
    assert detect_bounce(pm, None) is None


def test_a_delay_report_is_a_temporary_bounce(ctx: AnalysisContext) -> None:
    raw = sample("broken-mime.eml").replace(b"Action: failed", b"Action: delayed").replace(b"5.2.2", b"4.2.2")
    facts = analyse(raw, ctx)
    assert facts.kind == "bounce" and facts.bounce is not None and facts.bounce.permanent is False


def test_an_out_of_office_at_our_verp_address_stays_an_auto_reply(ctx: AnalysisContext) -> None:
    raw = sample("vacation.eml").replace(b"To: ssi-ara@ars-sante.test", f"To: {VERP}".encode())
    assert analyse(raw, ctx).kind == "auto_reply"


def test_help_desk_addresses_and_the_sender_are_not_recipients() -> None:
    report = ("Delivery has failed to these recipients or groups:\n\n"
              f"{RCPT}\nThe email address couldn't be found.\n"
              "For further assistance, please contact <helpdesk@ch-exemple.fr>\n"
              ">>> MAIL From:<ssi-ara@ars-sante.test> SIZE=100\n")
    assert ndr.failed_recipients(report, ["mailer-daemon@ch-exemple.fr"]) == [RCPT]


# -- bounded work on hostile reports (tests/mail/test_regex_budget.py has the registry) -----------
def _expire(_signum: int, _frame: FrameType | None) -> None:
    raise TimeoutError


@pytest.mark.parametrize("unit", ["a", "a@", "a.", "<a@b.c>:\n", "for <", "{", "generated from a@b.c ",
                                  "Final-Recipient: rfc822; a@b.c\n", " \n", "é"])
def test_a_large_hostile_report_is_read_within_budget(unit: str, ctx: AnalysisContext) -> None:
    body = unit * (200_000 // len(unit))
    raw = (f"From: MAILER-DAEMON@mx.test\r\nTo: {VERP}\r\nSubject: Undelivered Mail\r\nReturn-Path: <>\r\n"
           "Content-Type: text/plain; charset=utf-8\r\n\r\nYour message could not be delivered to:\r\n"
           + body).encode()
    previous = signal.signal(signal.SIGALRM, _expire)
    signal.setitimer(signal.ITIMER_REAL, 10.0)
    start = time.perf_counter()
    try:
        facts = analyse(raw, ctx)
    except TimeoutError:
        pytest.fail(f"analyse of a report of {unit!r} runs still after 10 s")
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    assert time.perf_counter() - start < 5.0
    assert facts.kind in ("bounce", "unknown")


def test_a_person_forwarding_or_quoting_a_report_writes_a_reply_not_a_bounce(ctx: AnalysisContext) -> None:
    """An establishment answering a case with the error its own server gave ("RE: ... user unknown
    <x@...>") must reach the case: only the report's own sender or null return path make a
    reply-prefixed message a report."""
    raw = (
        "From: Jean Dupont <direction@ch-exemple.fr>\r\nTo: ssi-ara@ars-sante.test\r\n"
        "Subject: RE: Bulletin\r\nDate: Fri, 27 Nov 2026 10:00:00 +0100\r\n"
        "Content-Type: text/plain; charset=utf-8\r\n\r\n"
        "Bonjour, notre serveur répond ceci quand nous écrivons à notre RSSI :\r\n"
        "550 5.1.1 <rssi@ch-exemple.fr>: Recipient address rejected: User unknown\r\n"
    ).encode()
    assert detect_bounce(parse_message(raw), None) is None
    assert analyse(raw, ctx).kind != "bounce"


def test_a_report_in_words_we_cannot_read_at_our_verp_address_is_still_a_bounce(ctx: AnalysisContext) -> None:
    raw = (f"From: MAILER-DAEMON@mx.ch-exemple.fr\r\nTo: {VERP}\r\nSubject: =?utf-8?b?5aSx5pWX?=\r\n"
           "Return-Path: <>\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
           "\u914d\u4fe1\u3067\u304d\u307e\u305b\u3093\u3067\u3057\u305f\r\n").encode()
    facts = analyse(raw, ctx)
    assert facts.kind == "bounce" and facts.bounce is not None
    assert facts.bounce.verp_token == "5f3a9c" and facts.bounce.recipients == ()
