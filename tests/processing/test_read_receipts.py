"""Read receipts on a case are receipts, never a « Réponse reçue » (issue 16).

Before: an Exchange « Lu : » receipt for the acknowledgement, threaded by its In-Reply-To, was a
reply: staff got « Réponse reçue » and a closed case was reopened. Real formats: Exchange/Outlook
(``multipart/report; report-type=disposition-notification``, base64 French text), Thunderbird
(tests/processing/test_relay_replies.py), Outlook's plain-text receipt, and « Non lu ».
"""

from __future__ import annotations

import base64
from collections.abc import Iterator

import pytest

from mailgateway.mail.analyse import analyse
from mailgateway.mail.context import AnalysisContext
from tests.support import casemail
from tests.support.casegateway import Gateway, make_gateway

EXCHANGE_TEXT = ("Votre message\r\n\r\n  À : dsi@chu.test\r\n  Objet : [{ref}] Accusé de réception\r\n"
                 "  Envoyé : vendredi 27 novembre 2026 10:00:00 (UTC+01:00)\r\n\r\n"
                 "a été lu le vendredi 27 novembre 2026 10:04:31 (UTC+01:00).\r\n")


def exchange_mdn(ref: str, mid: str, disposition: str = "displayed", subject: str = "Lu") -> bytes:
    text = base64.b64encode(EXCHANGE_TEXT.format(ref=ref).encode("utf-8")).decode()
    return (
        f"From: RSSI <dsi@chu.test>\r\nTo: <ssi-ara@ars.test>\r\n"
        f"Subject: =?utf-8?Q?{subject}_=3A_=5B{ref}=5D_Accus=C3=A9_de_r=C3=A9ception?=\r\n"
        f"Date: {casemail.DATE}\r\nMessage-ID: <mdn-x@EX01.chu.test>\r\nIn-Reply-To: {mid}\r\nReferences: {mid}\r\n"
        "MIME-Version: 1.0\r\nX-MS-Exchange-Organization-SCL: -1\r\n"
        'Content-Type: multipart/report; report-type=disposition-notification;\r\n\tboundary="_000_MDN_"\r\n\r\n'
        "--_000_MDN_\r\nContent-Type: text/plain; charset=\"utf-8\"\r\nContent-Transfer-Encoding: base64\r\n\r\n"
        f"{text}\r\n\r\n"
        "--_000_MDN_\r\nContent-Type: message/disposition-notification\r\n\r\n"
        "Final-Recipient: rfc822;dsi@chu.test\r\n"
        f"Disposition: automatic-action/MDN-sent-automatically; {disposition}\r\n"
        f"Original-Message-ID: {mid}\r\n\r\n--_000_MDN_--\r\n"
    ).encode()


def outlook_plain(ref: str, mid: str) -> bytes:
    return (f"From: dsi@chu.test\r\nTo: ssi-ara@ars.test\r\nSubject: Lu : [{ref}] Accusé de réception\r\n"
            f"Date: {casemail.DATE}\r\nMessage-ID: <lu-x@chu.test>\r\nIn-Reply-To: {mid}\r\n"
            "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
            + EXCHANGE_TEXT.format(ref=ref)).encode("utf-8")


@pytest.fixture
def gw(sqlite_url: str) -> Iterator[Gateway]:
    yield from make_gateway(sqlite_url)


@pytest.fixture
def ctx() -> AnalysisContext:
    return AnalysisContext(region_addresses={"ssi-ara@ars-sante.test": "ARA"})


@pytest.mark.parametrize("form", ["exchange", "outlook-plain", "exchange-deleted"])
@pytest.mark.parametrize("closed", [False, True])
def test_a_receipt_for_the_acknowledgement_is_attached_silently(gw: Gateway, form: str, closed: bool) -> None:
    ref = gw.declare()
    if closed:
        gw.command(ref, "#clore\n")
        assert gw.case(ref).status == "CLOS"
    mid = gw.last("accuse_reception", "dsi@chu.test").message_id
    raw = {"exchange": lambda: exchange_mdn(ref, mid), "outlook-plain": lambda: outlook_plain(ref, mid),
           "exchange-deleted": lambda: exchange_mdn(ref, mid, "deleted", "Non_lu")}[form]()
    signed = casemail.sign(raw, casemail.establishment_key())  # even authenticated, it reopens nothing
    result = gw.feed(signed)
    assert result.kind == "auto_reply" and result.case_ref == ref, result
    assert not gw.outbound("notification_reponse")
    assert gw.case(ref).status == ("CLOS" if closed else "PRIS_EN_COMPTE")
    assert gw.events(ref)[-1].type == "message_automatique"


def test_the_receipt_facts(ctx: AnalysisContext) -> None:
    facts = analyse(exchange_mdn("SSI-ARA-2026-0001", "<a@ars-sante.test>"), ctx)
    assert facts.kind == "auto_reply"
    assert facts.extra["receipt"] == {"how": "mdn", "disposition": "displayed", "read": True}
    facts = analyse(exchange_mdn("SSI-ARA-2026-0001", "<a@ars-sante.test>", "deleted", "Non_lu"), ctx)
    assert facts.extra["receipt"]["read"] is False
    facts = analyse(outlook_plain("SSI-ARA-2026-0001", "<a@ars-sante.test>"), ctx)
    assert facts.extra["receipt"] == {"how": "subject", "disposition": "displayed", "read": True}


def test_a_human_reply_starting_with_lu_is_not_a_receipt(ctx: AnalysisContext) -> None:
    raw = casemail.message(sender="dsi@chu.test", to="ssi-ara@ars-sante.test", subject="Lu : votre alerte",
                           body="Nous avons lu votre alerte, mais nos automates sont touchés. Que faire ?",
                           in_reply_to="<a@ars-sante.test>")
    assert "receipt" not in analyse(raw, ctx).extra
