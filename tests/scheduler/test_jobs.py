"""Digest, weekly report, retention and housekeeping on real cases."""

from __future__ import annotations

import io
from datetime import UTC, datetime, timedelta
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path

from PIL import Image
from sqlalchemy import select, update

from mailgateway.cases import views
from mailgateway.clock import aware
from mailgateway.jobs import digest, housekeeping, report, retention
from mailgateway.store.engine import transaction
from mailgateway.store.models import Case, CaseEvent, InboundMessage, JobRun, OutboundMessage
from tests.support.scheduling import AGENT, NOW, REFERENT, Gateway

MONDAY_REPORT = datetime(2026, 12, 7, 7, 10, tzinfo=UTC)  # Monday 7 Dec, 08:10 Paris


def parse(raw: bytes) -> EmailMessage:
    msg = message_from_bytes(raw, policy=policy.default)
    assert isinstance(msg, EmailMessage)
    return msg


def text_of(msg: EmailMessage) -> str:
    body = msg.get_body(("plain",))
    assert body is not None
    return str(body.get_content())


def test_the_digest_lists_new_overdue_and_open_cases_once_a_day(gw: Gateway) -> None:
    late = gw.declare(at=NOW - timedelta(days=3), sender="no-reply@portail.test")  # RECU, overdue
    fresh = gw.declare(at=NOW - timedelta(hours=2))
    gw.set_status(gw.declare(at=NOW - timedelta(hours=1)), "A_DIFFUSER", kind="alert")
    gw.set_status(gw.declare(at=NOW - timedelta(days=5)), "CLOS")
    at = NOW  # 09:00 Paris
    outcome = digest.run(gw.app, at)
    assert outcome.mails == 2 and outcome.summary == "synthèse quotidienne : envoyée à 2 destinataires"
    assert digest.run(gw.app, at + timedelta(hours=1)).skipped  # once per day
    rows = gw.outbound("synthese")
    assert sorted(r.recipient for r in rows) == [AGENT, REFERENT]
    msg = parse(rows[0].raw)
    assert str(msg["Subject"]) == "[SSI ARA] Synthèse du 01/12/2026 : 2 nouveaux, 1 en retard, 3 ouverts"
    text = text_of(msg)
    overdue = text.split("== Dossiers en retard : 1")[1].split("==")[0]
    assert late in overdue and fresh not in overdue
    assert "Alertes en attente de validation : 1" in text
    assert msg.get_body(("html",)) is not None
    assert digest.run(gw.app, at + timedelta(days=1)).mails == 2  # next day, a new digest


def _populate(gw: Gateway) -> None:
    """Three weeks of declarations of several types, acknowledged and some qualified."""
    for week, (incident, count) in enumerate((("rançongiciel", 2), ("hameçonnage", 3), ("fuite de données", 1))):
        for i in range(count):
            opened = datetime(2026, 11, 17, 9, 0, tzinfo=UTC) + timedelta(weeks=week, hours=i)
            ref = gw.declare(at=opened, incident=incident)
            if i == 0:
                gw.set_status(ref, "QUALIFIE", at=opened + timedelta(hours=30), severity="GRAVE",
                              qualified_at=opened + timedelta(hours=30))


def test_the_weekly_report_embeds_its_charts_with_a_text_fallback(gw: Gateway) -> None:
    _populate(gw)
    outcome = report.run(gw.app, MONDAY_REPORT)
    assert outcome.mails == 2
    assert report.run(gw.app, MONDAY_REPORT + timedelta(hours=2)).skipped  # once per week
    msg = parse(gw.outbound("rapport_hebdo")[0].raw)
    assert str(msg["Subject"]) == "[SSI ARA] Rapport hebdomadaire : 1 déclaration en S49, 6 sur 12 semaines"
    text = text_of(msg)
    assert "RANCONGICIEL : 2" in text and "HAMECONNAGE : 3" in text
    assert "Qualification : médiane 30.0 h" in text
    html = msg.get_body(("html",))
    assert html is not None
    related = [p for p in msg.walk() if p.get_content_type() == "multipart/related"]
    assert len(related) == 1
    images = [p for p in related[0].iter_parts() if p.get_content_type() == "image/png"]
    assert len(images) == 3
    html_text = str(html.get_content())
    for part in images:
        cid = str(part["Content-ID"]).strip("<>")
        assert f'src="cid:{cid}"' in html_text
        picture = Image.open(io.BytesIO(part.get_content()))
        assert picture.size == (640, 280)
        lo, hi = picture.convert("L").getextrema()
        assert lo < 100 and hi > 200  # drawn, not blank


def test_the_weekly_export_writes_csv_and_png_from_the_cli(gw: Gateway, tmp_path: Path, sqlite_url: str) -> None:
    from mailgateway.cli import main

    _populate(gw)
    config = tmp_path / "mg.toml"
    config.write_text(f'''
[database]
url = "{sqlite_url}"
[[regions]]
code = "ARA"
name = "Auvergne-Rhône-Alpes"
address = "ssi-ara@ars.test"
''')
    out = tmp_path / "export"
    assert main(["report", "weekly", "-c", str(config), "--out", str(out), "--now", "2026-12-07T08:10"]) == 0
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted(f"ARA_{n}.{ext}" for n in ("declarations_par_type", "declarations_par_gravite", "delais")
                           for ext in ("csv", "png"))
    lines = (out / "ARA_declarations_par_type.csv").read_text(encoding="utf-8").splitlines()
    assert lines[0] == "semaine;HAMECONNAGE;RANCONGICIEL;FUITE_DONNEES;total"
    assert lines[-3:] == ["2026-11-16;0;2;0;2", "2026-11-23;3;0;0;3", "2026-11-30;0;0;1;1"]
    assert len(lines) == 13
    with Image.open(out / "ARA_delais.png") as picture:
        assert picture.size == (640, 280)


def test_retention_purges_personal_data_and_keeps_the_audit_chain(gw: Gateway) -> None:
    kept = gw.declare()
    ref = gw.declare()
    closed = NOW + timedelta(days=3)
    gw.set_status(ref, "CLOS", at=closed, closed_at=closed)
    with transaction(gw.app.factory) as s:  # the acknowledgement was delivered
        s.execute(update(OutboundMessage).values(status="sent"))
    assert retention.run(gw.app, closed + timedelta(days=729)).count == 0
    outcome = retention.run(gw.app, closed + timedelta(days=731))
    assert outcome.summary == "rétention : 1 dossier anonymisé, 4 messages purgés"
    assert retention.run(gw.app, closed + timedelta(days=800)).count == 0  # once
    with gw.app.factory() as s:
        case = s.scalars(select(Case).where(Case.reference == ref)).one()
        assert case.declarant is None and case.anonymised_at is not None
        # Decided at the T given, dated on the gateway's clock when done (``run-due --now T``).
        event = s.scalars(select(CaseEvent).where(CaseEvent.case_id == case.id,
                                                  CaseEvent.type == "anonymisation")).one()
        assert aware(event.at) == gw.app.clock.now() == aware(case.anonymised_at)
        assert "summary" not in case.fields["declaration"] and case.fields["declaration"]["incident_type"]
        assert case.incident_type == "RANCONGICIEL"  # statistics stay
        inbound = s.scalars(select(InboundMessage).where(InboundMessage.case_id == case.id)).one()
        assert inbound.raw == b"" and inbound.purged_at is not None and inbound.mail_from is None
        assert all(o.raw == b"" for o in s.scalars(select(OutboundMessage).where(OutboundMessage.case_id == case.id)))
        other = s.scalars(select(Case).where(Case.reference == kept)).one()
        assert other.declarant == "dsi@chu.test" and other.anonymised_at is None
        breaks, checked = views.verify_cases(s, None)
        assert breaks == [] and checked == 2


def test_housekeeping_requeues_messages_whose_lease_expired(gw: Gateway) -> None:
    gw.declare()
    with transaction(gw.app.factory) as s:
        s.execute(update(OutboundMessage).values(status="sending", lease_owner="dead:1",
                                                 lease_until=NOW + timedelta(minutes=5)))
    assert housekeeping.run(gw.app, NOW + timedelta(minutes=4)).count == 0
    outcome = housekeeping.run(gw.app, NOW + timedelta(minutes=6))
    assert outcome.count == 3 and outcome.summary.startswith("maintenance : 3 messages réclamés")
    assert {r.status for r in gw.outbound("accuse_reception") + gw.outbound("notification_equipe")} == {"queued"}


def test_the_quarantine_summary_is_sent_only_when_something_was_quarantined(gw: Gateway) -> None:
    assert housekeeping.quarantine_summary(gw.app, NOW).mails == 0
    with transaction(gw.app.factory) as s:
        from mailgateway.intake.accept import accept_in

        inbound = accept_in(s, b"From: x@y.test\r\nSubject: ?\r\n\r\nrien", source="cli", now=NOW).inbound_id
    gw.app.processor.process(inbound)
    with gw.app.factory() as s:
        assert s.get(InboundMessage, inbound).status == "quarantined"  # type: ignore[union-attr]
    next_day = NOW + timedelta(days=1)
    outcome = housekeeping.quarantine_summary(gw.app, next_day)
    assert outcome.count == 1 and outcome.mails == 2
    assert housekeeping.quarantine_summary(gw.app, next_day + timedelta(minutes=5)).skipped
    assert housekeeping.quarantine_summary(gw.app, next_day + timedelta(days=1)).mails == 0  # nothing new
    assert gw.count(JobRun, JobRun.job == "quarantine_summary") == 3
    text = text_of(parse(gw.outbound("resume_quarantaine")[0].raw))
    assert "1 message a été mis en quarantaine" in text


def test_the_bulletins_job_runs_the_bulletin_follow_ups(gw: Gateway) -> None:
    outcome = housekeeping.bulletins(gw.app, NOW)
    assert not outcome.skipped and outcome.mails == 0
    assert outcome.summary == "bulletins : 0 message envoyé (rapports, relances)"


def test_the_weekly_figures_cut_weeks_at_midnight_in_paris_not_utc(gw: Gateway) -> None:
    """Sunday 23:10 UTC is Monday 00:10 in Paris: the current week, not counted yet. The columns
    hold UTC: a Paris bound compared as UTC took that case into the week before, which it did
    not belong to (KeyError, the test suite run at 23:44 UTC)."""
    from mailgateway.jobs.stats import compute

    sunday_in_paris = gw.declare(at=datetime(2026, 12, 6, 22, 50, tzinfo=UTC))  # 23:50 Paris, Sunday
    gw.declare(at=datetime(2026, 12, 6, 23, 10, tzinfo=UTC))  # 00:10 Paris, Monday
    region = gw.case(sunday_in_paris).region
    with gw.app.factory() as s:
        stats = compute(s, region, datetime(2026, 12, 6, 23, 30, tzinfo=UTC))
    assert stats.declarations[-1] == 1 and sum(stats.declarations) == 1
