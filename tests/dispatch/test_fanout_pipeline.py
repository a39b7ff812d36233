"""The chunked fan-out pipeline (issue 19): composed before its transaction, DKIM-signed in worker
processes, inserted per batch; signatures verify, a dead signing process loses and doubles nothing."""

from __future__ import annotations

import email
import os
import signal
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime
from email import policy
from pathlib import Path
from typing import Any

import dkim
import pytest
from sqlalchemy import select, update

from mailgateway.app import App, build_app
from mailgateway.bulletins import fanout
from mailgateway.bulletins.fanout import FanOutStats, approve_bulletin, create_bulletin, fan_out_approved
from mailgateway.clock import FixedClock
from mailgateway.directory import parse_target
from mailgateway.dispatch import bulletin_mail
from mailgateway.dispatch.compose import Composer, MailSpec
from mailgateway.dispatch.dkim import DkimSigner, SigningPool
from mailgateway.dispatch.render import Renderer
from mailgateway.mail.context import loop_token_for
from mailgateway.store.engine import transaction
from mailgateway.store.models import Bulletin, BulletinRecipient, Contact, OutboundMessage
from tests.support.bulletins import bulletin_settings, fill_directory
from tests.support.dkim import (
    dkimpy_verify,
    ed25519_key,
    mail_dkim_verify,
    opendkim_verify,
    rsa_key,
    sample_message,
    zone,
)

NOW = datetime(2026, 11, 27, 9, 0, tzinfo=UTC)
COUNT = 120


def _records() -> dict[str, str]:
    return zone(rsa_key(), ed25519_key())


def _dual_signer() -> DkimSigner:
    return DkimSigner("ars.test", [rsa_key().signing_key(), ed25519_key().signing_key("dkimpy")])


def _bulletin_messages(count: int) -> list[bytes]:
    composer = Composer(Renderer(), None, FixedClock(NOW), "ars.test", loop_token_for("ars.test"))
    return [composer.compose(MailSpec(
        template="bulletin", to=f"ssi@e{i}.test", from_address="ssi-ara@ars.test", from_name="ARS - Cellule SSI",
        idempotency_key=f"bulletin:1:{i}", auto_submitted="auto-generated", tlp="GREEN",
        context={"establishment": {"name": f"Laboratoire n°{i}", "finess": f"69{i:07d}"},
                 "bulletin": {"id": 1, "body": "Mettez à jour « VPN » ; élevé.", "tlp": "GREEN",
                              "subject": "Vulnérabilité"},
                 "service_name": "cellule SSI", "region_name": "Auvergne-Rhône-Alpes",
                 "region_address": "ssi-ara@ars.test"},
    )).raw for i in range(count)]


def test_signatures_made_in_the_pool_verify_with_dkimpy_both_keys() -> None:
    messages = [*_bulletin_messages(6), sample_message()]
    with SigningPool(_dual_signer(), processes=2) as pool:
        assert not pool.in_process
        signatures = pool.result(pool.submit(messages), messages)
        assert pool.pids() and all(pid != os.getpid() for pid in pool.pids())
    for signature, message in zip(signatures, messages, strict=True):
        assert isinstance(signature, bytes)
        signed = signature + message
        assert dkimpy_verify(signed, _records(), idx=0) and dkimpy_verify(signed, _records(), idx=1)
        with pytest.raises(dkim.ValidationError, match="body hash mismatch"):
            dkimpy_verify(signed + b"Ajout\r\n", _records())


def test_signatures_made_in_the_pool_verify_with_mail_dkim_and_opendkim() -> None:
    message = sample_message(extra_headers="Cc: rssi@chu.test\r\n")
    with SigningPool(_dual_signer(), processes=1) as pool:
        [signature] = pool.result(pool.submit([message]), [message])
    assert isinstance(signature, bytes)
    assert ("pass", "ars.test", "rsa", "rsa-sha256") in mail_dkim_verify(signature + message, _records())
    assert sorted(opendkim_verify(signature + message, _records())) == [
        ("pass", "ars.test", "ed", "ed25519-sha256"), ("pass", "ars.test", "rsa", "rsa-sha256")]


def test_the_pool_refuses_what_cannot_be_signed_like_the_signer() -> None:
    no_from = b"To: a@b.test\r\nSubject: x\r\n\r\nbody\r\n"
    with SigningPool(_dual_signer(), processes=1) as pool:
        [answer] = pool.result(pool.submit([no_from]), [no_from])
    assert isinstance(answer, str) and "exactly one From" in answer


def test_a_signing_process_killed_mid_batch_is_replaced_by_signing_here() -> None:
    messages = _bulletin_messages(3)
    with SigningPool(_dual_signer(), processes=2) as pool:
        pool.result(pool.submit(messages), messages)  # the workers are up
        for pid in pool.pids():
            os.kill(pid, signal.SIGKILL)
        signatures = pool.result(pool.submit(messages), messages)
        assert pool.fallbacks == 1 and pool.in_process
    assert all(isinstance(s, bytes) and dkimpy_verify(s + m, _records()) for s, m in zip(signatures, messages,
                                                                                        strict=True))


# --- the fan-out itself, with the app's DKIM configuration ----------------------------------------


@pytest.fixture
def app(tmp_path: Path, db_url: str) -> Iterator[App]:
    """On SQLite and on PostgreSQL (the multi-row INSERT … ON CONFLICT … RETURNING of both)."""
    key_file = tmp_path / "rsa.pem"
    key_file.write_bytes(rsa_key().pem)
    settings = bulletin_settings(
        db_url,
        dkim={"domain": "ars.test", "keys": [{"selector": "rsa", "algorithm": "rsa-sha256",
                                              "private_key_file": str(key_file)}]},
        bulletins={"inline_fanout_limit": 5, "fanout_commit_every": 25, "signing_processes": 2},
    )
    application = build_app(settings, clock=FixedClock(NOW))
    with transaction(application.factory) as s:
        fill_directory(s, NOW, COUNT)
        # two establishments reachable only at a no-reply address: refused, as by the Mailer
        for n in fill_directory(s, NOW, 2, start=COUNT):
            s.execute(update(Contact).where(Contact.finess == n).values(address=f"no-reply@{n}.test"))
    yield application
    application.close()


def _approved(app: App) -> int:
    with transaction(app.factory) as s:
        bulletin = create_bulletin(s, app.settings, region="ARA", target=parse_target("category=LBM"),
                                   subject="Hameçonnage", body="Texte du bulletin", tlp="GREEN",
                                   author="agent@ars.test", now=NOW)
        s.flush()
        approve_bulletin(app.env, s, bulletin.id, "agent@ars.test")
        return bulletin.id


def _outbox(app: App, bulletin_id: int) -> list[OutboundMessage]:
    with app.factory() as s:
        return list(s.scalars(select(OutboundMessage).where(OutboundMessage.bulletin_id == bulletin_id)))


def _check_once_each(app: App, bulletin_id: int) -> list[OutboundMessage]:
    rows = _outbox(app, bulletin_id)
    assert sorted(r.recipient for r in rows) == sorted(f"ssi@e{n}.test" for n in range(COUNT))
    assert len({r.message_id for r in rows}) == len({r.verp_token for r in rows}) == COUNT
    with app.factory() as s:
        states = Counter(s.scalars(select(BulletinRecipient.status)
                                   .where(BulletinRecipient.bulletin_id == bulletin_id)))
        bulletin = s.get(Bulletin, bulletin_id)
        assert bulletin is not None and bulletin.status == "sent" and bulletin.recipients == COUNT
    assert states == {"queued": COUNT, "refused": 2}
    return rows


def _addressed(raw: bytes) -> Any:
    return email.message_from_bytes(raw, policy=policy.default)


def test_the_daemon_fan_out_signs_in_processes_and_every_message_verifies(app: App) -> None:
    bulletin_id = _approved(app)
    stats = FanOutStats()
    assert fan_out_approved(app.env, app.factory, stats=stats) == COUNT
    assert not stats.in_process and len(stats.signing_processes) == 2 and stats.fallbacks == 0
    assert stats.batches == 5  # 122 establishments, 25 per committed batch
    records = zone(rsa_key())
    for row in _check_once_each(app, bulletin_id):
        assert dkimpy_verify(row.raw, records)
        parsed = _addressed(row.raw)
        assert parsed["To"] == row.recipient and parsed["Message-ID"] == row.message_id
        assert parsed["Subject"].startswith("[TLP:GREEN]") and parsed["X-Mailgateway-Bulletin"] == str(bulletin_id)


def test_a_killed_signing_process_neither_loses_nor_doubles_a_recipient(
        app: App, monkeypatch: pytest.MonkeyPatch) -> None:
    class KilledAfterTwoTasks(SigningPool):
        tasks = 0

        def run(self, task: Any, args: Any, here: Any) -> Any:
            KilledAfterTwoTasks.tasks += 1
            if KilledAfterTwoTasks.tasks == 3:
                for pid in self.pids():
                    os.kill(pid, signal.SIGKILL)
            return super().run(task, args, here)

    monkeypatch.setattr(fanout, "SigningPool", KilledAfterTwoTasks)
    bulletin_id = _approved(app)
    stats = FanOutStats()
    assert fan_out_approved(app.env, app.factory, stats=stats) == COUNT
    assert stats.in_process and stats.fallbacks >= 1
    records = zone(rsa_key())
    assert all(dkimpy_verify(row.raw, records) for row in _check_once_each(app, bulletin_id))


def test_a_fan_out_stopped_between_batches_resumes_each_establishment_once(
        app: App, monkeypatch: pytest.MonkeyPatch) -> None:
    bulletin_id = _approved(app)
    real = bulletin_mail.enqueue_many
    calls = 0

    def crash_at_the_third_batch(*args: Any, **kwargs: Any) -> dict[str, int]:
        nonlocal calls
        calls += 1
        if calls == 3:
            raise RuntimeError("the process dies here")
        return real(*args, **kwargs)

    monkeypatch.setattr(fanout, "enqueue_many", crash_at_the_third_batch)
    with pytest.raises(RuntimeError):
        fan_out_approved(app.env, app.factory)
    assert len(_outbox(app, bulletin_id)) == 50  # two batches committed, the third rolled back
    monkeypatch.setattr(fanout, "enqueue_many", real)
    assert fanout.resume_interrupted_fan_outs(app.factory) == 1
    assert fan_out_approved(app.env, app.factory) == COUNT
    _check_once_each(app, bulletin_id)


def test_messages_composed_in_the_workers_are_those_of_the_composer_here(app: App) -> None:
    bulletin_id = _approved(app)
    assert fan_out_approved(app.env, app.factory) == COUNT
    for row in _outbox(app, bulletin_id)[:3]:
        worker = _addressed(row.raw)
        # the installation's secret: the Message-ID this process would compute for the same key
        assert worker["Message-ID"] == app.mailer.composer.message_id(
            f"bulletin:{bulletin_id}:{_finess_of(app, row)}")
        assert worker["Date"].datetime == NOW  # the instant of the fan-out's clock, not the worker's
        assert worker["From"].addresses[0].addr_spec == "ssi-ara@ars.test"
        assert worker["Auto-Submitted"] == "auto-generated" and worker["X-Mailgateway-Loop"]


def _finess_of(app: App, row: OutboundMessage) -> str:
    with app.factory() as s:
        return str(s.scalar(select(BulletinRecipient.finess).where(BulletinRecipient.outbound_id == row.id)))


def test_a_composer_that_cannot_travel_composes_here_and_signs_in_the_pool(app: App) -> None:
    class SiteRenderer(Renderer):
        pass

    app.mailer.composer.renderer = SiteRenderer()
    bulletin_id = _approved(app)
    stats = FanOutStats()
    assert fan_out_approved(app.env, app.factory, stats=stats) == COUNT
    assert not stats.in_process and stats.signing_processes
    records = zone(rsa_key())
    assert all(dkimpy_verify(row.raw, records) for row in _check_once_each(app, bulletin_id))


@pytest.mark.parametrize("bulletins", [{"signing_processes": -1}, {"signing_processes": 65},
                                       {"fanout_commit_every": 0}, {"fanout_commit_every": 10_001}])
def test_fan_out_settings_out_of_range_are_refused(bulletins: dict[str, int]) -> None:
    from mailgateway.errors import ConfigError

    with pytest.raises(ConfigError, match="bulletins"):
        bulletin_settings("sqlite:///unused.db", bulletins=bulletins)


def test_a_stop_pauses_the_fan_out_between_batches_and_the_next_start_resumes_it(app: App) -> None:
    bulletin_id = _approved(app)
    committed: list[int] = []

    def stopping() -> bool:  # the daemon's stop event, set once the second batch is committed
        committed.append(len(_outbox(app, bulletin_id)))
        return len(committed) >= 2

    fan_out_approved(app.env, app.factory, stop=stopping)
    with app.factory() as s:
        assert s.get(Bulletin, bulletin_id).status == "sending"  # type: ignore[union-attr]
    assert 0 < len(_outbox(app, bulletin_id)) < COUNT
    assert fanout.resume_interrupted_fan_outs(app.factory) == 1
    assert fan_out_approved(app.env, app.factory) == COUNT
    _check_once_each(app, bulletin_id)
