"""The sender DKIM-signs what the outbox holds unsigned (DESIGN.md: "Send … signs, delivers").

Issue 19: the RSA signature was a tenth of the processing host's time per declaration, inside its
write transaction; composing now stops before it and the sender signs each message as it leaves.
What must hold: every case mail leaves signed once and verifies; a message the fan-out's signing
processes already signed leaves as it is (one signature, not two); a message that cannot be
signed never leaves unsigned — it fails at once, and no bounce is scored against its recipient.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import dkim
import pytest
from sqlalchemy import select

from mailgateway.dispatch import outbox
from mailgateway.dispatch.compose import MailSpec
from mailgateway.dispatch.contexts import region_context
from mailgateway.store.engine import transaction
from mailgateway.store.models import OutboundMessage
from tests.support.casegateway import Gateway, gateway_from, settings_data
from tests.support.db import at_head
from tests.support.dkim import rsa_key
from tests.support.relaying import send_all


@pytest.fixture
def gw(sqlite_url: str, tmp_path: Path) -> Iterator[Gateway]:
    key_file = tmp_path / "rsa.pem"
    key_file.write_bytes(rsa_key().pem)
    data = settings_data(at_head(sqlite_url))
    data["outbound"] = {"bounce_domain": "ars.test"}
    data["dkim"] = {"domain": "ars.test", "keys": [{"selector": "rsa", "algorithm": "rsa-sha256",
                                                    "private_key_file": str(key_file)}]}
    yield from gateway_from(data)


def _verifies(gw: Gateway, raw: bytes) -> bool:
    signer = gw.app.composer.signer
    assert signer is not None
    records = {s: signer.dns_record(s).encode() for s in signer.selectors}
    return bool(dkim.verify(raw, dnsfunc=lambda name, timeout=5: records[name.decode().split(".", 1)[0]]))


def test_case_mail_is_queued_unsigned_and_leaves_signed_once(gw: Gateway) -> None:
    gw.declare(1)
    queued = gw.outbound()
    assert len(queued) == 3  # acknowledgement, two staff notifications
    assert not any(r.raw.startswith(b"DKIM-Signature:") for r in queued)
    sent = send_all(gw)
    assert sorted(to for _f, to, _r in sent) == sorted(r.recipient for r in queued)
    by_recipient = sorted(queued, key=lambda r: r.recipient)
    for (_mail_from, _to, raw), row in zip(sorted(sent, key=lambda s: s[1]), by_recipient, strict=True):
        assert raw.count(b"DKIM-Signature:") == 1 and raw.startswith(b"DKIM-Signature:")
        assert raw.endswith(row.raw)  # the outbox's bytes, the signature in front
        assert _verifies(gw, raw)
    assert {r.status for r in gw.outbound()} == {"sent"}


def _enqueue(gw: Gateway, raw: bytes, key: str) -> None:
    now = gw.clock.now()
    with transaction(gw.app.factory) as s:
        outbox.enqueue(s, raw=raw, recipient="rssi@chu.test", message_id=f"<{key}@ars.test>", idempotency_key=key,
                       kind="test", now=now - timedelta(seconds=1), settings=gw.app.settings)


def test_a_message_already_signed_leaves_as_it_is(gw: Gateway) -> None:
    context = {**region_context(gw.app.settings, "ARA"), "motif": "essai", "details": []}
    spec = MailSpec(template="avertissement", context=context, to="rssi@chu.test",
                    from_address="ssi-ara@ars.test", from_name="ARS", idempotency_key="presigned")
    signed = gw.app.composer.compose(spec).raw  # as the fan-out's signing processes make them
    assert signed.startswith(b"DKIM-Signature:")
    _enqueue(gw, signed, "presigned")
    [(_f, _t, raw)] = send_all(gw)
    assert raw == signed and _verifies(gw, raw)


def test_a_message_that_cannot_be_signed_fails_unsent_and_scores_no_bounce(gw: Gateway) -> None:
    two_froms = (b"From: a@ars.test\r\nFrom: b@ars.test\r\nTo: rssi@chu.test\r\nSubject: x\r\n"
                 b"Message-ID: <bad@ars.test>\r\n\r\nbody\r\n")
    _enqueue(gw, two_froms, "unsignable")
    bounced: list[str] = []
    sent = send_all(gw, on_permanent_failure=lambda _s, row, answer: bounced.append(answer))
    assert sent == []  # never sent unsigned
    with gw.app.factory() as s:
        row = s.scalar(select(OutboundMessage).where(OutboundMessage.idempotency_key == "unsignable"))
        assert row is not None and row.status == "failed"
        assert "DKIM" in (row.last_answer or "")
    assert bounced == []  # our refusal, not the recipient's: no bounce against the contact
