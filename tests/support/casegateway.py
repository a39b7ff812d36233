"""A processing core with staff commands on SQLite, fed mail as the daemon would be (``make_gateway``)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select

from mailgateway.app import App, build_app
from mailgateway.clock import FixedClock
from mailgateway.intake.accept import accept_in
from mailgateway.processing.runner import Result
from mailgateway.settings import parse_settings
from mailgateway.store.engine import transaction
from mailgateway.store.models import Case, CaseEvent, OutboundMessage
from tests.support import casemail
from tests.support.db import at_head
from tests.support.dkim import zone

NOW = datetime(2026, 11, 27, 9, 0, tzinfo=UTC)


def settings_data(url: str, **cases: Any) -> dict[str, Any]:
    return {
        "database": {"url": url},
        "regions": [{"code": "ARA", "name": "Auvergne-Rhône-Alpes", "address": "ssi-ara@ars.test"},
                    {"code": "PDL", "name": "Pays de la Loire", "address": "ssi-pdl@ars.test"}],
        "staff": [{"address": "agent@ars.test", "region": "ARA"},
                  {"address": "referent@ars.test", "region": "ARA", "role": "referent"},
                  {"address": "pdl@ars.test", "region": "PDL"}],
        "authentication": {"nameservers": ["127.0.0.1"], "dns_timeout_seconds": 0.1,
                           "acss_domains": ["esante.test"], "static_keys": {**casemail.staff_keys(),
                                           **zone(casemail.establishment_key()),
                                           **zone(casemail.acss_key())}},
        "acss": {"address": "acss@esante.test"},
        "cases": cases,
    }


@dataclass
class Gateway:
    app: App
    clock: FixedClock

    def feed(self, raw: bytes) -> Result:
        with transaction(self.app.factory) as s:
            inbound = accept_in(s, raw, source="cli", now=self.clock.now()).inbound_id
        return self.app.processor.process(inbound)

    def case(self, ref: str) -> Case:
        with self.app.factory() as s:
            case = s.scalar(select(Case).where(Case.reference == ref))
            assert case is not None
            s.expunge(case)
            return case

    def events(self, ref: str) -> list[CaseEvent]:
        with self.app.factory() as s:
            case = s.scalar(select(Case).where(Case.reference == ref))
            assert case is not None
            rows = list(s.scalars(select(CaseEvent).where(CaseEvent.case_id == case.id).order_by(CaseEvent.seq)))
            for r in rows:
                s.expunge(r)
            return rows

    def outbound(self, kind: str | None = None, to: str | None = None) -> list[OutboundMessage]:
        with self.app.factory() as s:
            stmt = select(OutboundMessage).order_by(OutboundMessage.id)
            if kind:
                stmt = stmt.where(OutboundMessage.kind == kind)
            if to:
                stmt = stmt.where(OutboundMessage.recipient == to)
            rows = list(s.scalars(stmt))
            for r in rows:
                s.expunge(r)
            return rows

    def last(self, kind: str, to: str | None = None) -> OutboundMessage:
        rows = self.outbound(kind, to)
        assert rows, f"no outbound {kind} to {to}"
        return rows[-1]

    def declare(self, n: int = 1, **kw: Any) -> str:
        result = self.feed(casemail.declaration(n, **kw))
        assert result.status == "processed" and result.case_ref, result
        return result.case_ref

    def command(self, ref: str, body: str, **kw: Any) -> Result:
        """A staff answer to the staff notification of ``ref`` (threaded by its Message-ID)."""
        notification = self.notification(ref, kw.pop("notified", "agent@ars.test"))
        kw.setdefault("subject", f"RE: [{ref}] Nouvelle déclaration")
        return self.feed(casemail.staff_mail(body, in_reply_to=notification.message_id, **kw))

    def notification(self, ref: str, to: str) -> OutboundMessage:
        case = self.case(ref)
        rows = [r for r in self.outbound("notification_equipe", to) if r.case_id == case.id]
        assert rows
        return rows[0]

    def receipt_text(self, to: str = "agent@ars.test") -> str:
        return casemail.text_of(self.last("recu_commandes", to).raw)


def gateway_from(data: dict[str, Any]) -> Iterator[Gateway]:
    """A Gateway on the settings ``data`` (``settings_data(...)`` with a test's own sections)."""
    clock = FixedClock(NOW)
    app = build_app(parse_settings(data), clock=clock)
    try:
        yield Gateway(app, clock)
    finally:
        app.close()


def make_gateway(url: str, **cases: Any) -> Iterator[Gateway]:
    yield from gateway_from(settings_data(at_head(url), **cases))
