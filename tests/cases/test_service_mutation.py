"""``cases/service.py``, where every status change and case operation happens, checked function by
function on a real (SQLite) database: what each changes, what it writes on the timeline, what it
refuses and with which French reason (the staff member's receipt quotes it). Fast enough to be
the mutation-testing selection of the module (docs/mutation.md)."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from mailgateway.cases import service
from mailgateway.cases.lifecycle import InvalidTransition
from mailgateway.cases.service import CaseError
from mailgateway.mail.facts import Declaration, Indicator, MessageFacts, SenderVerdict
from mailgateway.store.models import Case, CaseEvent, InboundMessage, OutboundMessage
from mailgateway.store.models import Indicator as IndicatorRow

NOW = datetime(2026, 11, 27, 9, 0, tzinfo=UTC)
LATER = NOW + timedelta(hours=1)
ACTOR = "agent@ars.test"


@pytest.fixture
def s(rolled_back_session: Session) -> Session:
    """A session on the module's database, rolled back after each test (tests/conftest.py)."""
    return rolled_back_session


_refs = iter(range(1, 100_000))


def exactly(text: str) -> str:
    """The whole French reason, as a pattern for ``pytest.raises(match=...)``."""
    return f"^{re.escape(text)}$"


def make(s: Session, *, kind: str = "incident", status: str | None = None, region: str = "ARA",
         **fields: Any) -> Case:
    status = status or ("RECUE" if kind == "alert" else "RECU")
    values: dict[str, Any] = {"severity": "NON_QUALIFIE", "title": "t", "opened_at": NOW, "updated_at": NOW,
                              "fields": {}, "event_count": 0}
    values.update(fields)
    case = Case(reference=f"SSI-{region}-2026-{next(_refs):04d}", region=region, kind=kind, status=status,
                **values)
    s.add(case)
    s.flush()
    return case


def events(s: Session, case: Case) -> list[CaseEvent]:
    s.flush()
    return list(s.scalars(select(CaseEvent).where(CaseEvent.case_id == case.id).order_by(CaseEvent.seq)))


def inbound(s: Session, *, at: datetime = NOW, message_id: str | None = None, **fields: Any) -> InboundMessage:
    row = InboundMessage(sha256=f"{next(_refs):064d}", raw=b"x", size=1, source="cli", received_at=at,
                         region="ARA", message_id=message_id, **fields)
    s.add(row)
    s.flush()
    return row


def facts(**kw: Any) -> MessageFacts:
    kw.setdefault("sender", SenderVerdict(address="dsi@chu.test", domain="chu.test", authenticated=True,
                                          method="dkim", detail="dkim=pass d=chu.test aligned"))
    return MessageFacts(**kw)


# --- change_status ---------------------------------------------------------------------------


def test_change_status_moves_records_and_returns_the_previous_status(s: Session) -> None:
    case = make(s, status="PRIS_EN_COMPTE")
    assert service.change_status(s, case, "ACCOMPAGNEMENT", actor=ACTOR, at=NOW, reason="vu") == "PRIS_EN_COMPTE"
    assert case.status == "ACCOMPAGNEMENT"
    assert case.closed_at is None and case.qualified_at is None
    [event] = events(s, case)
    assert (event.type, event.actor, event.data) == ("statut", ACTOR, {"de": "PRIS_EN_COMPTE",
                                                                      "vers": "ACCOMPAGNEMENT", "motif": "vu"})


def test_change_status_without_reason_writes_no_motif(s: Session) -> None:
    case = make(s)
    service.change_status(s, case, "PRIS_EN_COMPTE", actor=ACTOR, at=NOW)
    assert events(s, case)[0].data == {"de": "RECU", "vers": "PRIS_EN_COMPTE"}
    service.change_status(s, case, "ACCOMPAGNEMENT", actor=ACTOR, at=NOW, reason="")
    assert "motif" not in events(s, case)[1].data


def test_closing_stamps_closed_at_and_reopening_clears_it(s: Session) -> None:
    case = make(s, status="SUIVI")
    service.change_status(s, case, "CLOS", actor=ACTOR, at=NOW)
    assert case.closed_at == NOW
    service.change_status(s, case, "SUIVI", actor=ACTOR, at=LATER)
    assert case.closed_at is None
    alert = make(s, kind="alert", status="DIFFUSEE")
    service.change_status(s, alert, "CLOSE", actor=ACTOR, at=NOW)
    assert alert.closed_at == NOW


def test_a_move_between_open_statuses_keeps_closed_at(s: Session) -> None:
    # closed_at of an open case is None in practice; a stray value is not the move's business.
    case = make(s, status="SUIVI", closed_at=NOW)
    service.change_status(s, case, "RESOLU", actor=ACTOR, at=LATER)
    assert case.closed_at == NOW


def test_qualifie_stamps_qualified_at_once(s: Session) -> None:
    case = make(s, status="PRIS_EN_COMPTE")
    service.change_status(s, case, "QUALIFIE", actor=ACTOR, at=NOW)
    assert case.qualified_at == NOW
    service.change_status(s, case, "EN_QUALIFICATION", actor=ACTOR, at=LATER)
    service.change_status(s, case, "QUALIFIE", actor=ACTOR, at=LATER)
    assert case.qualified_at == NOW
    other = make(s, status="PRIS_EN_COMPTE")
    service.change_status(s, other, "ACCOMPAGNEMENT", actor=ACTOR, at=NOW)
    assert other.qualified_at is None


@pytest.mark.parametrize(("kind", "current", "target"), [
    ("incident", "RECU", "RESOLU"), ("incident", "CLOS", "QUALIFIE"), ("incident", "SUIVI", "SUIVI"),
    ("alert", "CLOSE", "DIFFUSEE"), ("alert", "RECUE", "CLOS"),
])
def test_an_impossible_change_raises_and_changes_nothing(s: Session, kind: str, current: str, target: str) -> None:
    case = make(s, kind=kind, status=current)
    with pytest.raises(InvalidTransition, match=f"passage de {current} à {target} impossible"):
        service.change_status(s, case, target, actor=ACTOR, at=NOW)
    assert case.status == current and case.closed_at is None and events(s, case) == []


# --- assign, qualify, close, reopen, note -----------------------------------------------------


def test_assign_lower_cases_and_records_both_assignees(s: Session) -> None:
    case = make(s, assignee="old@ars.test")
    service.assign(s, case, "Agent@ARS.test", actor=ACTOR, at=NOW)
    assert case.assignee == "agent@ars.test"
    [event] = events(s, case)
    assert (event.type, event.actor, event.at.replace(tzinfo=UTC), event.data) == (
        "assignation", ACTOR, NOW, {"de": "old@ars.test", "vers": "agent@ars.test"})


def test_qualify_sets_the_severity_and_moves_to_qualifie_when_allowed(s: Session) -> None:
    case = make(s, status="PRIS_EN_COMPTE")
    assert service.qualify(s, case, "GRAVE", actor=ACTOR, at=NOW) is True
    assert (case.severity, case.status, case.qualified_at) == ("GRAVE", "QUALIFIE", NOW)
    assert [(e.type, e.data) for e in events(s, case)] == [
        ("qualification", {"de": "NON_QUALIFIE", "vers": "GRAVE"}),
        ("statut", {"de": "PRIS_EN_COMPTE", "vers": "QUALIFIE", "motif": "gravité GRAVE"})]
    # Already QUALIFIE: the severity changes, the status does not, qualified_at is kept.
    assert service.qualify(s, case, "SIGNIFICATIF", actor=ACTOR, at=LATER) is False
    assert (case.severity, case.status, case.qualified_at) == ("SIGNIFICATIF", "QUALIFIE", NOW)
    assert [e.type for e in events(s, case)] == ["qualification", "statut", "qualification"]


def test_qualify_where_the_lifecycle_forbids_qualifie_keeps_the_status(s: Session) -> None:
    case = make(s, status="SUIVI")  # SUIVI -> QUALIFIE is not in the table
    assert service.qualify(s, case, "SANS_SUITE", actor=ACTOR, at=NOW) is False
    assert (case.status, case.severity, case.qualified_at) == ("SUIVI", "SANS_SUITE", NOW)
    assert [e.type for e in events(s, case)] == ["qualification"]


def test_qualify_refuses_alerts_and_unknown_severities(s: Session) -> None:
    alert = make(s, kind="alert")
    with pytest.raises(CaseError, match=exactly(f"{alert.reference} n'est pas un incident : pas de qualification")):
        service.qualify(s, alert, "GRAVE", actor=ACTOR, at=NOW)
    case = make(s)
    with pytest.raises(CaseError, match=exactly("gravité inconnue : TRES_GRAVE")):
        service.qualify(s, case, "TRES_GRAVE", actor=ACTOR, at=NOW)
    assert case.severity == "NON_QUALIFIE" and events(s, case) == [] and events(s, alert) == []


def test_close_goes_to_the_closed_status_of_the_kind(s: Session) -> None:
    case, alert = make(s, status="SUIVI"), make(s, kind="alert", status="A_DIFFUSER")
    service.close(s, case, actor=ACTOR, at=NOW, reason="fini")
    service.close(s, alert, actor=ACTOR, at=NOW)
    assert (case.status, alert.status) == ("CLOS", "CLOSE")
    assert events(s, case)[-1].data == {"de": "SUIVI", "vers": "CLOS", "motif": "fini"}
    assert events(s, alert)[-1].actor == ACTOR


def test_reopen_targets(s: Session) -> None:
    assert service.reopen_target(make(s, kind="alert", status="CLOSE")) == "A_DIFFUSER"
    assert service.reopen_target(make(s, status="CLOS")) == "PRIS_EN_COMPTE"
    assert service.reopen_target(make(s, status="CLOS", severity="SANS_SUITE")) == "SUIVI"


def test_reopen_a_closed_case_with_a_default_reason(s: Session) -> None:
    case = make(s, status="CLOS", severity="GRAVE", closed_at=NOW)
    assert service.reopen(s, case, actor=ACTOR, at=LATER) == "SUIVI"
    assert (case.status, case.closed_at) == ("SUIVI", None)
    assert events(s, case)[-1].data == {"de": "CLOS", "vers": "SUIVI", "motif": "réouverture"}
    service.close(s, case, actor=ACTOR, at=LATER)
    service.reopen(s, case, actor=ACTOR, at=LATER, reason="rechute")
    assert events(s, case)[-1].data["motif"] == "rechute"


def test_reopen_refuses_an_open_case(s: Session) -> None:
    case = make(s, status="SUIVI")
    with pytest.raises(CaseError, match=exactly(f"{case.reference} n'est pas clos (statut « en suivi »)")):
        service.reopen(s, case, actor=ACTOR, at=NOW)
    assert events(s, case) == []


def test_a_note_is_bounded_to_5000_characters(s: Session) -> None:
    case = make(s)
    service.add_note(s, case, "a" * 5001, actor=ACTOR, at=NOW)
    [event] = events(s, case)
    assert (event.type, event.actor, event.data) == ("note", ACTOR, {"texte": "a" * 5000})


# --- merges and references -------------------------------------------------------------------


def test_resolve_follows_merges_and_stops_on_a_cycle(s: Session) -> None:
    a, b, c = make(s), make(s), make(s)
    assert service.resolve(s, a) is a
    a.merged_into_id, b.merged_into_id = b.id, c.id
    assert service.resolve(s, a) is c
    c.merged_into_id = a.id  # a cycle (never written by merge): the walk ends, it does not loop
    assert service.resolve(s, a) is c
    d = make(s)
    d.merged_into_id = d.id
    assert service.resolve(s, d) is d


def test_by_reference_is_trimmed_and_upper_cased(s: Session) -> None:
    case = make(s)
    assert service.by_reference(s, f"  {case.reference.lower()} ") is case
    assert service.by_reference(s, "SSI-ARA-1999-0001") is None


def test_merge_closes_the_duplicate_and_records_both_sides(s: Session) -> None:
    duplicate, target = make(s, status="PRIS_EN_COMPTE"), make(s, status="SUIVI")
    service.merge(s, duplicate, target, actor=ACTOR, at=NOW)
    assert duplicate.merged_into_id == target.id
    assert (duplicate.status, duplicate.closed_at, target.status) == ("CLOS", NOW, "SUIVI")
    assert [(e.type, e.actor, e.data) for e in events(s, duplicate)] == [
        ("fusion", ACTOR, {"fusionne_dans": target.reference}),
        ("statut", ACTOR, {"de": "PRIS_EN_COMPTE", "vers": "CLOS",
                           "motif": f"doublon fusionné dans {target.reference}"})]
    assert [(e.type, e.actor, e.data) for e in events(s, target)] == [
        ("fusion", ACTOR, {"doublon_absorbe": duplicate.reference})]


def test_merging_a_closed_duplicate_does_not_close_it_again(s: Session) -> None:
    duplicate, target = make(s, status="CLOS"), make(s, status="SUIVI")
    service.merge(s, duplicate, target, actor=ACTOR, at=NOW)
    assert duplicate.merged_into_id == target.id and duplicate.status == "CLOS"
    assert [e.type for e in events(s, duplicate)] == ["fusion"]


def test_merge_refusals(s: Session) -> None:
    case = make(s)
    with pytest.raises(CaseError, match=exactly("un dossier ne peut pas être fusionné avec lui-même")):
        service.merge(s, case, case, actor=ACTOR, at=NOW)
    elsewhere = make(s, region="PDL")
    with pytest.raises(CaseError, match=exactly(f"{elsewhere.reference} appartient à une autre région")):
        service.merge(s, case, elsewhere, actor=ACTOR, at=NOW)
    merged, target = make(s), make(s)
    merged.merged_into_id = target.id
    with pytest.raises(CaseError, match=exactly(f"{merged.reference} est déjà fusionné")):
        service.merge(s, merged, make(s), actor=ACTOR, at=NOW)
    # target already merged into the duplicate (directly or through others): a cycle, refused.
    dup, middle, tgt = make(s), make(s), make(s)
    tgt.merged_into_id, middle.merged_into_id = middle.id, dup.id
    with pytest.raises(CaseError, match=exactly(f"{tgt.reference} est déjà fusionné dans {dup.reference}")):
        service.merge(s, dup, tgt, actor=ACTOR, at=NOW)
    closed = make(s, status="CLOS")
    reason = f"{closed.reference} est clos : rouvrez-le avant d'y fusionner un doublon"
    with pytest.raises(CaseError, match=exactly(reason)):
        service.merge(s, case, closed, actor=ACTOR, at=NOW)
    assert case.merged_into_id is None and case.status == "RECU" and events(s, case) == []


def test_find_duplicate_same_structure_region_kind_open_unmerged_within_the_window(s: Session) -> None:
    finess = "690000001"
    new = make(s, finess=finess, opened_at=NOW)
    assert service.find_duplicate(s, new, timedelta(hours=48)) is None
    older = make(s, finess=finess, opened_at=NOW - timedelta(hours=30))
    newer = make(s, finess=finess, opened_at=NOW - timedelta(hours=2))
    # The first one: every copy of an incident points at the case to merge into, not a chain.
    assert service.find_duplicate(s, new, timedelta(hours=48)) is older
    assert service.find_duplicate(s, new, timedelta(hours=1)) is None
    assert service.find_duplicate(s, new, timedelta(hours=3)) is newer  # older is outside the window
    older.status = "CLOS"
    assert service.find_duplicate(s, new, timedelta(hours=48)) is newer
    newer.merged_into_id = new.id
    make(s, finess=finess, region="PDL", opened_at=NOW)
    make(s, finess=finess, kind="alert", opened_at=NOW)
    make(s, finess="690000002", opened_at=NOW)
    assert service.find_duplicate(s, new, timedelta(hours=48)) is None
    edge = make(s, finess=finess, opened_at=NOW - timedelta(hours=48))
    assert service.find_duplicate(s, new, timedelta(hours=48)) is edge  # the window's bound included
    assert service.find_duplicate(s, make(s, finess=None), timedelta(hours=48)) is None


def test_without_finess_the_authenticated_declarants_first_open_case(s: Session) -> None:
    """Without FINESS the declarant stands for the structure, only when both declarations were
    authenticated (an unsigned one in their name must not catch the genuine one's reference)."""
    new = make(s, finess=None, declarant="rssi@chu.test", fields={"declarant_authentifie": True})
    window = timedelta(hours=48)
    assert service.find_duplicate(s, new, window, declarant="rssi@chu.test") is None
    make(s, finess=None, declarant="rssi@chu.test", opened_at=NOW - timedelta(hours=3))  # not authenticated
    make(s, declarant="rssi@chu.test", fields={"declarant_authentifie": True}, region="PDL")
    make(s, declarant="autre@chu.test", fields={"declarant_authentifie": True})
    assert service.find_duplicate(s, new, window, declarant="rssi@chu.test") is None
    first = make(s, declarant="rssi@chu.test", fields={"declarant_authentifie": True},
                 opened_at=NOW - timedelta(hours=2))
    make(s, declarant="rssi@chu.test", fields={"declarant_authentifie": True}, opened_at=NOW - timedelta(hours=1))
    assert service.find_duplicate(s, new, window, declarant=" RSSI@chu.test ") is first
    assert service.find_duplicate(s, new, window) is None  # no declarant given: nothing to match


def test_the_declarant_lookup_reads_its_index(s: Session) -> None:
    """Issue 19: what grows with the number of open cases is indexed; without it each declaration
    without FINESS read the whole cases table."""
    new = make(s, finess=None, declarant="rssi@chu.test")
    seen: list[str] = []
    conn = s.connection().connection.driver_connection
    conn.set_trace_callback(seen.append)
    try:
        service.find_duplicate(s, new, timedelta(hours=48), declarant="rssi@chu.test")
    finally:
        conn.set_trace_callback(None)
    lookups = [q for q in seen if q.startswith("SELECT") and "declarant" in q]
    assert lookups, seen
    plan = " ".join(str(r[-1]) for r in conn.execute(f"EXPLAIN QUERY PLAN {lookups[0]}"))
    assert "ix_cases_declarant_region" in plan, plan


def test_same_time_duplicates_the_lowest_id_first(s: Session) -> None:
    new = make(s, finess="690000003")
    first = make(s, finess="690000003", opened_at=NOW - timedelta(hours=1))
    make(s, finess="690000003", opened_at=NOW - timedelta(hours=1))
    assert service.find_duplicate(s, new, timedelta(hours=2)) is first


def test_flag_duplicate_links_both_ways(s: Session) -> None:
    older = make(s, finess="690000004", opened_at=NOW - timedelta(hours=1))
    new = make(s, finess="690000004")
    assert service.flag_duplicate(s, new, timedelta(hours=2), at=NOW) is older
    assert (new.linked_case_id, older.linked_case_id) == (older.id, new.id)
    assert [(e.type, e.actor, e.data) for e in events(s, new)] == [
        ("doublon_possible", "passerelle", {"dossier_lie": older.reference})]
    assert events(s, older)[0].data == {"dossier_lie": new.reference}
    alone = make(s, finess="690000005")
    assert service.flag_duplicate(s, alone, timedelta(hours=2), at=NOW) is None
    assert alone.linked_case_id is None and events(s, alone) == []


def test_link_keeps_the_other_cases_existing_link(s: Session) -> None:
    a, b, c = make(s), make(s), make(s)
    service.link(s, b, a, type="dossier_lie", actor=ACTOR, at=NOW)
    service.link(s, c, a, type="dossier_lie", actor=ACTOR, at=NOW)
    assert (a.linked_case_id, b.linked_case_id, c.linked_case_id) == (b.id, a.id, a.id)
    assert [(e.type, e.actor) for e in events(s, a)] == [("dossier_lie", ACTOR)] * 2


def test_threaded_case_follows_merges(s: Session) -> None:
    a, b = make(s), make(s)
    assert service.threaded_case(s, facts(case_ref=None)) is None
    assert service.threaded_case(s, facts(case_ref="SSI-ARA-1999-0001")) is None
    assert service.threaded_case(s, facts(case_ref=a.reference)) is a
    a.merged_into_id = b.id
    s.flush()
    assert service.threaded_case(s, facts(case_ref=a.reference)) is b


# --- threads, lists ------------------------------------------------------------------------


def _outbound(s: Session, case: Case, message_id: str, at: datetime) -> None:
    n = next(_refs)
    s.add(OutboundMessage(idempotency_key=f"k{n}", kind="notification", case_id=case.id, message_id=message_id,
                          verp_token=f"v{n}", mail_from="ssi@ars.test", recipient="x@chu.test", raw=b"x",
                          created_at=at, next_attempt_at=at, deadline_at=at))
    s.flush()


def test_thread_ids_oldest_first_bracketed_once(s: Session) -> None:
    case = make(s, origin_message_id="origin@chu.test")
    inbound(s, at=NOW + timedelta(minutes=2), message_id="<reply@chu.test>", case_id=case.id)
    inbound(s, at=NOW + timedelta(minutes=3), message_id="", case_id=case.id)
    inbound(s, at=NOW + timedelta(minutes=4), message_id=None, case_id=case.id)
    inbound(s, at=NOW - timedelta(minutes=4), message_id="<other@chu.test>")
    _outbound(s, case, "<ours@ars.test>", NOW + timedelta(minutes=1))
    _outbound(s, case, "<origin@chu.test>", NOW + timedelta(minutes=5))
    assert service.thread_ids(s, case) == ["<origin@chu.test>", "<ours@ars.test>", "<reply@chu.test>"]
    assert service.thread_ids(s, make(s)) == []


def test_thread_ids_for_a_correspondent_are_what_their_mailbox_holds(s: Session) -> None:
    """Mail to the declarant names their messages and ours to them, never staff's command mail
    nor our notifications to staff (outside testers found those in References)."""
    case = make(s, origin_message_id="<origin@chu.test>")
    inbound(s, at=NOW, message_id="<origin@chu.test>", case_id=case.id, auth={"address": "DSI@chu.test"})
    inbound(s, at=NOW + timedelta(minutes=1), message_id="<cmd@ars.test>", case_id=case.id,
            auth={"address": "agent@ars.test"})
    inbound(s, at=NOW + timedelta(minutes=2), message_id="<noauth@chu.test>", case_id=case.id)
    _outbound(s, case, "<to-declarant@ars.test>", NOW + timedelta(minutes=3))  # recipient x@chu.test
    assert service.thread_ids(s, case, correspondent="x@chu.test") == ["<to-declarant@ars.test>"]
    assert service.thread_ids(s, case, correspondent=" dsi@chu.test") == ["<origin@chu.test>"]
    assert service.thread_ids(s, case) == ["<origin@chu.test>", "<cmd@ars.test>", "<noauth@chu.test>",
                                           "<to-declarant@ars.test>"]


def test_thread_ids_keep_the_root_and_the_latest(s: Session) -> None:
    case = make(s, origin_message_id="<root@chu.test>")
    for n in range(1, 25):
        _outbound(s, case, f"<m{n}@ars.test>", NOW + timedelta(minutes=n))
    ids = service.thread_ids(s, case)
    assert ids == ["<root@chu.test>", *[f"<m{n}@ars.test>" for n in range(6, 25)]]
    assert service.thread_ids(s, case, limit=3) == ["<root@chu.test>", "<m23@ars.test>", "<m24@ars.test>"]
    assert len(service.thread_ids(s, case, limit=25)) == 25


def test_last_message_from_the_latest_of_those_addresses_else_the_origin(s: Session) -> None:
    case = make(s, origin_message_id="<origin@chu.test>")
    assert service.last_message_from(s, case, ["dsi@chu.test"]) == "<origin@chu.test>"
    inbound(s, message_id="<a@chu.test>", case_id=case.id, auth={"address": "DSI@chu.test"})
    inbound(s, message_id="<b@chu.test>", case_id=case.id, auth={"address": "other@chu.test"})
    inbound(s, message_id="<c@chu.test>", case_id=case.id, auth=None)
    inbound(s, message_id=None, case_id=case.id, auth={"address": "dsi@chu.test"})
    assert service.last_message_from(s, case, ["Dsi@Chu.test", ""]) == "<a@chu.test>"
    assert service.last_message_from(s, case, ["other@chu.test", "dsi@chu.test"]) == "<b@chu.test>"


def test_last_message_from_skips_the_declarants_automatic_mail(s: Session) -> None:
    """Found by an outside tester (a hospital's RSSI): the closure was threaded under the
    declarant's out-of-office, the last message of theirs in the case."""
    case = make(s, origin_message_id="<origin@chu.test>")
    inbound(s, message_id="<complement@chu.test>", case_id=case.id, auth={"address": "dsi@chu.test"}, kind="reply")
    for n, kind in enumerate(("auto_reply", "bounce", "loop")):
        inbound(s, message_id=f"<auto{n}@chu.test>", case_id=case.id, auth={"address": "dsi@chu.test"}, kind=kind)
    assert service.last_message_from(s, case, ["dsi@chu.test"]) == "<complement@chu.test>"
    inbound(s, message_id="<unprocessed@chu.test>", case_id=case.id, auth={"address": "dsi@chu.test"})
    assert service.last_message_from(s, case, ["dsi@chu.test"]) == "<unprocessed@chu.test>"


def test_last_message_from_reads_merged_cases_and_never_a_colleagues_forward(s: Session) -> None:
    """Found by an outside tester: a #repondre on a case a colleague transmitted was threaded
    under the colleague's internal forward, which the establishment never received, while the
    establishment's own mail sat in a duplicate merged into the case."""
    case = make(s, origin_message_id="<forward@ars.test>",
                fields={"declaration": {"transmis_par": "collegue@ars.test"}})
    assert service.last_message_from(s, case, ["rssi@ch.test"]) is None
    duplicate = make(s, merged_into_id=case.id)
    inbound(s, message_id="<own@ch.test>", case_id=duplicate.id, auth={"address": "rssi@ch.test"})
    assert service.last_message_from(s, case, ["rssi@ch.test"]) == "<own@ch.test>"


def test_open_and_overdue_cases_of_a_region(s: Session) -> None:
    region = "COR"  # a region no other test of this module writes to
    first = make(s, region=region, opened_at=NOW - timedelta(days=3), updated_at=NOW - timedelta(days=8))
    second = make(s, region=region, opened_at=NOW - timedelta(days=2), updated_at=NOW - timedelta(days=9))
    recent = make(s, region=region, opened_at=NOW - timedelta(days=1), updated_at=NOW - timedelta(days=1))
    make(s, region=region, status="CLOS", updated_at=NOW - timedelta(days=30))
    make(s, region=region, kind="alert", status="CLOSE", updated_at=NOW - timedelta(days=30))
    make(s, region=region, merged_into_id=first.id, updated_at=NOW - timedelta(days=30))
    make(s, region="PDL", updated_at=NOW - timedelta(days=30))
    assert service.open_cases(s, region) == [first, second, recent]
    assert service.open_cases(s, region, limit=2) == [first, second]
    assert service.overdue_cases(s, region, NOW, 7) == [second, first]
    assert service.overdue_cases(s, region, NOW, 7, limit=1) == [second]
    assert service.overdue_cases(s, region, NOW, 8.5) == [second]
    assert service.overdue_cases(s, region, NOW, 1) == [second, first]  # updated exactly 1 day ago: not overdue


def test_one_line_folds_whitespace_and_bounds(s: Session) -> None:
    assert service.one_line("  a \n\t b  ") == "a b"
    assert service.one_line(None) == ""
    assert service.one_line("x" * 300) == "x" * 200
    assert service.one_line("abcdef", limit=3) == "abc"


# --- who declared, what was received ---------------------------------------------------------


def test_declarant_of_prefers_the_declaration_then_reply_to_then_the_sender(s: Session) -> None:
    sender = SenderVerdict(address="From@chu.test")
    assert service.declarant_of(MessageFacts(declaration=Declaration(declarant=" Decl@chu.test "),
                                             reply_to="rt@chu.test", sender=sender)) == "decl@chu.test"
    assert service.declarant_of(MessageFacts(declaration=Declaration(declarant="noreply@portail.test"),
                                             reply_to="RT@chu.test", sender=sender)) == "rt@chu.test"
    assert service.declarant_of(MessageFacts(declaration=Declaration(declarant="pas une adresse"),
                                             reply_to="no-reply@chu.test", sender=sender)) == "from@chu.test"
    assert service.declarant_of(MessageFacts(sender=SenderVerdict(address="mailer-daemon@chu.test"))) is None
    assert service.declarant_of(MessageFacts()) is None


def test_a_forwarded_declaration_is_the_establishments_or_nobodys(s: Session) -> None:
    forwarded = {"transmis_par": "collegue@ars.test"}
    colleague = SenderVerdict(address="collegue@ars.test")
    assert service.declarant_of(MessageFacts(declaration=Declaration(declarant=" Decl@chu.test"), extra=forwarded,
                                             sender=colleague, reply_to="collegue@ars.test")) == "decl@chu.test"
    assert service.declarant_of(MessageFacts(declaration=Declaration(declarant="noreply@chu.test"), extra=forwarded,
                                             sender=colleague)) is None
    assert service.declarant_of(MessageFacts(declaration=Declaration(declarant="sans arobase"), extra=forwarded,
                                             sender=colleague)) is None
    assert service.declarant_of(MessageFacts(extra=forwarded, sender=colleague, reply_to="collegue@ars.test")) is None


def test_record_received_attaches_and_describes_the_message(s: Session) -> None:
    case = make(s)
    row = inbound(s)
    message = facts(kind="reply", subject=" Re:\n  suivi ", message_id="<r@chu.test>",
                    new_text="  Nous avons\n  restauré. ")
    service.record_received(s, case, row, message, at=NOW)
    assert row.case_id == case.id
    [event] = events(s, case)
    assert (event.type, event.actor, event.inbound_id) == ("message_recu", "dsi@chu.test", row.id)
    assert event.data == {"type": "reply", "objet": "Re: suivi", "message_id": "<r@chu.test>",
                          "authentification": {"authentifie": True, "methode": "dkim"},
                          "extrait": "Nous avons restauré."}


def test_record_received_detail_and_extract_only_where_they_belong(s: Session) -> None:
    case = make(s)
    service.record_received(s, case, inbound(s), facts(kind="declaration", new_text="texte"), at=NOW, detail=True)
    service.record_received(s, case, inbound(s), facts(kind="reply", new_text=" \n "), at=NOW)
    service.record_received(s, case, inbound(s), facts(kind="reply", new_text="x" * 400,
                                                        sender=SenderVerdict()), at=NOW)
    first, blank, anonymous = events(s, case)
    assert first.data["authentification"] == {"authentifie": True, "methode": "dkim",
                                              "detail": "dkim=pass d=chu.test aligned"}
    assert "extrait" not in first.data and "extrait" not in blank.data
    assert anonymous.actor == "inconnu" and anonymous.data["extrait"] == "x" * 300
    assert anonymous.data["authentification"] == {"authentifie": False, "methode": None}


def test_new_case_opens_with_its_first_event_and_indicators(s: Session) -> None:
    row = inbound(s, at=datetime(2026, 12, 31, 23, 30, tzinfo=UTC))  # already 2027 in Paris
    indicators = (Indicator("ip", "192.0.2.1"), Indicator("ip", "192.0.2.1"), Indicator("url", "u" * 2500))
    case = service.new_case(s, region="ARA", kind="incident", inbound=row, title="Titre", at=NOW,
                            facts=facts(kind="declaration", message_id="<d@chu.test>", indicators=indicators))
    assert case.reference.startswith("SSI-ARA-2027-")
    assert (case.kind, case.status, case.severity, case.title) == ("incident", "RECU", "NON_QUALIFIE", "Titre")
    assert (case.origin_message_id, case.fields, row.case_id) == ("<d@chu.test>", {}, case.id)
    assert case.opened_at.replace(tzinfo=UTC) == row.received_at.replace(tzinfo=UTC)
    [event] = events(s, case)
    assert event.type == "message_recu" and event.data["authentification"]["detail"] == "dkim=pass d=chu.test aligned"
    s.flush()
    found = sorted((i.type, i.value) for i in s.scalars(select(IndicatorRow).where(IndicatorRow.case_id == case.id)))
    assert found == [("ip", "192.0.2.1"), ("url", "u" * 2000)]
    alert = service.new_case(s, region="PDL", kind="alert", inbound=inbound(s), title="A", at=NOW, facts=facts())
    assert alert.status == "RECUE" and alert.reference.startswith("SSI-PDL-2026-")


def test_new_case_keeps_at_most_200_indicators(s: Session) -> None:
    many = tuple(Indicator("ip", f"192.0.2.{n}") for n in range(201))
    case = service.new_case(s, region="ARA", kind="incident", inbound=inbound(s), title="T", at=NOW,
                            facts=facts(indicators=many))
    s.flush()
    assert len(list(s.scalars(select(IndicatorRow).where(IndicatorRow.case_id == case.id)))) == 200


# --- transfer -------------------------------------------------------------------------------


def test_transfer_moves_the_case_its_messages_and_indicators(s: Session) -> None:
    case = make(s, status="SUIVI", severity="GRAVE", finess="690000006", declarant="dsi@chu.test",
                nature="cyber", incident_type="rançongiciel", category="CH", tlp="AMBER", title="Titre",
                establishment="CH", acknowledged_at=NOW, qualified_at=NOW, origin_message_id="<o@chu.test>",
                fields={"x": 1}, opened_at=datetime(2026, 3, 1, tzinfo=UTC))
    declaration = inbound(s, case_id=case.id, kind="declaration")
    command = inbound(s, case_id=case.id, kind="command")
    s.add(IndicatorRow(case_id=case.id, type="ip", value="192.0.2.9"))
    moved = service.transfer(s, case, "PDL", actor=ACTOR, at=NOW)
    assert moved.reference.startswith("SSI-PDL-2026-") and moved.region == "PDL"
    assert (moved.kind, moved.status, moved.severity) == ("incident", "SUIVI", "GRAVE")
    assert moved.fields == {"x": 1, "transfere_de": case.reference}
    for name in ("nature", "incident_type", "category", "tlp", "title", "finess", "establishment", "declarant",
                 "acknowledged_at", "qualified_at", "origin_message_id", "opened_at"):
        assert getattr(moved, name) == getattr(case, name), name
    assert (declaration.case_id, command.case_id) == (moved.id, case.id)
    assert [(i.type, i.value) for i in s.scalars(select(IndicatorRow).where(IndicatorRow.case_id == moved.id))] == [
        ("ip", "192.0.2.9")]
    assert (case.linked_case_id, moved.linked_case_id, case.merged_into_id) == (moved.id, case.id, moved.id)
    assert case.status == "CLOS"
    assert [(e.type, e.actor, e.data) for e in events(s, moved)] == [
        ("transfert_recu", ACTOR, {"dossier_origine": case.reference, "region_origine": "ARA", "statut": "SUIVI",
                                   "gravite": "GRAVE"})]
    assert [(e.type, e.actor, e.data) for e in events(s, case)] == [
        ("transfert", ACTOR, {"nouveau_dossier": moved.reference, "region": "PDL"}),
        ("statut", ACTOR, {"de": "SUIVI", "vers": "CLOS",
                           "motif": f"transféré à la région PDL (dossier {moved.reference})"})]


def test_transfer_refusals(s: Session) -> None:
    with pytest.raises(CaseError, match=exactly("seule une déclaration d'incident se transfère à une autre région")):
        service.transfer(s, make(s, kind="alert"), "PDL", actor=ACTOR, at=NOW)
    case = make(s)
    with pytest.raises(CaseError, match=exactly(f"{case.reference} relève déjà de la région ARA")):
        service.transfer(s, case, "ARA", actor=ACTOR, at=NOW)
    merged = make(s, merged_into_id=case.id)
    with pytest.raises(CaseError, match=exactly(f"{merged.reference} est déjà fusionné ou transféré")):
        service.transfer(s, merged, "PDL", actor=ACTOR, at=NOW)
    closed = make(s, status="CLOS")
    with pytest.raises(CaseError, match=exactly(f"{closed.reference} est clos : rouvrez-le avant de le transférer")):
        service.transfer(s, closed, "PDL", actor=ACTOR, at=NOW)
    assert s.scalar(select(Case).where(Case.region == "PDL")) is None  # no case was made there


# --- orders, bounds and limits (what the mutation run of cases/service.py found untested) ---------


def test_the_first_duplicate_by_opening_time_not_by_id(s: Session) -> None:
    new = make(s, finess="690000007")
    make(s, finess="690000007", opened_at=NOW - timedelta(hours=1))
    first_opened = make(s, finess="690000007", opened_at=NOW - timedelta(hours=3))  # higher id, opened earlier
    assert service.find_duplicate(s, new, timedelta(hours=5)) is first_opened


def test_a_duplicate_of_the_same_incident_type_comes_first(s: Session) -> None:
    """An RSSI's resend of a ransomware declaration was pointed at the structure's older « test »
    case; every copy of the incident still points at the first of its own type."""
    new = make(s, finess="690000008", incident_type="RANCONGICIEL")
    make(s, finess="690000008", opened_at=NOW - timedelta(hours=5), incident_type="AUTRE")
    untyped = make(s, finess="690000008", opened_at=NOW - timedelta(hours=4))
    first = make(s, finess="690000008", opened_at=NOW - timedelta(hours=3), incident_type="RANCONGICIEL")
    make(s, finess="690000008", opened_at=NOW - timedelta(hours=2), incident_type="RANCONGICIEL")
    assert service.find_duplicate(s, new, timedelta(hours=6)) is first
    # No type known: the first of all, as before.
    oldest = service.find_duplicate(s, make(s, finess="690000008"), timedelta(hours=6))
    assert oldest is not None and oldest.incident_type == "AUTRE" and untyped.incident_type is None


def test_last_message_from_reads_this_case_and_its_latest_200_messages_only(s: Session) -> None:
    case, other = make(s, origin_message_id="<origin@chu.test>"), make(s)
    inbound(s, message_id="<old@chu.test>", case_id=case.id, auth={"address": "dsi@chu.test"})
    inbound(s, message_id="<elsewhere@chu.test>", case_id=other.id, auth={"address": "dsi@chu.test"})
    assert service.last_message_from(s, case, ["dsi@chu.test"]) == "<old@chu.test>"
    for n in range(200):
        inbound(s, message_id=f"<n{n}@chu.test>", case_id=case.id, auth={"address": "autre@chu.test"})
    assert service.last_message_from(s, case, ["dsi@chu.test"]) == "<origin@chu.test>"


def test_lists_are_ordered_with_ties_broken_by_id_and_bounded_at_200(s: Session) -> None:
    region = "GUA"
    # Same opening and activity times; their statuses make the index order differ from the id order.
    first = make(s, region=region, status="SUIVI", updated_at=NOW - timedelta(days=10))
    second = make(s, region=region, status="PRIS_EN_COMPTE", updated_at=NOW - timedelta(days=10))
    assert service.open_cases(s, region) == [first, second]
    assert service.overdue_cases(s, region, NOW, 7) == [first, second]
    earlier = make(s, region=region, opened_at=NOW - timedelta(days=1), updated_at=NOW - timedelta(days=20))
    assert service.open_cases(s, region) == [earlier, first, second]
    assert service.overdue_cases(s, region, NOW, 7) == [earlier, first, second]
    for _ in range(198):
        make(s, region=region, updated_at=NOW - timedelta(days=9))
    assert len(service.open_cases(s, region)) == 200 and len(service.overdue_cases(s, region, NOW, 7)) == 200


def test_resolve_stops_on_a_cycle_that_does_not_include_the_start(s: Session) -> None:
    a, b, c = make(s), make(s), make(s)
    a.merged_into_id, b.merged_into_id, c.merged_into_id = b.id, c.id, b.id
    assert service.resolve(s, a) is c


def test_thread_ids_at_the_same_instant_keep_their_order(s: Session) -> None:
    case = make(s, origin_message_id="<z-origin@chu.test>")
    _outbound(s, case, "<a-ours@ars.test>", NOW)
    assert service.thread_ids(s, case) == ["<z-origin@chu.test>", "<a-ours@ars.test>"]


def test_timelines_start_at_one(s: Session) -> None:
    case = service.new_case(s, region="ARA", kind="incident", inbound=inbound(s), title="T", at=NOW, facts=facts())
    assert [e.seq for e in events(s, case)] == [1]
    moved = service.transfer(s, case, "PDL", actor=ACTOR, at=NOW)
    assert [e.seq for e in events(s, moved)] == [1]


def test_transfer_moves_only_this_cases_messages_and_at_most_500_indicators(s: Session) -> None:
    case, other = make(s, status="SUIVI"), make(s)
    stays = inbound(s, case_id=other.id, kind="reply")
    for n in range(501):
        s.add(IndicatorRow(case_id=case.id, type="ip", value=f"10.0.{n // 256}.{n % 256}"))
    s.flush()
    moved = service.transfer(s, case, "PDL", actor=ACTOR, at=NOW)
    assert stays.case_id == other.id
    s.flush()
    assert len(list(s.scalars(select(IndicatorRow).where(IndicatorRow.case_id == moved.id)))) == 500
