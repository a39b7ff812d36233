"""The relay misbehaves — down for a while, 421/451 to a share of messages, connections dropped
mid-DATA — and every mail is still delivered exactly once in the end.

No process dies here, so there is no duplicate window: the relay must see each (recipient, case)
exactly once, with temporary failures recorded as attempts and retried (RFC 5321 §4.5.4.1).
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support.chaos import ChaosConfig, case_origins, db_tally, mta_send, numbered_declaration, relay_tally
from tests.support.gateway import RunningGateway
from tests.support.servers import SmtpSink

STAFF = ("referent@ars.test", "agent@ars.test")


@pytest.fixture
def gateway(tmp_path: Path, smtp_sink: SmtpSink) -> Iterator[RunningGateway]:
    with RunningGateway(ChaosConfig(tmp_path / "gw", relay_port=smtp_sink.port)) as gw:
        yield gw


def send_declarations(gateway: RunningGateway, count: int, tag: str, clients: int = 4) -> None:
    give_up_at = time.monotonic() + 40

    def client(k: int) -> None:
        for n in range(k, count, clients):
            raw, _mid, declarant = numbered_declaration(n, tag=tag)
            assert mta_send(gateway.config.smtp_port, raw, declarant, give_up_at=give_up_at).accepted

    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def wait_outbox(config: ChaosConfig, done: Callable[[dict[str, int]], bool], timeout: float = 40) -> dict[str, int]:
    deadline = time.monotonic() + timeout
    while True:
        tally = db_tally(config.db_path)
        if tally.inbound_received == 0 and tally.outbox_by_status and done(tally.outbox_by_status):
            return tally.outbox_by_status
        if time.monotonic() > deadline:
            raise AssertionError(f"outbox not settled: {tally.outbox_by_status}, {tally.inbound_received} unprocessed")
        time.sleep(0.1)


def all_sent(by_status: dict[str, int]) -> bool:
    return set(by_status) == {"sent"}


def temporary_attempts(config: ChaosConfig) -> int:
    conn = sqlite3.connect(f"file:{config.db_path}?mode=ro", uri=True)
    try:
        return int(conn.execute("SELECT count(*) FROM delivery_attempts WHERE outcome = 'temporary'").fetchone()[0])
    finally:
        conn.close()


def assert_exactly_once(config: ChaosConfig, sink: SmtpSink, count: int, tag: str) -> None:
    origins = case_origins(config.db_path)
    assert len(origins) == count and all(len(refs) == 1 for refs in origins.values())
    expected = set()
    for n in range(count):
        ref = origins[numbered_declaration(n, tag=tag)[1]][0]
        expected |= {(f"rssi-{n}@chu-nantes.test", ref), *((staff, ref) for staff in STAFF)}
    relay = relay_tally(sink.messages)
    assert relay.groups.keys() == expected
    assert relay.resent() == {}, f"delivered more than once: {list(relay.resent().items())[:3]}"


def share(every: int) -> Callable[[str], bool]:
    """A matcher failing the first delivery to every ``every``-th declarant (and to nothing else)."""
    failed: set[str] = set()

    def match(address: str) -> bool:
        a = address.lower()
        if not a.startswith("rssi-") or a in failed or int(a[5:].split("@")[0]) % every:
            return False
        failed.add(a)
        return True

    return match


def test_relay_down_then_back_delivers_everything_once(gateway: RunningGateway, smtp_sink: SmtpSink) -> None:
    smtp_sink.stop()
    send_declarations(gateway, 20, "outage")
    # Every row was tried, refused (connection refused = temporary) and put back with a backoff.
    wait_outbox(gateway.config, lambda s: set(s) == {"queued"} and temporary_attempts(gateway.config) >= 60)
    time.sleep(1.0)
    smtp_sink.start()
    print(gateway.config.cli("outbox", "flush", "--all").stdout)
    wait_outbox(gateway.config, all_sent)
    assert_exactly_once(gateway.config, smtp_sink, 20, "outage")


def test_relay_answering_421_and_451_to_a_share_delivers_everything_once(
    gateway: RunningGateway, smtp_sink: SmtpSink
) -> None:
    smtp_sink.fail(share(3), code=451, message="4.3.0 Try again later (injected)", stage="data")
    smtp_sink.fail(share(4), code=421, message="4.7.0 Too busy (injected)", stage="rcpt")
    send_declarations(gateway, 30, "softfail")
    wait_outbox(gateway.config, all_sent)
    assert temporary_attempts(gateway.config) >= 10 + 8
    assert_exactly_once(gateway.config, smtp_sink, 30, "softfail")


def test_relay_dropping_connections_mid_data_delivers_everything_once(
    gateway: RunningGateway, smtp_sink: SmtpSink
) -> None:
    smtp_sink.drop_connection_on_data(times=8)
    send_declarations(gateway, 20, "drop")
    wait_outbox(gateway.config, all_sent)
    assert temporary_attempts(gateway.config) >= 8
    assert_exactly_once(gateway.config, smtp_sink, 20, "drop")


@pytest.mark.long
def test_every_relay_fault_at_once_over_200_declarations(gateway: RunningGateway, smtp_sink: SmtpSink) -> None:
    smtp_sink.fail(share(3), code=451, stage="data")
    smtp_sink.fail(share(5), code=421, stage="rcpt")
    smtp_sink.drop_connection_on_data(times=25)
    sender = threading.Thread(target=send_declarations, args=(gateway, 200, "all"))
    sender.start()
    time.sleep(2)
    smtp_sink.stop()
    time.sleep(3)
    smtp_sink.start()
    sender.join()
    wait_outbox(gateway.config, all_sent, timeout=60)
    assert_exactly_once(gateway.config, smtp_sink, 200, "all")
