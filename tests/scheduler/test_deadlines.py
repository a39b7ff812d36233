"""Deadlines: one reminder per cadence step, escalation to the referent, business time."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from email import message_from_bytes, policy

from sqlalchemy import select

from mailgateway.jobs import deadlines
from mailgateway.jobs.business import Calendar
from mailgateway.store.models import CaseEvent, Reminder
from tests.support.scheduling import AGENT, NOW, REFERENT, Gateway, make_gateway


def reminder_mails(gw: Gateway) -> list[tuple[str, str]]:
    out = []
    for row in gw.outbound("rappel"):
        msg = message_from_bytes(row.raw, policy=policy.default)
        out.append((row.recipient, str(msg["Subject"])))
    return out


def test_an_unacknowledged_case_gets_one_reminder_then_one_escalation(gw: Gateway) -> None:
    ref = gw.declare(sender="no-reply@portail.test")  # no usable declarant: stays RECU
    assert gw.case(ref).status == "RECU"
    for minutes in (0, 30, 59):
        assert deadlines.run(gw.app, NOW + timedelta(minutes=minutes)).count == 0
    for minutes in (60, 60, 61, 90, 119):  # same instant twice, then later in the same step
        deadlines.run(gw.app, NOW + timedelta(minutes=minutes))
    assert reminder_mails(gw) == [(AGENT, f"[{ref}] Rappel : dossier reçu depuis le 01/12/2026 à 09:00"),
                                  (REFERENT, f"[{ref}] Rappel : dossier reçu depuis le 01/12/2026 à 09:00")]
    outcome = deadlines.run(gw.app, NOW + timedelta(minutes=120))
    assert outcome.count == 1 and outcome.summary == "1 rappel envoyé (1 message)"
    for hours in (2, 3, 24, 24 * 30):  # max_steps = 2: never a third reminder
        assert deadlines.run(gw.app, NOW + timedelta(hours=hours)).count == 0
    mails = reminder_mails(gw)
    assert mails[2] == (REFERENT, f"[{ref}] Escalade : dossier reçu depuis le 01/12/2026 à 09:00")
    assert len(mails) == 3
    assert gw.count(Reminder) == 2
    with gw.app.factory() as s:
        events = s.scalars(select(CaseEvent).where(CaseEvent.type == "rappel").order_by(CaseEvent.seq)).all()
    assert [(e.data["etape"], e.data["escalade"], e.data["destinataires"]) for e in events] == [
        (1, False, [AGENT, REFERENT]), (2, True, [REFERENT])]


def test_the_assignee_gets_the_first_reminder_alone(gw: Gateway) -> None:
    ref = gw.declare()
    assert gw.case(ref).status == "PRIS_EN_COMPTE"
    gw.set_status(ref, "PRIS_EN_COMPTE", assignee="charge@ars.test")
    deadlines.run(gw.app, NOW + timedelta(hours=23))
    assert reminder_mails(gw) == []
    deadlines.run(gw.app, NOW + timedelta(hours=24, minutes=1))
    assert [r for r, _ in reminder_mails(gw)] == ["charge@ars.test"]
    deadlines.run(gw.app, NOW + timedelta(hours=48, minutes=1))
    assert [r for r, _ in reminder_mails(gw)] == ["charge@ars.test", REFERENT]


def test_a_new_stay_in_the_status_starts_a_new_deadline(gw: Gateway) -> None:
    ref = gw.declare()
    gw.set_status(ref, "QUALIFIE", at=NOW)
    deadlines.run(gw.app, NOW + timedelta(days=7, minutes=1))
    gw.set_status(ref, "SUIVI", at=NOW + timedelta(days=8))
    gw.set_status(ref, "QUALIFIE", at=NOW + timedelta(days=9))
    deadlines.run(gw.app, NOW + timedelta(days=10))
    assert len(reminder_mails(gw)) == 2  # two staff, first stay
    deadlines.run(gw.app, NOW + timedelta(days=16, minutes=1))
    assert len(reminder_mails(gw)) == 4  # second stay, step 0 again


def test_an_alert_awaiting_approval_is_reminded_after_four_hours(gw: Gateway) -> None:
    ref = gw.declare()
    gw.set_status(ref, "A_DIFFUSER", kind="alert")
    assert deadlines.run(gw.app, NOW + timedelta(hours=3, minutes=59)).count == 0
    assert deadlines.run(gw.app, NOW + timedelta(hours=4)).count == 1
    assert "dossier à diffuser" in reminder_mails(gw)[0][1]


def test_a_closed_case_has_no_deadline(gw: Gateway) -> None:
    ref = gw.declare(sender="no-reply@portail.test")
    gw.set_status(ref, "CLOS")
    assert deadlines.run(gw.app, NOW + timedelta(days=60)).count == 0


def test_business_time_skips_nights_weekends_and_christmas() -> None:
    cal = Calendar(business=True, start_hour=9, end_hour=18)
    paris = datetime(2026, 12, 24, 17, 0, tzinfo=UTC)  # Thursday 24 Dec, 18:00 Paris: closed
    # 25 Dec (Friday) is a public holiday, then the weekend: 1 business hour ends Monday 28 at 10:00.
    assert cal.add(paris, 1) == datetime(2026, 12, 28, 9, 0, tzinfo=UTC)
    # Wednesday 16:00 Paris + 4 business hours = Thursday 11:00 Paris.
    assert cal.add(datetime(2026, 12, 2, 15, 0, tzinfo=UTC), 4) == datetime(2026, 12, 3, 10, 0, tzinfo=UTC)
    # Outside business hours the count starts at the next opening.
    assert cal.add(datetime(2026, 12, 5, 12, 0, tzinfo=UTC), 2) == datetime(2026, 12, 7, 10, 0, tzinfo=UTC)
    assert Calendar(business=False).add(paris, 1) == paris + timedelta(hours=1)


def test_a_deadline_over_christmas_counts_business_time_only(sqlite_url: str) -> None:
    gw = make_gateway(sqlite_url, business_hours=True)
    try:
        christmas_eve = datetime(2026, 12, 24, 16, 30, tzinfo=UTC)  # 17:30 Paris, Thursday
        ref = gw.declare(at=christmas_eve, sender="no-reply@portail.test")
        # 30 business minutes are left on the 24th; the remaining 30 run on Monday 28 from 9:00.
        for at in (datetime(2026, 12, 24, 18, 0), datetime(2026, 12, 25, 12, 0), datetime(2026, 12, 27, 12, 0),
                   datetime(2026, 12, 28, 8, 29)):
            assert deadlines.run(gw.app, at.replace(tzinfo=UTC)).count == 0, at
        assert deadlines.run(gw.app, datetime(2026, 12, 28, 8, 30, tzinfo=UTC)).count == 1
        mail = gw.outbound("rappel")[0].raw.decode()
        assert ref in mail and "ouvr=C3=A9es" in mail  # "ouvrées", quoted-printable
    finally:
        gw.app.close()


def test_a_configured_deadline_replaces_only_its_own_default(sqlite_url: str) -> None:
    gw = make_gateway(sqlite_url, deadlines={"RECU": {"hours": 2.0, "max_steps": 1}, "A_DIFFUSER": {"hours": 0}})
    try:
        rules = deadlines.active_rules(gw.app.settings)
        assert rules["RECU"].hours == 2.0 and rules["QUALIFIE"].hours == 168.0 and "A_DIFFUSER" not in rules
        gw.declare(sender="no-reply@portail.test")
        assert deadlines.run(gw.app, NOW + timedelta(hours=1, minutes=59)).count == 0
        assert deadlines.run(gw.app, NOW + timedelta(hours=2)).count == 1
        assert deadlines.run(gw.app, NOW + timedelta(days=3)).count == 0  # max_steps = 1: no escalation
    finally:
        gw.app.close()
