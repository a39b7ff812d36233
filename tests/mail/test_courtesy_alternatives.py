"""A courtesy must be one in every alternative of the reply (outside attack, issue 16): text/plain
« Merci, bonne journée » beside an HTML part reporting an incident is substantive — Outlook shows
the HTML — so staff are told and a closed case follows ``reply_to_closed``."""

from __future__ import annotations

from mailgateway.mail.analyse import analyse
from mailgateway.mail.context import AnalysisContext

INCIDENT = "<p>Nos serveurs sont chiffrés, une rançon est demandée.</p>"


def reply(html: str) -> bytes:
    return ("From: rssi@chu.test\r\nTo: ssi-ara@ars-sante.test\r\nSubject: RE: Bulletin\r\n"
            "Message-ID: <h1@chu.test>\r\nIn-Reply-To: <out-99@ars-sante.test>\r\nMIME-Version: 1.0\r\n"
            "Content-Type: multipart/alternative; boundary=b\r\n\r\n--b\r\n"
            "Content-Type: text/plain; charset=utf-8\r\n\r\nMerci, bonne journée\r\n--b\r\n"
            "Content-Type: text/html; charset=utf-8\r\n\r\n" + html + "\r\n--b--\r\n").encode()


def test_an_html_part_that_says_more_than_merci_is_not_a_courtesy(ctx: AnalysisContext) -> None:
    facts = analyse(reply("<p>Merci, bonne journée</p>" + INCIDENT), ctx)
    assert facts.kind == "reply" and not facts.extra.get("courtesy")


def test_the_same_merci_in_both_alternatives_is_a_courtesy(ctx: AnalysisContext) -> None:
    facts = analyse(reply("<p>Merci, bonne journée</p>"), ctx)
    assert facts.kind == "reply" and facts.extra.get("courtesy") is True
