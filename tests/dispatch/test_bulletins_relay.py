"""ACSS alert relay and fan-out memory: the agency relays, TLP holds, memory stays flat."""

from __future__ import annotations

import email
import email.policy
import tracemalloc
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import func, select

from mailgateway.app import App, build_app
from mailgateway.bulletins import fanout
from mailgateway.bulletins.fanout import BulletinError, create_bulletin, fan_out, relay_alert
from mailgateway.clock import FixedClock
from mailgateway.dispatch.compose import Composed, MailSpec
from mailgateway.store.engine import transaction
from mailgateway.store.models import Case, CaseEvent, OutboundMessage
from tests.support.bulletins import bulletin_settings, fill_directory
from tests.support.db import at_head

NOW = datetime(2026, 11, 27, 9, 0, tzinfo=UTC)


@pytest.fixture
def app(sqlite_url: str) -> Iterator[App]:
    application = build_app(bulletin_settings(at_head(sqlite_url)), clock=FixedClock(NOW))
    yield application
    application.close()


def alert_case(app: App, tlp: str | None = "CLEAR", authentic: bool = True, targets: tuple[str, ...] = ("LBM",)) -> int:
    with transaction(app.factory) as s:
        case = Case(reference="SSI-ARA-2026-0001", region="ARA", kind="alert",
                    status="A_DIFFUSER" if authentic else "RECUE", title="Vulnérabilité critique", tlp=tlp,
                    fields={"alert": {"reference": "CERTFR-2026-ALE-001", "title": "Vulnérabilité critique",
                                      "tlp": tlp, "targets": list(targets), "cves": ["CVE-2026-1234"],
                                      "authentic": authentic}},
                    opened_at=NOW, updated_at=NOW, event_count=0)
        s.add(case)
        s.flush()
        return case.id


def test_an_authentic_alert_is_relayed_by_the_agency_to_the_targeted_categories(app: App) -> None:
    with transaction(app.factory) as s:
        fill_directory(s, NOW, 3, category="LBM")
        fill_directory(s, NOW, 2, category="ESMS", start=10)
    case_id = alert_case(app)
    with transaction(app.factory) as s:
        case = s.get(Case, case_id)
        assert case is not None
        bulletin = relay_alert(app.env, s, case, "agent@ars.test")
        assert bulletin.recipients == 3 and case.status == "DIFFUSEE"
        rows = list(s.scalars(select(OutboundMessage).where(OutboundMessage.bulletin_id == bulletin.id)))
        events = [e.type for e in s.scalars(select(CaseEvent).where(CaseEvent.case_id == case_id))]
    assert {r.kind for r in rows} == {"alerte_relais"} and len(rows) == 3
    assert {r.recipient for r in rows} == {"ssi@e0.test", "ssi@e1.test", "ssi@e2.test"}
    msg = email.message_from_bytes(rows[0].raw, policy=email.policy.default)
    assert msg["From"].addresses[0].addr_spec == "ssi-ara@ars.test"  # never the ACSS From
    text = msg.get_body(("plain",)).get_content()  # type: ignore[union-attr]
    assert "CERTFR-2026-ALE-001" in text and "#lu" in text and "TLP:CLEAR" in msg["Subject"]
    assert "statut" in events and "diffusion" in events


def test_red_or_unauthenticated_alerts_are_never_relayed(app: App) -> None:
    with transaction(app.factory) as s:
        fill_directory(s, NOW, 2)
    case_id = alert_case(app, tlp="RED")
    with transaction(app.factory) as s:
        case = s.get(Case, case_id)
        assert case is not None
        with pytest.raises(BulletinError, match="TLP:RED"):
            relay_alert(app.env, s, case, "agent@ars.test")
        case.fields = {"alert": {**case.fields["alert"], "tlp": "CLEAR", "authentic": False}}
        with pytest.raises(BulletinError, match="non authentifiée"):
            relay_alert(app.env, s, case, "agent@ars.test")
    with app.factory() as s:
        assert s.scalar(select(func.count()).select_from(OutboundMessage)) == 0
        assert s.get(Case, case_id).status == "A_DIFFUSER"  # type: ignore[union-attr]


def _cheap_compose(spec: MailSpec) -> Composed:
    """Composition cost is the composer's concern (benchmarks/); here only retention counts."""
    raw = f"To: {spec.to}\r\nSubject: x\r\n\r\n".encode() + b"x" * 4000
    return Composed(raw=raw, message_id=f"<{spec.idempotency_key}@ars.test>", subject="x")


def _peak_for(url: str, recipients: int, cheap: bool = True) -> int:
    application = build_app(bulletin_settings(url), clock=FixedClock(NOW))
    if cheap:
        application.mailer.composer.compose = _cheap_compose  # type: ignore[method-assign]
    try:
        with transaction(application.factory) as s:
            fill_directory(s, NOW, recipients)
        with application.factory() as s:
            bulletin = create_bulletin(s, application.settings, region="ARA", target="all", subject="S",
                                       body="Texte " * 200, tlp="CLEAR", author="cli", now=NOW)
            s.commit()
            tracemalloc.start()
            queued = fan_out(application.env, s, bulletin, checkpoint=lambda x: x.commit())
            s.commit()
            _current, peak = tracemalloc.get_traced_memory()
            tracemalloc.stop()
        assert queued == recipients
        return peak
    finally:
        application.close()


def test_fan_out_memory_is_flat_in_the_number_of_recipients(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    # Small chunks keep it fast (tracemalloc slows everything ~10x) and both runs cross many
    # chunk boundaries; the bench variant below runs 10,000 vs 1,000 with real composition.
    monkeypatch.setattr(fanout, "CHUNK", 25)
    small = _peak_for(f"sqlite:///{tmp_path / 'small.db'}", 100)
    large = _peak_for(f"sqlite:///{tmp_path / 'large.db'}", 1_000)
    # Ten times the recipients (4 MB of messages): holding them would need ~10x.
    assert large < small * 2.5, (small, large)


@pytest.mark.bench
def test_fan_out_memory_with_real_composition(tmp_path: Any) -> None:
    small = _peak_for(f"sqlite:///{tmp_path / 'small.db'}", 1_000, cheap=False)
    large = _peak_for(f"sqlite:///{tmp_path / 'large.db'}", 10_000, cheap=False)
    assert large < small * 2.5, (small, large)
