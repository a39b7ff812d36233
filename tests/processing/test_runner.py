"""Processing: one transaction per message, once, whatever the engine and the number of workers."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import func, select

from mailgateway.app import App, build_app
from mailgateway.clock import FixedClock
from mailgateway.intake.accept import accept_in
from mailgateway.processing import pipeline
from mailgateway.settings import parse_settings
from mailgateway.store.engine import transaction
from mailgateway.store.models import Case, InboundMessage, OutboundMessage

NOW = datetime(2026, 11, 27, 9, 0, tzinfo=UTC)


def declaration(n: int) -> bytes:
    return (
        f"From: dsi{n}@chu.test\r\nTo: ssi-ara@ars.test\r\nSubject: Incident {n}\r\n"
        f"Message-ID: <d{n}@chu.test>\r\nDate: Fri, 27 Nov 2026 09:00:00 +0100\r\n"
        "Content-Type: text/plain; charset=utf-8\r\n\r\n"
        "Numéro FINESS : 690781810\r\nType d'incident : rançongiciel\r\n"
        f"Serveurs chiffrés, incident numéro {n}.\r\n"
    ).encode()


def settings_for(url: str) -> Any:
    return parse_settings({
        "database": {"url": url},
        "regions": [{"code": "ARA", "name": "Auvergne-Rhône-Alpes", "address": "ssi-ara@ars.test"}],
        "staff": [{"address": "agent@ars.test", "region": "ARA"}],
        "authentication": {"nameservers": ["127.0.0.1"], "dns_timeout_seconds": 0.1},
    })


@pytest.fixture
def app(db_url: str) -> Iterator[App]:
    application = build_app(settings_for(db_url), clock=FixedClock(NOW))
    yield application
    application.close()


def accept(app: App, raw: bytes) -> int:
    with transaction(app.factory) as s:
        return accept_in(s, raw, source="cli", now=NOW).inbound_id


def count(app: App, model: Any, *where: Any) -> int:
    with app.factory() as s:
        return int(s.scalar(select(func.count()).select_from(model).where(*where)) or 0)


def test_processing_twice_is_a_no_op(app: App) -> None:
    inbound = accept(app, declaration(1))
    first = app.processor.process(inbound)
    second = app.processor.process(inbound)
    assert first.status == "processed" and first.case_ref == "SSI-ARA-2026-0001"
    assert second.status == "skipped"
    assert count(app, Case) == 1
    assert count(app, OutboundMessage, OutboundMessage.kind == "accuse_reception") == 1


def test_a_handler_crash_rolls_back_and_quarantines_with_the_exception(
    app: App, monkeypatch: pytest.MonkeyPatch
) -> None:
    def explode(*_args: Any) -> Any:
        raise RuntimeError("boom in the middle")

    monkeypatch.setitem(pipeline.HANDLERS, "declaration", explode)
    inbound = accept(app, declaration(2))
    result = app.processor.process(inbound)
    assert result.status == "quarantined"
    with app.factory() as s:
        row = s.get(InboundMessage, inbound)
        assert row is not None and row.status == "quarantined"
        assert "boom in the middle" in (row.reason or "")
        assert row.raw == declaration(2)  # the original bytes are kept
    assert count(app, Case) == 0 and count(app, OutboundMessage) == 0


def test_garbage_is_quarantined_never_dropped(app: App) -> None:
    raw = b"\x00\x01\x02 not a message at all \xff\xfe"
    inbound = accept(app, raw)
    assert app.processor.process(inbound).status == "quarantined"
    with app.factory() as s:
        assert s.get(InboundMessage, inbound).raw == raw  # type: ignore[union-attr]


def test_two_workers_process_each_message_once(db_url: str) -> None:
    apps = [build_app(settings_for(db_url), clock=FixedClock(NOW)) for _ in range(2)]
    try:
        ids = [accept(apps[0], declaration(n)) for n in range(30)]
        errors: list[BaseException] = []

        def work(application: App) -> None:
            try:
                for inbound in ids:
                    application.processor.process(inbound)
            except BaseException as exc:  # pragma: no cover - reported below
                errors.append(exc)

        threads = [threading.Thread(target=work, args=(a,)) for a in apps]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
        assert not errors
        assert count(apps[0], Case) == 30
        with apps[0].factory() as s:
            refs = list(s.scalars(select(Case.reference)))
        assert len(set(refs)) == 30
        assert count(apps[0], OutboundMessage, OutboundMessage.kind == "accuse_reception") == 30
        assert count(apps[0], InboundMessage, InboundMessage.status == "processed") == 30
    finally:
        for a in apps:
            a.close()
