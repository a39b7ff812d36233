"""The site's relay is not an attacker: a burst from a ``[intake.smtp] trusted_relays`` address
is accepted whole whatever the per-IP rate limit, while the same burst from any other peer still
meets ``451 4.7.1`` beyond it. Against the real daemon's SMTP listener (clients on 127.0.0.1: the
test makes loopback untrusted by naming another relay)."""

from __future__ import annotations

import smtplib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from mailgateway.intake.smtp import is_trusted, trusted_networks
from mailgateway.settings import SmtpIntakeSettings
from tests.support.gateway import GatewayConfig, RunningGateway

pytestmark = pytest.mark.slow

PDL = "ssi-pdl@ars.test"
LIMIT = 5  # messages per client IP and minute
BURST = 16  # over four connections, as an MTA delivers a queue


def _message(n: int) -> bytes:
    return (b"From: Etablissement <dsi@chu.test>\r\nTo: " + PDL.encode() + b"\r\nSubject: rafale %d\r\n"
            b"Message-ID: <burst-%d@chu.test>\r\nDate: Fri, 27 Nov 2026 09:12:00 +0100\r\n\r\nBonjour.\r\n"
            % (n, n))


def _config(directory: Path, trusted_relays: str | None) -> GatewayConfig:
    config = GatewayConfig(directory)
    text = config.path.read_text()
    anchor = 'server_hostname = "gateway.test"'
    keys = f"rate_limit_per_minute = {LIMIT}"
    if trusted_relays is not None:
        keys += f"\ntrusted_relays = {trusted_relays}"
    config.path.write_text(text.replace(anchor, f"{anchor}\n{keys}", 1))
    return config


def _burst(port: int) -> list[int]:
    """The DATA reply code of each of BURST messages, four connections at a time."""

    def connection(first: int) -> list[int]:
        codes = []
        with smtplib.SMTP("127.0.0.1", port, local_hostname="relay.test", timeout=60) as s:
            for n in range(first, BURST, 4):
                s.ehlo_or_helo_if_needed()
                s.mail("dsi@chu.test")
                s.rcpt(PDL)
                code, _text = s.data(_message(n))
                codes.append(code)
                s.rset()
        return codes

    with ThreadPoolExecutor(4) as pool:
        return [code for codes in pool.map(connection, range(4)) for code in codes]


def test_a_burst_from_the_default_trusted_relay_loopback_is_all_accepted(tmp_path: Path) -> None:
    with RunningGateway(_config(tmp_path / "gw", None)) as gw:
        codes = _burst(gw.config.smtp_port)
    assert codes == [250] * BURST, codes


def test_the_same_burst_from_an_untrusted_peer_meets_451_beyond_the_limit(tmp_path: Path) -> None:
    # Loopback is not trusted once the operator names the relay that is.
    with RunningGateway(_config(tmp_path / "gw", '["192.0.2.25"]')) as gw:
        codes = _burst(gw.config.smtp_port)
    assert codes.count(250) == LIMIT, codes
    assert codes.count(451) == BURST - LIMIT, codes


def test_trusted_relays_default_to_loopback_and_match_networks() -> None:
    default = trusted_networks(SmtpIntakeSettings().trusted_relays)
    assert is_trusted("127.0.0.1", default)
    assert is_trusted("::1", default)
    assert is_trusted("::ffff:127.0.0.1", default)
    assert not is_trusted("127.0.0.2", default)
    assert not is_trusted("192.0.2.25", default)
    site = trusted_networks(("10.1.0.0/16", "2001:db8::25", "not an address"))
    assert is_trusted("10.1.2.3", site)
    assert is_trusted("[2001:db8::25]", site)
    assert not is_trusted("10.2.0.1", site)
    assert not is_trusted("garbage", site)
    assert not is_trusted("127.0.0.1", trusted_networks(()))


def test_a_message_to_several_regions_counts_once_per_region(tmp_path: Path) -> None:
    """An outside tester's untrusted peer sent each message to every regional mailbox: one count
    of the per-IP limit, a case and an acknowledgement in each region. Each regional recipient is
    a message processed on its own, and counts as one."""
    with RunningGateway(_config(tmp_path / "gw", '["192.0.2.25"]')) as gw:
        codes = []
        with smtplib.SMTP("127.0.0.1", gw.config.smtp_port, local_hostname="relay.test", timeout=60) as s:
            for n in range(4):
                s.ehlo_or_helo_if_needed()
                s.mail("dsi@chu.test")
                s.rcpt(PDL)
                s.rcpt("ssi-ara@ars.test")
                codes.append(s.data(_message(100 + n))[0])
                s.rset()
    assert codes == [250, 250, 451, 451], codes  # 2 + 2 of LIMIT = 5; a third pair would be 6
