"""Crash recovery is immediate: a daemon SIGKILLed while its sender holds acknowledgements
(``sending``, leased for ten minutes here) is restarted, and every acknowledgement reaches the relay
long before that lease could have run out — the restarted sender reclaims the dead one's rows at
start-up (dispatch/liveness.py), it does not wait for the lease and the housekeeping job.

The first relay accepts connections and never greets, so the killed sender's rows are certainly
``sending`` when it dies; the restarted daemon finds a working relay on the same port.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from pathlib import Path

import pytest
from sqlalchemy import select, update

from mailgateway.clock import SystemClock
from mailgateway.dispatch.liveness import SenderLiveness, dead_on_sqlite, reclaim_dead_senders
from mailgateway.store.engine import make_engine, make_sessionmaker, upgrade
from mailgateway.store.models import OutboundMessage
from tests.support.chaos import ChaosConfig, db_tally, numbered_declaration
from tests.support.gateway import RunningGateway, wait_until
from tests.support.servers import SmtpSink, free_port

pytestmark = pytest.mark.slow

LEASE = 600.0  # seconds: the distinction "reclaimed at start" / "lease expired" is unambiguous
DECLARATIONS = 5


class SilentRelay:
    """A relay that accepts TCP connections and never says a word (a wedged MTA)."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_server(("127.0.0.1", port))
        self.held: list[socket.socket] = []
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.held.append(conn)

    def close(self) -> None:
        self.sock.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept(), which frees the port
        self.sock.close()
        self.thread.join(timeout=5)
        for conn in self.held:
            conn.close()


def _outbox(config: ChaosConfig) -> dict[str, int]:
    return db_tally(config.db_path).outbox_by_status


def test_acknowledgements_held_by_a_killed_sender_leave_at_once_after_restart(tmp_path: Path) -> None:
    relay_port = free_port()
    config = ChaosConfig(tmp_path / "gw", relay_port=relay_port)
    config.lease_seconds = LEASE
    config.relay_timeout_seconds = 120.0  # the silent relay keeps the rows ``sending`` meanwhile
    config.write()
    silent = SilentRelay(relay_port)
    gateway = RunningGateway(config)
    try:
        declarants = []
        for n in range(DECLARATIONS):
            raw, _mid, declarant = numbered_declaration(n, tag="reclaim")
            gateway.send(raw, mail_from=declarant)
            declarants.append(declarant)
        # Every outbound row processed and leased by the sender that is about to die.
        wait_until(lambda: db_tally(config.db_path).inbound_received == 0
                   and set(_outbox(config)) == {"sending"}, timeout=60)
        held = _outbox(config)["sending"]
        gateway.kill()
    finally:
        silent.close()
        if gateway.proc.poll() is None:
            gateway.kill()
    assert held >= DECLARATIONS  # an acknowledgement per declarant, plus staff notifications

    sink = SmtpSink(port=relay_port).start()
    try:
        restarted_at = time.monotonic()
        with RunningGateway(config):
            # A row per recipient; a staff notification is one message to both agents.
            wait_until(lambda: sum(len(m.rcpt_tos) for m in sink.messages) >= held, timeout=90)
            took = time.monotonic() - restarted_at
            wait_until(lambda: set(_outbox(config)) == {"sent"}, timeout=30)
    finally:
        sink.stop()
    acknowledged = {r.lower() for m in sink.messages for r in m.rcpt_tos}
    assert set(declarants) <= acknowledged
    # Well within the lease the killed sender took (a lease expiry could not explain it).
    assert took < LEASE / 4, f"{took:.1f} s after the restart"
    print(f"{held} messages left sending by the killed sender reached the relay {took:.1f} s after the restart")


def test_which_owners_are_dead_on_sqlite() -> None:
    me = f"{socket.gethostname()}:{os.getpid()}"
    assert dead_on_sqlite(me, me)  # our id at start-up: a previous process (container PID 1)
    assert dead_on_sqlite(f"{socket.gethostname()}-old-container:1234", me)
    assert not dead_on_sqlite(f"{socket.gethostname()}:{os.getppid()}", me)  # alive beside us
    assert not dead_on_sqlite("cli-flush", me)  # names no process: its lease decides
    dead_pid = _a_dead_pid()
    assert dead_on_sqlite(f"{socket.gethostname()}:{dead_pid}", me)


def _a_dead_pid() -> int:
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)
    return pid


def test_postgres_reclaims_only_owners_whose_lock_is_free(pg_url: str) -> None:
    upgrade(pg_url)
    engine = make_engine(pg_url)
    factory = make_sessionmaker(engine)
    clock = SystemClock()
    alive, dead = "host-a:100", "host-b:200"
    try:
        with factory() as session, session.begin():
            for n in range(3):
                now = clock.now()
                session.add(OutboundMessage(
                    idempotency_key=f"k{n}", kind="acknowledgement", message_id=f"<m{n}@t>", verp_token=f"t{n}",
                    mail_from="b@t", recipient=f"r{n}@t", raw=b"x", priority=0, status="queued", attempts=0,
                    created_at=now, next_attempt_at=now, deadline_at=now))
        with factory() as session, session.begin():
            for n, owner in enumerate((alive, dead, "cli-flush")):
                session.execute(update(OutboundMessage).where(OutboundMessage.idempotency_key == f"k{n}")
                                .values(status="sending", lease_owner=owner, lease_until=clock.now()))
        other = SenderLiveness(engine, alive)
        other.hold()  # a live instance elsewhere
        me = SenderLiveness(engine, "host-c:300")
        me.hold()
        try:
            assert reclaim_dead_senders(factory, clock, me) == 1
        finally:
            me.release()
            other.release()
        with factory() as session:
            states = dict(session.execute(select(OutboundMessage.lease_owner, OutboundMessage.status)
                                          .where(OutboundMessage.status == "sending")).all())
        assert states == {alive: "sending", "cli-flush": "sending"}
    finally:
        engine.dispose()
