"""One view of a message, from the outside (docs/guarantees.md, item 1): a genuinely signed staff reply,
altered in transit and sent over SMTP to the real daemon, is refused with ``550 5.6.0`` and changes
no case; the same bytes fed through ``mailgateway ingest`` (as IMAP would) are stored, then
quarantined with the French reason."""

from __future__ import annotations

import json
import smtplib
from collections.abc import Iterator
from datetime import UTC, datetime
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest

from tests.support import casemail
from tests.support.dkim import dkimpy_verify
from tests.support.gateway import DECLARATION, GatewayConfig, RunningGateway, wait_until
from tests.support.servers import SmtpSink

YEAR = datetime.now().year
REF = f"SSI-PDL-{YEAR}-0001"
STAFF = "agent@ars.test"
DECLARANT = "dsi@chu-nantes.test"


@pytest.fixture
def gateway(tmp_path: Path, smtp_sink: SmtpSink) -> Iterator[RunningGateway]:
    config = GatewayConfig(tmp_path / "gw", relay_port=smtp_sink.port, static_keys=casemail.staff_keys())
    with RunningGateway(config) as gw:
        yield gw


def first_to(sink: SmtpSink, address: str) -> EmailMessage:
    found = wait_until(lambda: sink.messages_to(address), timeout=20)
    return casemail.parse(found[0].raw)


def show(gw: RunningGateway) -> Any:
    return gw.config.cli_json("cases", "show", REF)


def reply(parent: EmailMessage, body: str) -> bytes:
    """A staff reply to ``parent``, DKIM-signed by the agency's domain (a genuine mail)."""
    return casemail.staff_mail(body, to="ssi-pdl@ars.test", subject=f"RE: {parent['Subject']}",
                               in_reply_to=parent["Message-ID"], date=datetime.now(UTC))


def send(gw: RunningGateway, raw: bytes) -> tuple[int, str]:
    """(code, text) of the answer to DATA; smtplib sends bytes as they are (bare CRs included)."""
    with smtplib.SMTP("127.0.0.1", gw.config.smtp_port, local_hostname="client.test", timeout=30) as s:
        try:
            s.sendmail(STAFF, ["ssi-pdl@ars.test"], raw)
        except smtplib.SMTPDataError as exc:
            error = exc.smtp_error
            return exc.smtp_code, error.decode() if isinstance(error, bytes) else error
    return 250, ""


def ingest(gw: RunningGateway, raw: bytes) -> Any:
    return json.loads(gw.config.cli("ingest", "--json", "-", input=raw).stdout)


def test_altered_signed_replies_are_refused_at_smtp_and_quarantined_at_ingest(
    gateway: RunningGateway, smtp_sink: SmtpSink
) -> None:
    gateway.send(DECLARATION.encode(), mail_from=DECLARANT)
    notification = first_to(smtp_sink, STAFF)
    wait_until(lambda: show(gateway)["status"], timeout=20)
    before = show(gateway)

    # The bare-CR fold: for dkimpy " #clore" is the continuation of an unsigned X-Mailer (the
    # signature still verifies); for the email package the header ended and it is a body line.
    genuine = reply(notification, "Merci, je regarde.\n")
    head, sep, body = genuine.partition(b"\r\n\r\n")
    fold = head + b"\r\nX-Mailer: x\r\r\n #clore\r\n #repondre https://phish.test/reset" + sep + body
    assert dkimpy_verify(fold, casemail.staff_keys())
    code, text = send(gateway, fold)
    assert code == 550 and text.startswith("5.6.0 Bare CR in the header block / message refuse : "), text

    # A header block that is no header block at all.
    code, text = send(gateway, b"\x00\xff\xfe garbage that is not a message\r\n" * 10)
    assert code == 550 and text.startswith("5.6.0 Malformed header line (neither a field nor a continuation) / "), text

    # A prepended Subject (and In-Reply-To) above a signed command mail.
    signed = reply(notification, "#assigner moi\n")
    prepended = b"Subject: #clore\r\nIn-Reply-To: <another@ars.test>\r\n" + signed
    code, text = send(gateway, prepended)
    assert code == 550 and text.startswith("5.6.0 Duplicate Subject header field (RFC 5322 section 3.6) / "), text

    # The same bytes through the IMAP/CLI path: stored, then quarantined with the reason.
    result = ingest(gateway, prepended)
    assert (result["status"], result["kind"], result["case_ref"]) == ("quarantined", "unknown", None)
    assert "en-tête Subject présent plusieurs fois" in result["reason"]
    result = ingest(gateway, fold)
    assert result["status"] == "quarantined" and "retour chariot" in result["reason"]

    after = show(gateway)
    assert (after["status"], after.get("assignee")) == (before["status"], before.get("assignee"))

    # The genuine command, unaltered, still works.
    code, _text = send(gateway, signed)
    assert code == 250
    wait_until(lambda: show(gateway).get("assignee") == STAFF, timeout=20)
