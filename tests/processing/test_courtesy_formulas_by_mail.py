"""Thanks written freely do not reopen a closed case nor reach staff (outside test, hospital RSSI).

Before: « Merci beaucoup pour votre aide et votre réactivité. Bonne soirée, » and a signature after
« -- » (Thunderbird) reopened the closed case and told the hospital « votre dossier a été rouvert »;
« Merci pour votre aide. » to a relayed alert notified both staff members."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest

from tests.processing.test_relay_forwards import acknowledged, relayed
from tests.processing.test_relay_forwards import gw as relay_gw  # noqa: F401  (fixture)
from tests.support import casemail
from tests.support.casegateway import Gateway, make_gateway

THANKS = "Merci beaucoup pour votre aide et votre réactivité.\n\nBonne soirée,\n\n-- \nPaul Martin\nRSSI"


@pytest.fixture
def gw(sqlite_url: str) -> Iterator[Gateway]:
    yield from make_gateway(sqlite_url)


def thunderbird(sender: str, subject: str, in_reply_to: str, text: str, quoted: str) -> bytes:
    """Thunderbird 115: format=flowed, attribution line, « > » quotes, signature after « -- »."""
    head = (f"From: Paul Martin <{sender}>\r\nTo: ssi-ara@ars.test\r\nSubject: Re: {subject}\r\n"
            f"Message-ID: <tb-{abs(hash(text)) % 10**8}@chu.test>\r\nDate: {casemail.DATE}\r\n"
            f"In-Reply-To: {in_reply_to}\r\nReferences: {in_reply_to}\r\nUser-Agent: Mozilla Thunderbird\r\n"
            "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=UTF-8; format=flowed\r\n"
            "Content-Transfer-Encoding: 8bit\r\n\r\n")
    body = (f"{text}\n\nLe 27/11/2026 à 09:00, ARS Auvergne-Rhône-Alpes - Cellule SSI a écrit :\n"
            + "".join(f"> {line}\n" for line in quoted.splitlines()))
    return (head + body.replace("\n", "\r\n")).encode("utf-8")


def test_a_free_thank_you_leaves_a_closed_serious_case_closed(gw: Gateway) -> None:
    ref = gw.declare()
    gw.command(ref, "#assigner moi\n#qualifier grave\n")
    gw.command(ref, "#clore\n")  # a GRAVE case is closed in two steps
    token = re.search(r"#confirmer ([0-9a-f]{12})", gw.receipt_text())
    assert token, gw.receipt_text()
    gw.command(ref, f"#confirmer {token.group(1)}\n")
    assert gw.case(ref).status == "CLOS" and gw.case(ref).severity == "GRAVE", gw.case(ref).status
    closing = gw.outbound(to="dsi@chu.test")[-1]
    raw = casemail.sign(thunderbird("dsi@chu.test", f"[{ref}] Clôture", closing.message_id, THANKS,
                                    casemail.text_of(closing.raw)), casemail.establishment_key())
    before = len(gw.outbound())
    result = gw.feed(raw)
    assert result.status == "processed" and result.case_ref == ref, result
    assert gw.case(ref).status == "CLOS"
    new = gw.outbound()[before:]
    assert not new, [(o.kind, o.recipient) for o in new]  # no « dossier rouvert », no staff notice
    assert [e.type for e in gw.events(ref)][-1] == "remerciement_recu"


def test_the_same_thanks_with_news_still_reopens(gw: Gateway) -> None:
    ref = gw.declare()
    gw.command(ref, "#assigner moi\n#clore\n")
    closing = gw.outbound(to="dsi@chu.test")[-1]
    text = "Merci beaucoup pour votre aide. Le chiffrement a repris cette nuit sur un second serveur.\n\n-- \nPaul"
    gw.feed(casemail.sign(thunderbird("dsi@chu.test", f"[{ref}] Clôture", closing.message_id, text,
                                      casemail.text_of(closing.raw)), casemail.establishment_key()))
    assert gw.case(ref).status != "CLOS"


def test_a_thank_you_to_the_relay_is_counted_without_notifying_staff(relay_gw: Gateway) -> None:  # noqa: F811
    relayed(relay_gw)
    relay = relay_gw.last("alerte_relais", "ssi@e1.test")
    subject = str(casemail.parse(relay.raw)["Subject"])
    before = len(relay_gw.outbound())
    relay_gw.feed(thunderbird("ssi@e1.test", subject, relay.message_id, "Merci pour votre aide.",
                              casemail.text_of(relay.raw)))
    assert acknowledged(relay_gw) == {"ssi@e1.test"}
    new = relay_gw.outbound()[before:]
    assert not new, [(o.kind, o.recipient) for o in new]
