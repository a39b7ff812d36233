"""Bounces of one message to several agents (issue 19: mail to staff is one message, its rows
share one return path). Found by outside testers:

- a report naming both agents marks both copies undelivered, each on the case's story;
- a report naming none of them (an agent's mailbox forwards elsewhere) blames nobody: no copy
  marked, no address scored, the story says a copy went astray and to whom the message went;
- a report naming an agent whose copy is still queued (a 4xx) cancels nothing: only a copy the
  relay took can come back;
- a copy reported undelivered is mail to staff that did not arrive: ``status`` lists it.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from mailgateway.cases.story import describe
from mailgateway.dispatch import failures
from mailgateway.store.models import OutboundMessage
from tests.support.casegateway import Gateway, gateway_from, settings_data
from tests.support.db import at_head
from tests.support.relaying import send_all

AGENTS = ("agent@ars.test", "referent@ars.test")


@pytest.fixture
def gw(sqlite_url: str) -> Iterator[Gateway]:
    data = settings_data(at_head(sqlite_url))
    data["outbound"] = {"bounce_domain": "ars.test"}
    yield from gateway_from(data)


def report(return_path: str, message_id: str, *recipients: str) -> bytes:
    """An RFC 3464 report from the agents' MTA, one block per recipient."""
    blocks = "".join(f"\r\nFinal-Recipient: rfc822; {r}\r\nAction: failed\r\nStatus: 5.1.1\r\n"
                     f"Diagnostic-Code: smtp; 550 5.1.1 User unknown\r\n" for r in recipients)
    return (
        "From: Mail Delivery System <MAILER-DAEMON@mx.ars.test>\r\n"
        f"To: {return_path}\r\nSubject: Undelivered Mail Returned to Sender\r\n"
        "Message-ID: <dsn-7@mx.ars.test>\r\nDate: Fri, 27 Nov 2026 10:00:00 +0100\r\nAuto-Submitted: auto-replied\r\n"
        "MIME-Version: 1.0\r\n"
        'Content-Type: multipart/report; report-type=delivery-status; boundary="B"\r\n\r\n'
        "--B\r\nContent-Type: text/plain\r\n\r\nYour message could not be delivered.\r\n"
        "--B\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; mx.ars.test\r\n"
        f"{blocks}"
        "--B\r\nContent-Type: text/rfc822-headers\r\n\r\n"
        f"From: ssi-ara@ars.test\r\nTo: {', '.join(AGENTS)}\r\nMessage-ID: {message_id}\r\n"
        "Subject: Nouvelle déclaration\r\n--B--\r\n"
    ).encode()


def notification_rows(gw: Gateway, ref: str) -> dict[str, OutboundMessage]:
    case = gw.case(ref)
    return {r.recipient: r for r in gw.outbound("notification_equipe") if r.case_id == case.id}


def staff_failed(gw: Gateway) -> list[str]:
    with gw.app.factory() as session:
        return [f.recipient for f in failures.staff_failures(session, AGENTS, gw.clock.now().replace(year=2000))]


def story(gw: Gateway, ref: str) -> list[str]:
    return [describe(e.type, e.data or {}) for e in gw.events(ref)]


def test_a_report_naming_both_agents_marks_both(gw: Gateway) -> None:
    ref = gw.declare(1)
    send_all(gw)
    rows = notification_rows(gw, ref)
    first = rows[AGENTS[0]]
    gw.feed(report(first.mail_from, first.message_id, *AGENTS))
    after = notification_rows(gw, ref)
    assert {a: after[a].status for a in AGENTS} == {a: "bounced" for a in AGENTS}
    lines = [line for line in story(gw, ref) if "Non-remise" in line]
    assert len(lines) == 2 and all(any(a in line for line in lines) for a in AGENTS)
    assert sorted(staff_failed(gw)) == sorted(AGENTS)  # status, metrics and the digest see them


def test_a_report_naming_nobody_of_the_message_blames_nobody(gw: Gateway) -> None:
    ref = gw.declare(1)
    send_all(gw)
    first = notification_rows(gw, ref)[AGENTS[0]]
    result = gw.feed(report(first.mail_from, first.message_id, "jean.martin@perso.test"))
    assert result.status == "processed"
    assert {r.status for r in notification_rows(gw, ref).values()} == {"sent"}
    assert staff_failed(gw) == []
    [line] = [line for line in story(gw, ref) if "Non-remise" in line]
    assert "jean.martin@perso.test" in line and "renvoi" in line and all(a in line for a in AGENTS)


def test_a_report_about_a_copy_still_queued_cancels_nothing(gw: Gateway) -> None:
    ref = gw.declare(1)
    rows = notification_rows(gw, ref)
    first = rows[AGENTS[0]]
    with gw.app.factory.begin() as session:  # the agent's copy went; the referent's got a 4xx
        row = session.get(OutboundMessage, first.id)
        assert row is not None
        row.status = "sent"
    gw.feed(report(first.mail_from, first.message_id, AGENTS[1]))
    after = notification_rows(gw, ref)
    assert (after[AGENTS[0]].status, after[AGENTS[1]].status) == ("sent", "queued")
    assert [r for _path, r, _raw in send_all(gw) if r in AGENTS] == [AGENTS[1]]  # still delivered
