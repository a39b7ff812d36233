"""A quarantined message reaches staff within minutes, and comes out of quarantine (issue 17).

A hospital's reply to a reference that does not exist yet is quarantined; the next run of the
``quarantine_notices`` job tells the region's staff (not the other region's), once, with the
number, the French reason, the sender, the subject and how to release it. The quarantine is then
listed, shown and released on the command line and by mail (``#quarantaine``,
``#quarantaine liberer N``, staff of the message's region only); a released message is processed
again — here, once its case exists, it is attached to it.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import select

from mailgateway.app import App, build_app
from mailgateway.cli import main
from mailgateway.clock import FixedClock
from mailgateway.intake.accept import accept_in
from mailgateway.jobs import quarantine as notices
from mailgateway.processing.runner import Result
from mailgateway.scheduler import BY_NAME
from mailgateway.settings import load_settings
from mailgateway.store.engine import transaction
from mailgateway.store.models import InboundMessage, OutboundMessage, QuarantineLog
from tests.support import casemail
from tests.support.dkim import zone

NOW = datetime.now(UTC).replace(microsecond=0)  # the CLI runs on the wall clock
AGENT, REFERENT, PDL = "agent@ars.test", "referent@ars.test", "pdl@ars.test"
HOSPITAL = "dsi@chu.test"


def write_config(path: Path, url: str, maildir: Path) -> Path:
    keys = {**casemail.staff_keys(), **zone(casemail.establishment_key())}
    lines = [
        "[database]", f"url = {json.dumps(url)}", "", "[relay]", f"maildir = {json.dumps(str(maildir))}", "",
        "[authentication]", 'nameservers = ["127.0.0.1"]', "dns_timeout_seconds = 0.1",
        'acss_domains = ["esante.test"]', "[authentication.static_keys]",
        *(f"{json.dumps(k)} = {json.dumps(v)}" for k, v in keys.items()), "",
        "[acss]", 'address = "acss@esante.test"', "",
        "[[regions]]", 'code = "ARA"', 'name = "Auvergne-Rhône-Alpes"', 'address = "ssi-ara@ars.test"',
        "[[regions]]", 'code = "PDL"', 'name = "Pays de la Loire"', 'address = "ssi-pdl@ars.test"',
        "[[staff]]", f'address = "{AGENT}"', 'region = "ARA"',
        "[[staff]]", f'address = "{REFERENT}"', 'region = "ARA"', 'role = "referent"',
        "[[staff]]", f'address = "{PDL}"', 'region = "PDL"', "",
    ]
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


@dataclass
class Gateway:
    app: App
    clock: FixedClock
    config: Path

    def feed(self, raw: bytes) -> Result:
        with transaction(self.app.factory) as s:
            inbound = accept_in(s, raw, source="smtp", now=self.clock.now()).inbound_id
        return self.app.processor.process(inbound)

    def mails(self, kind: str, to: str | None = None) -> list[OutboundMessage]:
        with self.app.factory() as s:
            stmt = select(OutboundMessage).where(OutboundMessage.kind == kind).order_by(OutboundMessage.id)
            if to:
                stmt = stmt.where(OutboundMessage.recipient == to)
            return list(s.scalars(stmt))

    def cli(self, *args: str) -> int:
        return main([*args, "-c", str(self.config)])

    def staff(self, body: str, sender: str = AGENT) -> Result:
        to = "ssi-pdl@ars.test" if sender == PDL else "ssi-ara@ars.test"
        return self.feed(casemail.staff_mail(body, sender=sender, to=to, subject=body, date=NOW))


@pytest.fixture
def gw(tmp_path: Path) -> Iterator[Gateway]:
    config = write_config(tmp_path / "mg.toml", f"sqlite:///{tmp_path / 'mg.db'}", tmp_path / "outbox")
    clock = FixedClock(NOW)
    app = build_app(load_settings(config), clock=clock)
    try:
        yield Gateway(app, clock, config)
    finally:
        app.close()


def reference() -> str:
    return f"SSI-ARA-{NOW.year}-0001"


def reply_to_unknown_case() -> bytes:
    return casemail.message(sender=HOSPITAL, to="ssi-ara@ars.test",
                            subject=f"RE: [{reference()}] Compléments\r\nBcc: injecte@evil.test",
                            body="Bonjour,\nvoici les compléments demandés.\n")


def quarantined(gw: Gateway) -> int:
    result = gw.feed(reply_to_unknown_case())
    assert result.status == "quarantined", result
    return result.inbound_id


def test_a_quarantined_message_reaches_the_regions_staff_within_minutes(gw: Gateway) -> None:
    number = quarantined(gw)
    assert BY_NAME["quarantine_notices"].describe(gw.app.settings.scheduler) == "toutes les 5 min"
    outcome = notices.run(gw.app, NOW + timedelta(minutes=5))
    assert outcome.count == 1 and outcome.mails == 2
    assert {m.recipient for m in gw.mails("avis_quarantaine")} == {AGENT, REFERENT}  # not PDL
    notice = casemail.parse(gw.mails("avis_quarantaine", AGENT)[0].raw)
    assert "Quarantaine" in str(notice["Subject"]) and "[SSI ARA]" in str(notice["Subject"])
    assert notice["Bcc"] is None  # the subject of the quarantined mail is text, never a header
    body = casemail.text_of(gw.mails("avis_quarantaine", AGENT)[0].raw)
    assert f"n° {number}" in body
    assert f"réponse à un dossier inconnu : {reference()}" in body  # the reason, in French
    assert HOSPITAL in body and "Compléments" in body
    assert "#quarantaine liberer N" in body and "mailgateway quarantine release N" in body

    # Announced once: the next run has nothing new, a second message makes a second notice.
    assert notices.run(gw.app, NOW + timedelta(minutes=10)).mails == 0
    quarantined_again = gw.feed(casemail.message(sender="x@inconnu.test", to="ssi-ara@ars.test",
                                                 subject="Bonjour", body="Rien de reconnaissable.\n"))
    assert quarantined_again.status == "quarantined"
    gw.clock.at = NOW + timedelta(minutes=12)
    later = notices.run(gw.app, NOW + timedelta(minutes=15))
    assert later.count == 1 and later.mails == 2


def test_a_flood_is_one_notice_per_region(gw: Gateway) -> None:
    for n in range(30):
        gw.feed(casemail.message(sender=f"x{n}@inconnu.test", to="ssi-ara@ars.test", subject=f"Spam {n}",
                                 body=f"Rien de reconnaissable {n}.\n"))
    outcome = notices.run(gw.app, NOW + timedelta(minutes=5))
    assert outcome.count == 30 and outcome.mails == 2  # one notice per staff member, not 30
    body = casemail.text_of(gw.mails("avis_quarantaine", AGENT)[0].raw)
    assert body.count("  - n° ") == notices.LIST_LIMIT and "… et 10 autre(s)" in body


def test_command_line_list_show_release(gw: Gateway, capsys: pytest.CaptureFixture[str]) -> None:
    number = quarantined(gw)
    assert gw.cli("quarantine", "list") == 0
    out = capsys.readouterr().out
    assert str(number) in out and "réponse à un dossier inconnu" in out
    assert out.splitlines()[0].split()[:3] == ["ID", "REÇU", "LE"]  # a header line, as the other lists
    assert gw.cli("quarantine", "list", "--json") == 0
    assert json.loads(capsys.readouterr().out.splitlines()[0])["id"] == number
    assert gw.cli("quarantine", "show", str(number)) == 0
    out = capsys.readouterr().out
    assert f"Message n° {number} en quarantaine" in out
    assert HOSPITAL in out and "Compléments" in out and f"réponse à un dossier inconnu : {reference()}" in out
    # With a history (staff told): shown too (outside tester: it crashed, DetachedInstanceError).
    with gw.app.factory() as s, s.begin():
        s.add(QuarantineLog(inbound_id=number, action="notified", actor="passerelle",
                            at=datetime(2026, 11, 27, 9, 5, tzinfo=UTC), detail=None))
    assert gw.cli("quarantine", "show", str(number)) == 0
    assert ": agents avertis (passerelle)" in capsys.readouterr().out
    assert gw.cli("quarantine", "show", str(number), "--json") == 0
    assert json.loads(capsys.readouterr().out)["history"][0]["action"] == "notified"

    # The case it answers now exists: released, the reply is processed and attached to it.
    case = gw.feed(casemail.declaration(1, sender=HOSPITAL))
    assert case.case_ref == reference()
    assert gw.cli("quarantine", "release", str(number)) == 0
    assert "remis en traitement" in capsys.readouterr().out
    with gw.app.factory() as s:
        log = s.scalars(select(QuarantineLog).where(QuarantineLog.inbound_id == number,
                                                    QuarantineLog.action == "released")).one()
        assert log.action == "released" and log.actor.startswith("cli")
        assert log.detail and "dossier inconnu" in log.detail
    (result,) = gw.app.processor.process_pending()
    assert result.inbound_id == number and result.status == "processed" and result.case_ref == reference()

    assert gw.cli("quarantine", "release", str(number)) == 2
    assert "n'est pas en quarantaine" in capsys.readouterr().err
    assert gw.cli("quarantine", "show", "999999") == 2
    assert "message inconnu en quarantaine : 999999" in capsys.readouterr().err
    assert gw.cli("quarantine", "release", "999999") == 2


def test_quarantine_by_mail(gw: Gateway) -> None:
    number = quarantined(gw)
    assert gw.staff("#quarantaine").status == "processed"
    listing = casemail.text_of(gw.mails("liste_quarantaine", AGENT)[-1].raw)
    assert f"n° {number}" in listing and "réponse à un dossier inconnu" in listing

    # Another region's staff can neither see nor release it.
    gw.staff("#quarantaine", sender=PDL)
    assert f"n° {number}," not in casemail.text_of(gw.mails("liste_quarantaine", PDL)[-1].raw)
    gw.staff(f"#quarantaine liberer {number}", sender=PDL)
    assert "message inconnu en quarantaine" in casemail.text_of(gw.mails("recu_commandes", PDL)[-1].raw)
    with gw.app.factory() as s:
        assert s.get(InboundMessage, number).status == "quarantined"

    gw.feed(casemail.declaration(1, sender=HOSPITAL))
    gw.staff(f"#quarantaine liberer {number}")
    receipt = casemail.text_of(gw.mails("recu_commandes", AGENT)[-1].raw)
    assert f"message n° {number} remis en traitement" in receipt
    with gw.app.factory() as s:
        log = s.scalars(select(QuarantineLog).where(QuarantineLog.inbound_id == number,
                                                    QuarantineLog.action == "released")).one()
        assert (log.action, log.actor) == ("released", AGENT)
    (result,) = gw.app.processor.process_pending()
    assert result.status == "processed" and result.case_ref == reference()


def test_unauthenticated_quarantine_commands_do_nothing(gw: Gateway) -> None:
    number = quarantined(gw)
    forged = casemail.staff_mail(f"#quarantaine liberer {number}", signed=False, subject="x", date=NOW)
    gw.feed(forged)
    with gw.app.factory() as s:
        assert s.get(InboundMessage, number).status == "quarantined"
        assert s.scalar(select(QuarantineLog.id)) is None
