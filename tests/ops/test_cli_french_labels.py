"""The operator's terminal reads French, machines read the stored values (t2 probe, finding 5).

``bulletin list`` showed « sent », ``status`` « processed », « declaration » and an ISO 8601
instant; ``--json`` keeps the stored values (/work/shared/DESIGN.md: a contract that may only grow).
"""

from __future__ import annotations

import argparse
import json
import re
from collections.abc import Iterator

import pytest
from sqlalchemy import update
from sqlalchemy.orm import Session, sessionmaker

from mailgateway.cli.bulletin import run as bulletin_cli
from mailgateway.cli.status import run as status_cli
from mailgateway.clock import FixedClock
from mailgateway.settings import parse_settings
from mailgateway.store.engine import transaction
from mailgateway.store.models import OutboundMessage
from tests.support import casemail
from tests.support.bulletins import fill_directory
from tests.support.casegateway import NOW, Gateway, make_gateway
from tests.support.ops import populate


@pytest.fixture
def gw(sqlite_url: str) -> Iterator[Gateway]:
    for gateway in make_gateway(sqlite_url):
        with transaction(gateway.app.factory) as s:
            fill_directory(s, NOW, 2, category="LBM")
        yield gateway


def _sent_bulletin(gw: Gateway) -> None:
    gw.feed(casemail.staff_mail("#cible categorie=LBM\nVérifiez vos sauvegardes.\n", subject="#bulletin Rappel"))
    preview = gw.last("bulletin_apercu", "agent@ars.test")
    subject = str(casemail.parse(preview.raw)["Subject"])
    gw.feed(casemail.staff_mail("#diffuser\n", subject=f"RE: {subject}", in_reply_to=preview.message_id))
    confirmation = gw.last("bulletin_apercu", "agent@ars.test")
    token = re.search(r"#confirmer ([0-9a-f]{12})", casemail.text_of(confirmation.raw))
    assert token
    gw.feed(casemail.staff_mail(f"#confirmer {token.group(1)}\n", subject=f"RE: {subject}",
                                in_reply_to=confirmation.message_id))


def test_bulletin_list_shows_the_state_in_french_and_json_keeps_the_code(
        gw: Gateway, capsys: pytest.CaptureFixture[str]) -> None:
    _sent_bulletin(gw)
    bulletin_cli(argparse.Namespace(bulletin_cmd="list", limit=10, json=False), gw.app.settings)
    row = capsys.readouterr().out.splitlines()[1]
    # Every message queued (stored « sent ») but none handed to the relay yet: not « envoyé ».
    assert " en envoi " in row and " envoyé " not in row, row
    bulletin_cli(argparse.Namespace(bulletin_cmd="status", id=1, state=None, json=False), gw.app.settings)
    assert "(en envoi)" in capsys.readouterr().out
    with transaction(gw.app.factory) as s:
        s.execute(update(OutboundMessage).where(OutboundMessage.bulletin_id.is_not(None)).values(status="sent"))
    bulletin_cli(argparse.Namespace(bulletin_cmd="list", limit=10, json=False), gw.app.settings)
    table = capsys.readouterr().out
    row = table.splitlines()[1]
    assert " envoyé " in row and " sent " not in row, table
    bulletin_cli(argparse.Namespace(bulletin_cmd="status", id=1, state=None, json=False), gw.app.settings)
    assert "(envoyé)" in capsys.readouterr().out
    bulletin_cli(argparse.Namespace(bulletin_cmd="list", limit=10, json=True), gw.app.settings)
    assert json.loads(capsys.readouterr().out)[0]["status"] == "sent"


def test_status_text_is_french_and_json_keeps_the_codes(
        db_url: str, factory: sessionmaker[Session], capsys: pytest.CaptureFixture[str]) -> None:
    populate(factory)
    settings = parse_settings({"database": {"url": db_url},
                               "regions": [{"code": "ARA", "name": "ARA", "address": "ssi-ara@ars.test"}]})
    status_cli(argparse.Namespace(json=False), settings, clock=FixedClock(NOW))
    text = capsys.readouterr().out
    assert "processed" not in text and "declaration" not in text and "queued" not in text, text
    assert re.search(r"\d{4}-\d\d-\d\dT", text) is None, text  # no ISO 8601 instant
    assert "État de mailgateway au 27/11/2026 à 10:00" in text  # Paris time
    assert re.search(r"traités +3 +\(déclaration 2, réponse 1\)", text), text
    assert "(en file 2, en cours d'envoi 1)" in text
    status_cli(argparse.Namespace(json=True), settings, clock=FixedClock(NOW))
    out = json.loads(capsys.readouterr().out)
    assert out["inbound"]["processed"] == {"declaration": 2, "reply": 1}
