"""Two daemons on one PostgreSQL database (docs/operations.md, scale-out): one IMAP leader, takeover after
SIGKILL, inbound processed once, and the outbox delivered exactly once by both senders together."""

from __future__ import annotations

import email
import json
import socket
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session, sessionmaker

from mailgateway.dispatch.outbox import enqueue
from mailgateway.settings import load_settings
from mailgateway.store.engine import make_engine, make_sessionmaker, transaction, upgrade
from mailgateway.store.models import InboundMessage, MailboxState, OutboundMessage
from tests.support.gateway import GatewayConfig, RunningGateway, declaration
from tests.support.servers import Dovecot, SmtpSink, free_port, wait_for

MAILBOX = "PDL:INBOX"
DECLARANT = "dsi@chu-nantes.test"


def instance_id(gw: RunningGateway) -> str:
    return f"{socket.gethostname()}:{gw.proc.pid}"  # the daemon's own id (daemon.Daemon.instance_id)


@dataclass
class Cluster:
    engine: Engine
    configs: tuple[GatewayConfig, GatewayConfig]
    gateways: list[RunningGateway]
    dovecot: Dovecot
    sink: SmtpSink

    @property
    def factory(self) -> sessionmaker[Session]:
        return make_sessionmaker(self.engine)

    def mailbox(self) -> MailboxState | None:
        with self.factory() as db:
            return db.get(MailboxState, MAILBOX)

    def leader(self) -> RunningGateway | None:
        """The gateway recorded as holder while the mailbox is idle (being watched)."""
        row = self.mailbox()
        if row is None or row.state != "idle":
            return None
        for gw in self.gateways:
            if gw.proc.poll() is None and row.holder == instance_id(gw):
                return gw
        return None

    def inbound(self) -> list[InboundMessage]:
        with self.factory() as db:
            return list(db.scalars(select(InboundMessage).order_by(InboundMessage.id)))

    def replies_per_declaration(self) -> Counter[str]:
        """How many answers the declarant got per declaration (by In-Reply-To)."""
        return Counter(str(email.message_from_bytes(m.raw)["In-Reply-To"]).strip()
                       for m in self.sink.messages_to(DECLARANT))


@pytest.fixture
def cluster(tmp_path: Path, pg_url: str, dovecot: Dovecot, smtp_sink: SmtpSink) -> Iterator[Cluster]:
    upgrade(pg_url)  # PostgreSQL: `mailgateway db upgrade` once, before the instances (operations.md)
    user = dovecot.add_user("ssi-pdl@ars.test", "s3cret")
    imap = {"host": "127.0.0.1", "port": dovecot.imap_port, "tls": False, "username": user,
            "password_file": str(dovecot.password_file(user, tmp_path))}  # fmt: skip
    configs = tuple(GatewayConfig(tmp_path / name, relay_port=smtp_sink.port, imap={"PDL": imap},
                                  database_url=pg_url, instances=2, metrics_port=free_port())
                    for name in ("a", "b"))
    assert len(configs) == 2
    engine = make_engine(pg_url)
    gateways: list[RunningGateway] = []
    try:
        gateways.extend(RunningGateway(c) for c in configs)
        yield Cluster(engine, (configs[0], configs[1]), gateways, dovecot, smtp_sink)
    finally:
        for gw in gateways:
            if gw.proc.poll() is None:
                gw.stop()
        engine.dispose()


def http_get(gw: RunningGateway, path: str) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{gw.config.metrics_port}{path}", timeout=5) as answer:
        return str(answer.read().decode())


def deliver(cluster: Cluster, names: list[str]) -> None:
    for name in names:
        cluster.dovecot.deliver("ssi-pdl@ars.test", declaration(f"{name}@chu-nantes.test"), mail_from=DECLARANT)


def assert_processed_once(cluster: Cluster, names: list[str]) -> None:
    wanted = {f"<{n}@chu-nantes.test>" for n in names}
    wait_for(lambda: wanted <= set(cluster.replies_per_declaration()), timeout=20)
    time.sleep(1.0)  # time for a duplicate to show up, if there were one
    rows = [r for r in cluster.inbound() if r.message_id and f"<{r.message_id.strip('<>')}>" in wanted]
    assert len(rows) == len(wanted), [r.message_id for r in rows]
    assert all(r.status == "processed" and r.attempts <= 1 for r in rows), [(r.status, r.attempts) for r in rows]
    replies = cluster.replies_per_declaration()
    assert {k: replies[k] for k in wanted} == dict.fromkeys(wanted, 1)


def test_two_instances_one_mailbox_leader_and_takeover_after_sigkill(cluster: Cluster) -> None:
    leader = wait_for(cluster.leader, timeout=20)
    standby = next(gw for gw in cluster.gateways if gw is not leader)
    # The other instance knows it is standing by, and says so in its log.
    wait_for(lambda: "standby, another instance watches this mailbox" in standby.log(), timeout=10)
    status = json.loads(standby.config.cli("status", "--json", check=False).stdout)
    (box,) = status["mailboxes"]
    assert box["holder"] == instance_id(leader) and box["state"] == "idle" and box["problem"] is None
    # Its live state is "standby" in /metrics, and standing by is healthy.
    assert f'mailgateway_imap_state{{mailbox="{MAILBOX}",state="standby"}} 1.0' in http_get(standby, "/metrics")
    assert f'mailgateway_imap_state{{mailbox="{MAILBOX}",state="idle"}} 1.0' in http_get(leader, "/metrics")
    assert http_get(standby, "/healthz").startswith("ok")
    # Each instance logs its id at start.
    for gw in cluster.gateways:
        assert instance_id(gw) in gw.log()

    deliver(cluster, ["before-1", "before-2", "before-3"])
    assert_processed_once(cluster, ["before-1", "before-2", "before-3"])

    leader.kill()  # SIGKILL: no goodbye; PostgreSQL ends its session and so releases its lock
    killed_at = time.monotonic()
    deliver(cluster, ["after-1", "after-2"])
    assert wait_for(cluster.leader, timeout=30) is standby
    takeover = time.monotonic() - killed_at
    print(f"IMAP takeover after SIGKILL: {takeover:.1f} s")
    assert takeover < 30
    assert_processed_once(cluster, ["after-1", "after-2"])
    row = cluster.mailbox()
    assert row is not None and row.holder == instance_id(standby)


def bulk_outbox(cluster: Cluster, count: int) -> list[str]:
    settings = load_settings(cluster.configs[0].path)
    now = datetime.now(UTC)
    ids = []
    with transaction(cluster.factory) as db:
        for n in range(count):
            mid = f"<bulk-{n}@ars.test>"
            raw = (f"From: SSI <ssi-pdl@ars.test>\r\nTo: rssi{n}@etab.test\r\nSubject: Bulletin {n}\r\n"
                   f"Message-ID: {mid}\r\nDate: Fri, 27 Nov 2026 09:00:00 +0100\r\n\r\nBonjour.\r\n").encode()
            enqueue(db, raw=raw, recipient=f"rssi{n}@etab.test", message_id=mid, idempotency_key=f"bulk:{n}",
                    kind="bulletin", now=now, settings=settings, priority=10)
            ids.append(mid)
    return ids


def outbox_delivered_exactly_once(cluster: Cluster, count: int) -> dict[str, int]:
    ids = bulk_outbox(cluster, count)
    cluster.sink.wait_for(count, timeout=120)
    time.sleep(1.0)
    seen = Counter(str(email.message_from_bytes(m.raw)["Message-ID"]).strip() for m in cluster.sink.messages
                   if "bulk-" in str(email.message_from_bytes(m.raw)["Message-ID"]))
    assert set(seen) == set(ids)
    assert max(seen.values()) == 1, [k for k, v in seen.items() if v > 1][:10]
    with cluster.factory() as db:
        statuses = dict(db.execute(select(OutboundMessage.status, func.count())
                                   .where(OutboundMessage.idempotency_key.like("bulk:%"))
                                   .group_by(OutboundMessage.status)).all())
        owners = dict(db.execute(select(OutboundMessage.lease_owner, func.count())
                                 .where(OutboundMessage.idempotency_key.like("bulk:%"))
                                 .group_by(OutboundMessage.lease_owner)).all())
    assert statuses == {"sent": count}
    return {str(k): int(v) for k, v in owners.items()}


def test_two_instances_deliver_2000_outbox_rows_exactly_once(cluster: Cluster) -> None:
    started = time.monotonic()
    owners = outbox_delivered_exactly_once(cluster, 2000)
    print(f"2000 rows by two instances in {time.monotonic() - started:.1f} s: {owners}")
    # Only our two senders claimed rows (SKIP LOCKED shares the queue; which one takes how many
    # depends on who wakes first, so a share is not asserted).
    assert set(owners) <= {instance_id(gw) for gw in cluster.gateways}


def test_check_config_refuses_several_instances_on_sqlite_and_accepts_them_on_postgresql(
    tmp_path: Path, pg_url: str
) -> None:
    sqlite = GatewayConfig(tmp_path / "sqlite", instances=2)
    refused = sqlite.cli("check-config", check=False)
    assert refused.returncode != 0 and "database.instances" in refused.stderr + refused.stdout
    # The daemon refuses the same file: SQLite has one writer and no advisory locks, so instances
    # could neither share the work nor elect a mailbox leader.
    assert sqlite.cli("run", check=False, timeout=60).returncode != 0
    upgrade(pg_url)
    accepted = GatewayConfig(tmp_path / "pg", instances=2, database_url=pg_url).cli("check-config", check=False)
    assert accepted.returncode == 0, accepted.stderr
