"""The whole case process driven by mail through the real daemon.

Declaration → staff notified → ``#assigner moi`` + ``#qualifier grave`` (DKIM-signed by the agency)
→ ``#transmettre-acss`` → the ACSS answer threads back → ``#demander-info`` → the establishment
answers → ``#clore`` + ``#confirmer <jeton>``. Forged and non-staff commands change nothing. The
timeline's hash chain verifies, and a row edited behind the gateway's back is named.
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Iterator
from datetime import UTC, datetime
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest

from tests.support import casemail
from tests.support.dkim import zone
from tests.support.gateway import DECLARATION, GatewayConfig, RunningGateway, wait_until
from tests.support.servers import ReceivedMessage, SmtpSink

YEAR = datetime.now().year
REF = f"SSI-PDL-{YEAR}-0001"
STAFF = "agent@ars.test"
DECLARANT = "dsi@chu-nantes.test"


@pytest.fixture
def gateway(tmp_path: Path, smtp_sink: SmtpSink) -> Iterator[RunningGateway]:
    config = GatewayConfig(tmp_path / "gw", relay_port=smtp_sink.port,
                           static_keys={**casemail.staff_keys(), **zone(casemail.acss_key())})
    with RunningGateway(config) as gw:
        yield gw


class Mailbox:
    """What the relay received, per recipient, waiting for the next one."""

    def __init__(self, sink: SmtpSink) -> None:
        self.sink = sink
        self.seen: dict[str, int] = {}

    def next(self, address: str, timeout: float = 15.0) -> EmailMessage:
        count = self.seen.get(address, 0)
        got: list[ReceivedMessage] = wait_until(
            lambda: (lambda found: found if len(found) > count else None)(self.sink.messages_to(address)),
            timeout=timeout)
        self.seen[address] = count + 1
        return casemail.parse(got[count].raw)

    def none_for(self, address: str) -> bool:
        return len(self.sink.messages_to(address)) == self.seen.get(address, 0)


def show(gw: RunningGateway) -> Any:
    return gw.config.cli_json("cases", "show", REF)


def staff(gw: RunningGateway, body: str, parent: EmailMessage, **kw: Any) -> str:
    """Answer ``parent`` with ``body``; return the Message-ID of the answer."""
    kw.setdefault("sender", STAFF)
    kw.setdefault("date", datetime.now(UTC))  # the daemon refuses commands dated days ago
    raw = casemail.staff_mail(body, to="ssi-pdl@ars.test", subject=f"RE: {parent['Subject']}",
                              in_reply_to=parent["Message-ID"], **kw)
    gw.send(raw, mail_from=kw["sender"])
    return str(casemail.parse(raw)["Message-ID"])


def text(msg: EmailMessage) -> str:
    body = msg.get_body(("plain",))
    assert body is not None
    return str(body.get_content())


def test_case_process_by_mail(gateway: RunningGateway, smtp_sink: SmtpSink) -> None:
    box = Mailbox(smtp_sink)
    gateway.send(DECLARATION.encode(), mail_from=DECLARANT)
    ack = box.next(DECLARANT)
    notification = box.next(STAFF)
    box.next("referent@ars.test")
    assert f"[{REF}]" in ack["Subject"] and f"[{REF}]" in notification["Subject"]

    # Assign and qualify, signed by the agency's domain.
    staff(gateway, "#assigner moi\n#qualifier grave\n", notification)
    receipt = box.next(STAFF)
    assert receipt["In-Reply-To"] and f"[{REF}]" in receipt["Subject"]
    assert "[appliquée] #assigner moi" in text(receipt) and "[appliquée] #qualifier grave" in text(receipt)
    case = show(gateway)
    assert (case["assignee"], case["severity"], case["status"]) == (STAFF, "GRAVE", "QUALIFIE")

    # Forged: unsigned, signed with an unpublished key; and a non-staff sender.
    staff(gateway, "#clore\n", notification, signed=False)
    assert "Aucune n'a été appliquée : ce message n'est pas authentifié" in text(box.next(STAFF))
    staff(gateway, "#clore\n", notification, key=casemail.forger_key())
    assert "Aucune n'a été appliquée : ce message n'est pas authentifié" in text(box.next(STAFF))
    declarant_reply = staff(gateway, "#clore\n", ack, sender=DECLARANT, signed=False)
    box.next(STAFF)  # the assignee is told of the declarant's reply; nothing is applied
    assert show(gateway)["status"] == "QUALIFIE"
    assert box.none_for(DECLARANT)

    # Transmission to the national cell, and its answer threaded by our Message-ID.
    staff(gateway, "#transmettre-acss\n", notification)
    transmission = box.next("acss@esante.test")
    assert f"[{REF}]" in transmission["Subject"]
    assert [p.get_content_type() for p in transmission.iter_attachments()] == ["message/rfc822"]
    box.next(STAFF)  # receipt
    assert show(gateway)["status"] == "EN_QUALIFICATION"
    answer = casemail.message(sender="analyste@esante.test", to="ssi-pdl@ars.test",
                              subject="RE: transmission", body="Qualifié grave, nous appelons le CHU.\n",
                              in_reply_to=transmission["Message-ID"])
    gateway.send(casemail.sign(answer, casemail.acss_key()), mail_from="analyste@esante.test")  # the cell signs
    told = box.next(STAFF)
    assert "Réponse de l'ACSS" in told["Subject"] and f"[{REF}]" in told["Subject"]

    # Request for information to the declarant, threaded under the declaration; the answer.
    staff(gateway, "#demander-info Combien de postes sont chiffrés ?\n", notification)
    request = box.next(DECLARANT)
    box.next(STAFF)  # receipt
    assert request["Subject"].startswith(f"[{REF}]")
    # In reply to the declarant's latest message (their "#clore" reply above), under the thread: its
    # root and its latest messages only (a bounded References, as mail clients trim it).
    assert request["In-Reply-To"] == declarant_reply
    references = request["References"].split()
    assert references[0] == "<decl-1@chu-nantes.test>" and references[-1] == declarant_reply
    assert len(references) <= 5
    assert "Combien de postes sont chiffrés ?" in text(request)
    reply = casemail.message(sender=DECLARANT, to="ssi-pdl@ars.test", subject=f"RE: {request['Subject']}",
                             body="Quarante postes.\n", in_reply_to=request["Message-ID"])
    gateway.send(reply, mail_from=DECLARANT)
    assert "Réponse reçue" in box.next(STAFF)["Subject"]

    # Closing a GRAVE case takes a one-time token.
    staff(gateway, "#clore incident résolu\n", notification)
    token = re.search(r"#confirmer ([0-9a-f]{12})", text(box.next(STAFF)))
    assert token is not None
    assert show(gateway)["status"] == "EN_QUALIFICATION"
    staff(gateway, f"#confirmer {token.group(1)}\n", notification)
    assert "[appliquée]" in text(box.next(STAFF))
    case = show(gateway)
    assert case["status"] == "CLOS"

    timeline = [(e["type"], e["actor"]) for e in case["timeline"]]
    for expected in [("assignation", STAFF), ("qualification", STAFF), ("commande_refusee", STAFF),
                     ("commande_ignoree", DECLARANT), ("message_recu", "analyste@esante.test"),
                     ("message_recu", DECLARANT), ("confirmation", STAFF), ("statut", STAFF)]:
        assert expected in timeline, expected
    kinds = [e["data"].get("type") for e in case["timeline"] if e["type"] == "mail_sortant"]
    assert {"transmission_acss", "demande_info", "recu_commandes", "accuse_reception"} <= set(kinds)

    # The audit chain holds; an edit behind the gateway's back is named.
    assert gateway.config.cli("cases", "verify").returncode == 0
    gateway.stop()
    with sqlite3.connect(gateway.config.db_path) as db:
        db.execute("UPDATE case_events SET actor = 'intrus@example.test' WHERE seq = 3 AND case_id = "
                   "(SELECT id FROM cases WHERE reference = ?)", (REF,))
    verdict = gateway.config.cli("cases", "verify", check=False)
    assert verdict.returncode == 1
    assert f"{REF}: événement 3" in verdict.stderr
