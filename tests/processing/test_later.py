"""Staff notifications wait while a backlog is processed (processing/later.py, issue 19).

In a burst the declarants' acknowledgements go first; each staff notification is written in the
transaction that processed its message and composed once nothing is due, or once it waited
``[processing] staff_notice_max_delay_seconds``. A handful of messages is handled as before: its
notifications in its own transaction. Nothing is lost across a crash; a notice that fails to
compose is said on its case.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import replace
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import select

from mailgateway import status
from mailgateway.app import App, build_app
from mailgateway.cases import service
from mailgateway.cases.timeline import append_event
from mailgateway.clock import FixedClock
from mailgateway.processing import later, runner
from mailgateway.store.engine import reading
from mailgateway.store.models import Case, CaseEvent, DeferredStaffNotice, OutboundMessage
from tests.processing.test_batches import NOW, accept, settings_for
from tests.support import casemail
from tests.support.db import at_head


def declaration(n: int) -> bytes:
    return (
        f"From: rssi{n}@clinique-{n}.test\r\nTo: ssi-ara@ars.test\r\nSubject: Incident {n}\r\n"
        f"Message-ID: <later-{n}@clinique.test>\r\nDate: Fri, 27 Nov 2026 09:00:00 +0100\r\n"
        "Content-Type: text/plain; charset=utf-8\r\n\r\n"
        f"Numéro FINESS : 69078181{n % 10}\r\nType d'incident : rançongiciel\r\n"
        f"Serveurs chiffrés, incident numéro {n}.\r\n"
    ).encode()


@pytest.fixture
def app(db_url: str) -> Iterator[App]:
    application = build_app(settings_for(at_head(db_url)), clock=FixedClock(NOW))
    yield application
    application.close()


def no_delay(app: App) -> None:
    """The bound reached at once (``[processing] staff_notice_max_delay_seconds = 0``)."""
    settings = app.processor.settings
    app.processor.settings = replace(settings, processing=replace(settings.processing,
                                                                  staff_notice_max_delay_seconds=0.0))


def outbox(app: App) -> list[tuple[int, str, str]]:
    with reading(app.factory) as s:
        rows = s.scalars(select(OutboundMessage).order_by(OutboundMessage.id))
        return [(r.id, r.kind, r.idempotency_key) for r in rows]


def waiting(app: App) -> int:
    with reading(app.factory) as s:
        return len(list(s.scalars(select(DeferredStaffNotice.id))))


def processed_deferring(app: App, inbound_ids: list[int]) -> None:
    """``inbound_ids`` processed as by a sweep in a backlog that stops there (a crash, a stop)."""
    app.processor.env.defer_staff_notices = True
    try:
        app.processor.process_batch(inbound_ids)
    finally:
        app.processor.env.defer_staff_notices = False


def test_a_backlog_acknowledges_every_declarant_before_staff_are_notified(app: App) -> None:
    n = runner.BATCH_SIZE + 5  # more than a batch: a backlog
    for i in range(n):
        accept(app, declaration(i))
    results = app.processor.process_pending()
    assert [r.status for r in results] == ["processed"] * n
    rows = outbox(app)
    acks = [i for i, kind, _ in rows if kind == "accuse_reception"]
    notices = [i for i, kind, _ in rows if kind == "notification_equipe"]
    assert len(acks) == n and len(notices) == n  # one agent: a notification each, none lost
    assert max(acks) < min(notices)  # every acknowledgement queued first
    assert waiting(app) == 0  # nothing due any more: all composed at the end of the sweep
    with reading(app.factory) as s:  # each on its case's timeline, as when composed at once
        sent = s.scalars(select(CaseEvent).where(CaseEvent.type == "mail_sortant")).all()
        assert sorted(e.data["type"] for e in sent) == ["accuse_reception"] * n + ["notification_equipe"] * n
        # The original is attached to each, as to a notification composed at once.
        raw = s.scalars(select(OutboundMessage.raw).where(OutboundMessage.kind == "notification_equipe")).first()
        assert raw is not None and b"message-original.eml" in raw
        # Sent after the acknowledgements queued while the sender works through them.
        priorities = set(s.execute(select(OutboundMessage.kind, OutboundMessage.priority)).all())
        assert priorities == {("accuse_reception", 0), ("notification_equipe", later.DEFERRED_PRIORITY)}


def test_a_few_messages_notify_staff_in_their_own_transaction(app: App) -> None:
    for i in range(3):
        accept(app, declaration(i))
    app.processor.process_pending()
    kinds = [kind for _, kind, _ in outbox(app)]
    # Declaration by declaration: its acknowledgement, then its notification.
    assert kinds == ["accuse_reception", "notification_equipe"] * 3
    with reading(app.factory) as s:  # not put off: case mail, first come first served
        assert set(s.scalars(select(OutboundMessage.priority))) == {0}


def test_notices_left_by_a_crash_are_sent_by_the_next_processor(db_url: str, caplog: pytest.LogCaptureFixture) -> None:
    url = at_head(db_url)
    first = build_app(settings_for(url), clock=FixedClock(NOW))
    try:
        for i in range(runner.BATCH_SIZE + 40):  # a backlog still due after the crash
            accept(first, declaration(i))
        # The sweep stops before its end (a crash after some commits): nothing composed yet.
        processed_deferring(first, list(range(1, 11)))
        assert waiting(first) == 10
    finally:
        first.close()
    second = build_app(settings_for(url), clock=FixedClock(NOW))
    try:
        with caplog.at_level(logging.INFO, logger="mailgateway.processing"):
            second.processor.process_pending()
        # The operator is told, counted before the new sweep defers any of its own (an outside tester).
        assert "10 staff notification(s) deferred before this start" in caplog.text
        assert waiting(second) == 0
        assert len([k for _, k, _ in outbox(second) if k == "notification_equipe"]) == runner.BATCH_SIZE + 40
    finally:
        second.close()


def stream(app: App) -> tuple[list[tuple[int, str, str]], int]:
    """Three batches processed with the bound reached at once (every batch of the backlog sends
    the notices waiting so far): the outbox rows, and the id of the last acknowledgement's."""
    no_delay(app)
    for i in range(3 * runner.BATCH_SIZE):
        accept(app, declaration(i))
    app.processor.process_pending()
    rows = outbox(app)
    return rows, max(i for i, kind, _ in rows if kind == "accuse_reception")


def test_a_continuous_stream_never_starves_staff(app: App) -> None:
    rows, last_ack = stream(app)
    assert any(i < last_ack for i, kind, _ in rows if kind == "notification_equipe")


def test_a_context_that_is_not_plain_json_is_not_deferred(app: App) -> None:
    with app.factory() as s:
        case = Case(reference="SSI-ARA-2026-9999", region="ARA", kind="incident", status="NOUVEAU", title="t",
                    opened_at=NOW, updated_at=NOW)
        assert not later.defer(s, NOW, case, None, "ARA", False, {"context": {"at": NOW}})
        assert not later.defer(s, NOW, case, None, "ARA", False, {"context": {"x": float("nan")}})


def test_a_notice_that_fails_to_compose_is_said_on_its_case_and_the_others_go(app: App,
                                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    n = runner.BATCH_SIZE + 5
    for i in range(n):
        accept(app, declaration(i))
    real = app.env.mailer.send_to_staff

    def send_to_staff(session: Any, region: str, **kw: Any) -> int:
        if kw["key"].endswith(":3"):
            raise RuntimeError("template broken")
        return real(session, region, **kw)

    monkeypatch.setattr(app.env.mailer, "send_to_staff", send_to_staff)
    app.processor.process_pending()
    assert waiting(app) == 0  # dropped, not tried at every sweep
    assert len([k for _, k, _ in outbox(app) if k == "notification_equipe"]) == n - 1
    with reading(app.factory) as s:
        refused = s.scalars(select(CaseEvent).where(CaseEvent.type == "envoi_refuse")).all()
        assert [(e.data["type"], e.data["motif"]) for e in refused] == [
            ("notification_equipe", "erreur de composition : RuntimeError")]



def test_operators_see_deferred_notices_and_a_problem_when_they_wait_too_long(db_url: str) -> None:
    url = at_head(db_url)
    app = build_app(settings_for(url), clock=FixedClock(NOW))
    try:
        for i in range(3):
            accept(app, declaration(i))
        processed_deferring(app, [1, 2, 3])  # a sweep stopped in a backlog (a crash)
        with reading(app.factory) as s:
            soon = status.snapshot(s, NOW + timedelta(seconds=30))
            late = status.snapshot(s, NOW + timedelta(hours=1))
        assert (soon.staff_notices_deferred, soon.staff_notices_oldest_age_seconds) == (3, 30.0)
        assert status.to_json(soon)["staff_notices_deferred"] == {"count": 3, "oldest_age_seconds": 30.0}
        assert not soon.problems()
        assert any("3 notification(s) aux agents différée(s)" in p for p in late.problems())
    finally:
        app.close()


def test_another_instances_leftovers_are_looked_for_once_a_minute(app: App, monkeypatch: pytest.MonkeyPatch) -> None:
    app.processor.process_pending()  # nothing of its own: it stops looking
    assert app.env.staff_notices_deferred is False
    accept(app, declaration(1))
    processed_deferring(app, [1])  # another instance's processing, then its crash
    app.processor.env.staff_notices_deferred = False  # (this instance did not defer it)
    app.processor.process_pending()
    assert waiting(app) == 1  # not looked for yet
    monkeypatch.setattr(later, "LOOK_SECONDS", 0.0)
    app.processor.process_pending()
    assert waiting(app) == 0


def test_a_deferred_notice_is_composed_with_the_case_as_it_is_then(app: App) -> None:
    accept(app, declaration(1))
    processed_deferring(app, [1])
    with app.factory() as s, s.begin():  # a colleague closed it meanwhile
        case = s.scalars(select(Case)).one()
        case.status = "CLOS"
    app.processor.process_pending()
    with reading(app.factory) as s:
        raw = s.scalars(select(OutboundMessage.raw).where(OutboundMessage.kind == "notification_equipe")).one()
    assert b"clos" in raw.lower() and b"pris en compte" not in raw


def test_a_deferred_notice_says_what_staff_did_while_it_waited(app: App) -> None:
    """An outside tester: composed after the burst, the notice read « statut : qualifié » beside
    « Gravité déclarée : non qualifiée », named nobody and offered « #assigner moi » on a case
    a colleague had already assigned, qualified and noted."""
    accept(app, declaration(1))
    processed_deferring(app, [1])
    later_on = NOW + timedelta(minutes=1)
    with app.factory() as s, s.begin():
        case = s.scalars(select(Case)).one()
        service.assign(s, case, "agent@ars.test", actor="agent@ars.test", at=later_on)
        service.qualify(s, case, "GRAVE", actor="agent@ars.test", at=later_on)
        service.add_note(s, case, "Appel du RSSI, voir https://evil.test/x", actor="agent@ars.test", at=later_on)
    app.processor.process_pending()
    with reading(app.factory) as s:
        raw = s.scalars(select(OutboundMessage.raw).where(OutboundMessage.kind == "notification_equipe")).one()
    text = casemail.parse(raw).get_body(("plain",)).get_content()
    assert "assigné à agent@ars.test, gravité retenue : grave" in text
    done = text.split("DÉJÀ TRAITÉ", 1)[1].split("\n\n", 1)[0]
    lines = [line for line in done.splitlines() if line.startswith("  - ")]
    # Assigned, qualified (the gravity, then the status), noted: not the gateway's own events.
    assert len(lines) == 4 and all("— agent@ars.test —" in line for line in lines), lines
    assert "hxxps://evil[.]test/x" in done and "https://evil.test" not in done  # staff text, defanged


def test_forged_mail_cannot_push_what_staff_did_out_of_a_deferred_notice(app: App) -> None:
    """An outside tester: twenty forged « [REF] #clore » mails added « Message reçu » and « Commande
    refusée » lines that filled the block; the colleague's note was cut. Only what was done counts:
    state changes and the mail people sent, not what arrived, was refused or was the gateway's."""
    accept(app, declaration(1))
    processed_deferring(app, [1])
    later_on = NOW + timedelta(minutes=1)
    with app.factory() as s, s.begin():
        case = s.scalars(select(Case)).one()
        for n in range(30):
            append_event(s, case, type="message_recu", actor="agent@ars.test", at=later_on,
                         data={"type": "command", "objet": f"[REF] consigne {n}"})
            append_event(s, case, type="commande_refusee", actor="agent@ars.test", at=later_on,
                         data={"commande": "clore", "motif": "message non authentifié"})
        append_event(s, case, type="mail_sortant", actor="agent@ars.test", at=later_on,
                     data={"type": "recu_commandes", "destinataire": "agent@ars.test"})
        service.add_note(s, case, "GENUINE-NOTE", actor="referent@ars.test", at=later_on)
    app.processor.process_pending()
    with reading(app.factory) as s:
        raw = s.scalars(select(OutboundMessage.raw).where(OutboundMessage.kind == "notification_equipe")).one()
    text = casemail.parse(raw).get_body(("plain",)).get_content()
    done = text.split("DÉJÀ TRAITÉ", 1)[1].split("\n\n", 1)[0]
    assert [line for line in done.splitlines() if line.startswith("  - ")] == [
        "  - 27/11/2026 à 10:01 — referent@ars.test — Note : « GENUINE-NOTE »"]


def test_a_duplicate_hint_settled_meanwhile_is_not_given(app: App) -> None:
    """An outside tester: a notice composed after the burst still said « répondez #fusionner X »
    when the case had been merged meanwhile, or X had been merged into it."""
    for n in (1, 2):
        accept(app, declaration(n * 10))  # the same FINESS: the second is a possible duplicate
    processed_deferring(app, [1, 2])
    with app.factory() as s, s.begin():
        first, second = s.scalars(select(Case).order_by(Case.id)).all()
        service.merge(s, first, second, actor="agent@ars.test", at=NOW + timedelta(minutes=1))
    app.processor.process_pending()
    with reading(app.factory) as s:
        raws = s.scalars(select(OutboundMessage.raw).where(OutboundMessage.kind == "notification_equipe")).all()
    texts = [casemail.parse(raw).get_body(("plain",)).get_content() for raw in raws]
    assert len(texts) == 2 and not any("DOUBLON POSSIBLE" in t for t in texts), texts


def test_a_notice_composed_at_once_says_nothing_was_done_since(app: App) -> None:
    accept(app, declaration(1))
    app.processor.process_pending()
    with reading(app.factory) as s:
        raw = s.scalars(select(OutboundMessage.raw).where(OutboundMessage.kind == "notification_equipe")).one()
    text = casemail.parse(raw).get_body(("plain",)).get_content()
    assert "DÉJÀ TRAITÉ" not in text and "assigné à" not in text and "gravité retenue" not in text


def test_a_reply_waits_behind_its_cases_deferred_notification(app: App) -> None:
    accept(app, declaration(1))
    processed_deferring(app, [1])
    reply = accept(app, (
        "From: rssi1@clinique-1.test\r\nTo: ssi-ara@ars.test\r\nSubject: Re: Incident 1\r\n"
        "Message-ID: <later-reply@clinique.test>\r\nIn-Reply-To: <later-1@clinique.test>\r\n"
        "References: <later-1@clinique.test>\r\nDate: Fri, 27 Nov 2026 09:05:00 +0100\r\n"
        "Content-Type: text/plain; charset=utf-8\r\n\r\nComplément : sauvegardes intactes.\r\n").encode())
    results = app.processor.process_pending()
    assert [(r.inbound_id, r.kind) for r in results] == [(reply, "reply")]
    kinds = [kind for _, kind, _ in outbox(app) if kind.startswith("notification")]
    # The declaration's « Nouvelle déclaration » first, then the « Réponse reçue ».
    assert kinds[0] == "notification_equipe" and kinds[1:] and set(kinds[1:]) == {"notification_reponse"}


def test_the_stop_says_what_it_leaves_for_the_next_start(db_url: str) -> None:
    from mailgateway.daemon import Daemon

    url = at_head(db_url)
    settings = settings_for(url)
    daemon = Daemon(settings, clock=FixedClock(NOW))
    daemon.app = build_app(settings, clock=FixedClock(NOW))
    try:
        assert daemon._left_behind() == ""
        for i in range(3):
            accept(daemon.app, declaration(i))
        processed_deferring(daemon.app, [1, 2])
        assert daemon._left_behind() == "1 message(s) to process, 2 mail(s) to send, 2 staff notification(s) deferred"
    finally:
        daemon.app.close()


def test_the_small_sweeps_of_a_stream_send_the_overdue_notices(app: App) -> None:
    # A stream where each sweep finds a few messages and more arrive meanwhile: no sweep defers,
    # none ends with nothing due. The overdue notices go anyway (an outside tester: 35 s, unbounded).
    accept(app, declaration(0))
    processed_deferring(app, [1])
    for i in range(1, 4):
        accept(app, declaration(i))
    app.processor.process_pending(limit=1)  # mail still due at its end
    assert waiting(app) == 1  # not overdue yet
    no_delay(app)
    app.processor.process_pending(limit=1)
    assert waiting(app) == 0


def test_a_notice_waits_behind_a_backlog_for_the_configured_bound(app: App) -> None:
    # The default bound, 60 s (a burst of 2,000 declarations takes 10-30 s on 2 CPUs: its
    # notifications wait for its last acknowledgement, not composed in the middle of it).
    assert app.processor.settings.processing.staff_notice_max_delay_seconds == 60.0
    clock = app.processor.clock
    assert isinstance(clock, FixedClock)
    accept(app, declaration(0))
    processed_deferring(app, [1])
    for i in range(1, 6):
        accept(app, declaration(i))
    clock.advance(seconds=59)
    app.processor.process_pending(limit=1)  # mail still due at its end
    assert waiting(app) == 1
    clock.advance(seconds=2)
    app.processor.process_pending(limit=1)
    assert waiting(app) == 0


def test_a_notice_put_behind_another_instances_is_sent_with_it(app: App) -> None:
    accept(app, declaration(1))
    app.processor.process_pending()  # nothing deferred: this processor stops looking
    processed_deferring(app, [accept(app, declaration(2))])
    app.processor.env.staff_notices_deferred = False  # deferred by another instance
    accept(app, (
        "From: rssi2@clinique-2.test\r\nTo: ssi-ara@ars.test\r\nSubject: Re: Incident 2\r\n"
        "Message-ID: <later-reply2@clinique.test>\r\nIn-Reply-To: <later-2@clinique.test>\r\n"
        "Date: Fri, 27 Nov 2026 09:05:00 +0100\r\n"
        "Content-Type: text/plain; charset=utf-8\r\n\r\nComplément.\r\n").encode())
    app.processor.process_pending()  # the reply's notice waits behind the declaration's: both go now
    assert waiting(app) == 0
    kinds = [kind for _, kind, _ in outbox(app) if kind.startswith("notification")]
    assert kinds == ["notification_equipe", "notification_equipe", "notification_reponse"]


def test_a_start_with_nothing_due_sends_what_a_crash_left_at_once(db_url: str) -> None:
    url = at_head(db_url)
    first = build_app(settings_for(url), clock=FixedClock(NOW))
    try:
        accept(first, declaration(1))
        processed_deferring(first, [1])  # then the crash: nothing else due
    finally:
        first.close()
    second = build_app(settings_for(url), clock=FixedClock(NOW))
    try:
        second.processor.process_pending()  # its first sweep, not a minute later
        assert waiting(second) == 0
    finally:
        second.close()
