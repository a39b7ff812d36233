"""Staff mail is composed once per content, not once per staff member or per repeat (issue 19).

- a staff notification to every staff member of the region is one message: the template is
  rendered, the original encoded and the headers written once, every member in To, one
  Message-ID (their replies thread under the same mail); each member still has an outbox row of
  their own (status, attempts, bounces), and each copy delivered verifies;
- an hourly cap warning, asked for again by every capped message of a burst, is composed only the
  first time: the repeats find its key queued and are skipped before composing and signing.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import dkim
import pytest

from mailgateway.dispatch.compose import Composer
from mailgateway.dispatch.mailer import STAFF_MESSAGE_MAX_RECIPIENTS
from tests.support import casemail
from tests.support.casegateway import Gateway, gateway_from, settings_data
from tests.support.db import at_head
from tests.support.dkim import rsa_key
from tests.support.relaying import send_all

ARA_STAFF = ("agent@ars.test", "referent@ars.test")


@pytest.fixture
def gw(sqlite_url: str, tmp_path: Path) -> Iterator[Gateway]:
    key_file = tmp_path / "rsa.pem"
    key_file.write_bytes(rsa_key().pem)
    data = settings_data(at_head(sqlite_url))
    data["outbound"] = {"bounce_domain": "ars.test", "staff_notifications_unauthenticated_per_hour": 2}
    data["dkim"] = {"domain": "ars.test", "keys": [{"selector": "rsa", "algorithm": "rsa-sha256",
                                                    "private_key_file": str(key_file)}]}
    yield from gateway_from(data)


class Counting:
    """Counts the Composer's renderings and compositions (wraps the real ones)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.rendered: list[str] = []
        self.composed: list[str] = []
        body, compose = Composer._body, Composer.compose

        def counting_body(composer: Composer, spec):  # type: ignore[no-untyped-def]
            self.rendered.append(spec.template)
            return body(composer, spec)

        def counting_compose(composer: Composer, spec, bodies=None, **kw):  # type: ignore[no-untyped-def]
            self.composed.append(spec.template)
            return compose(composer, spec, bodies, **kw)

        monkeypatch.setattr(Composer, "_body", counting_body)
        monkeypatch.setattr(Composer, "compose", counting_compose)


def test_one_message_for_every_staff_member_a_row_each(gw: Gateway, monkeypatch: pytest.MonkeyPatch) -> None:
    count = Counting(monkeypatch)
    ref = gw.declare(1)
    assert count.rendered.count("staff_notification") == 1
    assert count.composed.count("staff_notification") == 1
    rows = {to: gw.notification(ref, to) for to in ARA_STAFF}
    assert {row.recipient for row in rows.values()} == set(ARA_STAFF)  # a row each
    assert len({row.message_id for row in rows.values()}) == 1  # one message
    assert len({row.mail_from for row in rows.values()}) == 1  # one return path: one transaction
    assert len({row.verp_token for row in rows.values()}) == len(ARA_STAFF)
    assert len({row.raw for row in rows.values()}) == 1
    raw = next(iter(rows.values())).raw
    head = raw.partition(b"\r\n\r\n")[0].decode().replace("\r\n ", " ")
    to_line = next(line for line in head.split("\r\n") if line.startswith("To: "))
    assert sorted(a.strip() for a in to_line[4:].split(",")) == sorted(ARA_STAFF)
    assert ref in casemail.text_of(raw)  # the original attached, the reference in the text


def test_each_staff_copy_verifies(gw: Gateway) -> None:
    gw.declare(1)
    signer = gw.app.composer.signer
    assert signer is not None
    records = {s: signer.dns_record(s).encode() for s in signer.selectors}

    def dnsfunc(name: bytes, timeout: int = 5) -> bytes:
        return records[name.decode().split(".", 1)[0]]

    # Signed by the sender, as each copy leaves (dispatch/sender.py).
    sent = {to: raw for _mail_from, to, raw in send_all(gw)}
    for to in ARA_STAFF:
        raw = sent[to]
        assert raw.startswith(b"DKIM-Signature:") and raw.count(b"DKIM-Signature:") == 1
        assert dkim.verify(raw, dnsfunc=dnsfunc)


def test_repeated_cap_warning_is_not_composed_again(gw: Gateway, monkeypatch: pytest.MonkeyPatch) -> None:
    for n in range(2):  # the unauthenticated pool (2 an hour) is used up
        gw.feed(casemail.declaration(300 + n, sender=f"anon{n}@ailleurs-{n}.test"))
    count = Counting(monkeypatch)
    gw.feed(casemail.declaration(310, sender="anon10@ailleurs-10.test"))
    first = count.composed.count("avertissement")
    assert first == 1  # staff are told once that the pool is exhausted, in one message
    for n in range(11, 16):
        gw.feed(casemail.declaration(300 + n, sender=f"anon{n}@ailleurs-{n}.test"))
    assert count.composed.count("avertissement") == first  # not composed again, not queued again
    warnings = [r for r in gw.outbound() if "non authentifiés" in casemail.text_of(r.raw)]
    assert len(warnings) == len(ARA_STAFF)


def test_a_long_staff_list_is_several_messages(sqlite_url: str) -> None:
    """At most STAFF_MESSAGE_MAX_RECIPIENTS in one To (RFC 5321 §4.5.3.1.8: a relay takes at least
    100 RCPTs): 120 agents are three messages, each its own Message-ID, an outbox row per agent."""
    data = settings_data(at_head(sqlite_url))
    data["staff"] = [{"address": f"agent{n:03d}@ars.test", "region": "ARA"} for n in range(120)]
    for gw in gateway_from(data):
        ref = gw.declare(1)
        rows = [r for r in gw.outbound("notification_equipe") if r.case_id == gw.case(ref).id]
        assert sorted(r.recipient for r in rows) == [f"agent{n:03d}@ars.test" for n in range(120)]
        by_message: dict[str, list[str]] = {}
        for row in rows:
            by_message.setdefault(row.message_id, []).append(row.recipient)
        assert sorted(len(v) for v in by_message.values()) == [20, STAFF_MESSAGE_MAX_RECIPIENTS, 50]
        for row in rows:
            head = row.raw.partition(b"\r\n\r\n")[0].decode().replace("\r\n ", " ")
            to_line = next(line for line in head.split("\r\n") if line.startswith("To: "))
            assert sorted(a.strip() for a in to_line[4:].split(",")) == sorted(by_message[row.message_id])
            assert all(len(line) <= 78 for line in row.raw.partition(b"\r\n\r\n")[0].split(b"\r\n"))
