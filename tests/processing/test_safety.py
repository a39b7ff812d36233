"""Outbound safety: no storms, no loops between gateways, TLP on every path, attachment limits.

Each test fails if its protection is removed."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import func, select

from mailgateway.app import App, build_app
from mailgateway.clock import FixedClock
from mailgateway.dispatch.compose import MailSpec
from mailgateway.intake.accept import accept_in
from mailgateway.settings import parse_settings
from mailgateway.store.engine import transaction
from mailgateway.store.models import Case, CaseEvent, InboundMessage, OutboundMessage
from tests.processing.test_runner import declaration

NOW = datetime(2026, 11, 27, 9, 0, tzinfo=UTC)


def make_app(url: str, domain: str = "ars.test", region: str = "ARA", **extra: Any) -> App:
    settings = parse_settings({
        "database": {"url": url},
        "regions": [{"code": region, "name": "Région", "address": f"ssi-{region.lower()}@{domain}"}],
        "staff": [{"address": f"agent@{domain}", "region": region}],
        "outbound": {"bounce_domain": domain, **extra.pop("outbound", {})},
        "authentication": {"nameservers": ["127.0.0.1"], "dns_timeout_seconds": 0.1},
        **extra,
    })
    return build_app(settings, clock=FixedClock(NOW))


@pytest.fixture
def app(sqlite_url: str) -> Iterator[App]:
    application = make_app(sqlite_url)
    yield application
    application.close()


def ingest(app: App, raw: bytes) -> str:
    with transaction(app.factory) as s:
        inbound = accept_in(s, raw, source="cli", now=NOW).inbound_id
    return app.processor.process(inbound).status


def outbound(app: App, **where: Any) -> list[OutboundMessage]:
    with app.factory() as s:
        stmt = select(OutboundMessage).order_by(OutboundMessage.id)
        for key, value in where.items():
            stmt = stmt.where(getattr(OutboundMessage, key) == value)
        return list(s.scalars(stmt))


def test_acknowledgements_to_one_address_are_capped_per_hour(app: App) -> None:
    for n in range(12):
        raw = declaration(n).replace(f"dsi{n}@chu.test".encode(), b"dsi@chu.test")
        assert ingest(app, raw) == "processed"
    acks = outbound(app, kind="accuse_reception")
    assert len(acks) == app.settings.outbound.auto_replies_per_hour == 5
    with app.factory() as s:
        refused = s.scalar(select(func.count()).select_from(CaseEvent).where(CaseEvent.type == "envoi_refuse"))
    assert refused == 12 - 5  # each refusal is on its case's timeline, with the reason


def test_two_gateways_never_answer_each_other(tmp_path: Any) -> None:
    a = make_app(f"sqlite:///{tmp_path / 'a.db'}", domain="ars-a.test", region="ARA")
    b = make_app(f"sqlite:///{tmp_path / 'b.db'}", domain="ars-b.test", region="PDL")
    try:
        # A declaration to A that claims to come from B's SSI mailbox: A acknowledges it to B...
        raw = declaration(1).replace(b"dsi1@chu.test", b"ssi-pdl@ars-b.test").replace(
            b"ssi-ara@ars.test", b"ssi-ara@ars-a.test")
        assert ingest(a, raw) == "processed"
        (ack,) = outbound(a, kind="accuse_reception")
        assert ack.recipient == "ssi-pdl@ars-b.test"
        # ...and B, receiving A's automatic acknowledgement, answers nothing (RFC 3834).
        assert ingest(b, ack.raw) == "processed"
        assert outbound(b) == []
        with b.factory() as s:
            assert s.scalar(select(InboundMessage.kind)) == "auto_reply"
    finally:
        a.close()
        b.close()


def test_our_own_mail_coming_back_is_a_loop_and_is_not_answered(app: App) -> None:
    assert ingest(app, declaration(1)) == "processed"
    ack = outbound(app, kind="accuse_reception")[0]
    before = len(outbound(app))
    # Even stripped of Auto-Submitted, our loop header marks it.
    assert ingest(app, ack.raw.replace(b"Auto-Submitted: auto-replied\r\n", b"")) == "processed"
    assert len(outbound(app)) == before
    with app.factory() as s:
        kinds = list(s.scalars(select(InboundMessage.kind).order_by(InboundMessage.id)))
    assert kinds == ["declaration", "loop"]


def test_an_out_of_office_answer_to_our_acknowledgement_is_not_answered(app: App) -> None:
    assert ingest(app, declaration(1)) == "processed"
    before = len(outbound(app))
    ooo = (b"From: dsi1@chu.test\r\nTo: ssi-ara@ars.test\r\nSubject: Absence du bureau\r\n"
           b"Auto-Submitted: auto-replied\r\nMessage-ID: <ooo@chu.test>\r\n\r\nJe suis absent.\r\n")
    assert ingest(app, ooo) == "processed"
    assert len(outbound(app)) == before


@pytest.mark.parametrize(("tlp", "recipient", "allowed"), [
    ("RED", "dsi@chu.test", False), ("RED", "agent@ars.test", True),
    ("AMBER", "dsi@chu.test", False), ("AMBER", "acss@esante.gouv.fr", True),
    ("AMBER+STRICT", "dsi@allowed.test", False), ("AMBER", "dsi@allowed.test", True),
    ("GREEN", "dsi@chu.test", True),
    # Fails closed (docs/guarantees.md): a label the gate does not know is AMBER+STRICT, not AMBER or CLEAR.
    ("PURPLE", "dsi@allowed.test", False), ("PURPLE", "dsi@chu.test", False), ("PURPLE", "agent@ars.test", True),
    ("WHITE", "dsi@chu.test", True),
])
def test_tlp_is_enforced_on_the_outbound_path(sqlite_url: str, tlp: str, recipient: str, allowed: bool) -> None:
    app = make_app(sqlite_url, outbound={"amber_allowed_domains": ["allowed.test"]})
    try:
        with transaction(app.factory) as s:
            case = Case(reference="SSI-ARA-2026-0001", region="ARA", kind="alert", status="A_DIFFUSER", title="t",
                        tlp=tlp, opened_at=NOW, updated_at=NOW, fields={}, event_count=0)
            s.add(case)
            s.flush()
            spec = MailSpec(template="acknowledgement", to=recipient, from_address="ssi-ara@ars.test",
                            from_name="ARS", idempotency_key="k",
                            context={"case": {"reference": case.reference, "establishment": None, "finess": None},
                                     "service_name": "la cellule SSI", "region_name": "R",
                                     "region_address": "ssi-ara@ars.test", "received_at_fr": "x", "subject": "s"})
            row = app.mailer.send(s, spec, kind="test", case=case)
            assert (row is not None) is allowed
            if row is not None:
                assert f"[TLP:{tlp}]".encode() in row.raw
            else:
                event = s.scalar(select(CaseEvent).where(CaseEvent.type == "envoi_refuse"))
                assert event is not None and f"TLP:{tlp}" in event.data["motif"]
    finally:
        app.close()


def test_too_many_attachments_are_quarantined_with_the_reason(sqlite_url: str) -> None:
    app = make_app(sqlite_url, intake={"max_attachments": 2})
    try:
        parts = b"".join(
            b"--B\r\nContent-Type: application/octet-stream\r\nContent-Disposition: attachment; "
            b"filename=f%d.bin\r\n\r\nxx\r\n" % i for i in range(3))
        raw = (b"From: dsi@chu.test\r\nTo: ssi-ara@ars.test\r\nSubject: pieces\r\nMIME-Version: 1.0\r\n"
               b'Content-Type: multipart/mixed; boundary="B"\r\n\r\n--B\r\nContent-Type: text/plain\r\n\r\n'
               b"Numero FINESS : 690781810, rancongiciel\r\n" + parts + b"--B--\r\n")
        assert ingest(app, raw) == "quarantined"
        with app.factory() as s:
            reason = s.scalar(select(InboundMessage.reason))
        assert reason is not None and "pièces jointes" in reason
    finally:
        app.close()
