"""Scheduler test helpers: an app on a chosen clock, real cases made by processing real mail."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import func, select

from mailgateway.app import App, build_app
from mailgateway.cases.timeline import append_event
from mailgateway.clock import FixedClock
from mailgateway.intake.accept import accept_in
from mailgateway.settings import Settings, parse_settings
from mailgateway.store.engine import transaction
from mailgateway.store.models import Case, OutboundMessage
from tests.support.db import at_head

# Tuesday 1 December 2026, 09:00 in Paris.
NOW = datetime(2026, 12, 1, 8, 0, tzinfo=UTC)
AGENT = "agent@ars.test"
REFERENT = "referent@ars.test"


def settings_for(url: str, **scheduler: Any) -> Settings:
    return parse_settings({
        "database": {"url": url},
        "regions": [{"code": "ARA", "name": "Auvergne-Rhône-Alpes", "address": "ssi-ara@ars.test"}],
        "staff": [{"address": AGENT, "region": "ARA"},
                  {"address": REFERENT, "region": "ARA", "role": "referent"}],
        "authentication": {"nameservers": ["127.0.0.1"], "dns_timeout_seconds": 0.1},
        "scheduler": scheduler,
    })


def declaration(n: int, sender: str = "dsi@chu.test", incident: str = "rançongiciel",
                severity: str = "grave") -> bytes:
    return (
        f"From: {sender}\r\nTo: ssi-ara@ars.test\r\nSubject: Incident {n}\r\n"
        f"Message-ID: <d{n}@chu.test>\r\nDate: Tue, 01 Dec 2026 09:00:00 +0100\r\n"
        "Content-Type: text/plain; charset=utf-8\r\n\r\n"
        f"Numéro FINESS : 690781810\r\nType d'incident : {incident}\r\nGravité : {severity}\r\n"
        f"Serveurs chiffrés, incident numéro {n}. Contact : Jeanne Martin 06 12 34 56 78.\r\n"
    ).encode()


class Gateway:
    """An App whose FixedClock tests move; cases come from real declarations."""

    def __init__(self, app: App, clock: FixedClock) -> None:
        self.app = app
        self.clock = clock
        self._n = 0

    def declare(self, at: datetime | None = None, **kw: Any) -> str:
        if at is not None:
            self.clock.at = at
        self._n += 1
        with transaction(self.app.factory) as s:
            inbound = accept_in(s, declaration(self._n, **kw), source="cli", now=self.clock.now()).inbound_id
        result = self.app.processor.process(inbound)
        assert result.case_ref, result
        return result.case_ref

    def set_status(self, ref: str, status: str, at: datetime | None = None, **columns: Any) -> None:
        """What a staff command does: change the status with a "statut" event."""
        with transaction(self.app.factory) as s:
            case = s.scalars(select(Case).where(Case.reference == ref)).one()
            when = at or self.clock.now()
            append_event(s, case, type="statut", actor=AGENT, at=when, data={"de": case.status, "vers": status})
            case.status = status
            for key, value in columns.items():
                setattr(case, key, value)

    def case(self, ref: str) -> Case:
        with self.app.factory() as s:
            return s.scalars(select(Case).where(Case.reference == ref)).one()

    def outbound(self, kind: str) -> list[OutboundMessage]:
        with self.app.factory() as s:
            return list(s.scalars(select(OutboundMessage).where(OutboundMessage.kind == kind)
                                  .order_by(OutboundMessage.id)))

    def count(self, model: Any, *where: Any) -> int:
        with self.app.factory() as s:
            return int(s.scalar(select(func.count()).select_from(model).where(*where)) or 0)


def make_gateway(url: str, **scheduler: Any) -> Gateway:
    clock = FixedClock(NOW)
    return Gateway(build_app(settings_for(at_head(url), **scheduler), clock=clock), clock)
