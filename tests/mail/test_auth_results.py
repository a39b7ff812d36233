"""Authentication-Results (RFC 8601): trusted only from our authserv-ids, and only the topmost one."""

from __future__ import annotations

import pytest

from mailgateway.dispatch.dkim import DkimSigner
from mailgateway.dns import StaticResolver
from mailgateway.mail.auth import Authenticator, arrived_via_trusted_path
from mailgateway.mail.facts import SenderVerdict
from mailgateway.settings import AuthenticationSettings, IntakeSettings, Settings, SmtpIntakeSettings
from tests.support.dkim import rsa_key, zone

TRUSTED = ("mx.ars.test", "filter.ars.test")


class TrustedPathAuthenticator(Authenticator):
    """These tests are about reading A-R: the message came through the trusted path (docs/guarantees.md:
    A-R counts only then; the untrusted path is tested at the end of this file)."""

    def verify(self, raw: bytes, *, trusted_path: bool = True) -> SenderVerdict:
        return super().verify(raw, trusted_path=trusted_path)


def authenticator(trusted: tuple[str, ...] = TRUSTED) -> Authenticator:
    return TrustedPathAuthenticator(AuthenticationSettings(trusted_authserv_ids=trusted), StaticResolver({}))


def message(*ar_values: str, sender: str = "dsi@dsi.chu.test") -> bytes:
    """A message whose Authentication-Results fields appear top to bottom in the given order."""
    ars = "".join(f"Authentication-Results: {v}\r\n" for v in ar_values)
    return (
        f"Received: from relay.chu.test by mx.ars.test; Fri, 27 Nov 2026 08:30:01 +0100\r\n{ars}"
        f"From: {sender}\r\nTo: ssi-ara@ars.test\r\nSubject: Incident\r\n\r\nbody\r\n"
    ).encode()


def test_trusted_dmarc_pass_for_the_from_domain_authenticates() -> None:
    verdict = authenticator().verify(message("mx.ars.test; dmarc=pass (p=reject) header.from=dsi.chu.test"))
    assert verdict.authenticated
    assert verdict.method == "authentication-results"
    assert verdict.auth_domain == "dsi.chu.test"
    assert "dmarc=pass header.from=dsi.chu.test" in verdict.detail


def test_trusted_dmarc_pass_for_another_domain_does_not_authenticate() -> None:
    verdict = authenticator().verify(message("mx.ars.test; dmarc=pass header.from=evil.test"))
    assert not verdict.authenticated


def test_trusted_dkim_pass_with_aligned_parent_domain_authenticates() -> None:
    verdict = authenticator().verify(message("mx.ars.test; dkim=pass header.d=chu.test header.s=sel"))
    assert verdict.authenticated
    assert verdict.auth_domain == "chu.test"


def test_trusted_dkim_pass_identified_by_header_i_authenticates() -> None:
    verdict = authenticator().verify(message("mx.ars.test; dkim=pass header.i=@chu.test"))
    assert verdict.authenticated


@pytest.mark.parametrize(
    "value",
    [
        "mx.ars.test; dkim=pass header.d=evil.test",
        "mx.ars.test; dkim=pass header.d=test",  # a public suffix never aligns
        "mx.ars.test; dkim=fail header.d=chu.test",
        "mx.ars.test; dmarc=fail header.from=dsi.chu.test",
        "mx.ars.test; spf=pass smtp.mailfrom=dsi@dsi.chu.test",  # SPF says nothing about From
        "mx.ars.test; none",
    ],
)
def test_trusted_results_without_an_aligned_pass_do_not_authenticate(value: str) -> None:
    verdict = authenticator().verify(message(value))
    assert not verdict.authenticated


def test_results_from_an_untrusted_authserv_id_are_ignored() -> None:
    verdict = authenticator().verify(message("mx.evil.test; dmarc=pass header.from=dsi.chu.test"))
    assert not verdict.authenticated
    assert "no trusted Authentication-Results" in verdict.detail


def test_results_are_ignored_when_no_authserv_id_is_trusted() -> None:
    raw = message("mx.ars.test; dmarc=pass header.from=dsi.chu.test")
    assert not authenticator(trusted=()).verify(raw).authenticated


def test_trusted_header_below_the_topmost_trusted_one_is_ignored() -> None:
    # Our MX (top) found nothing; the "pass" below it was forged by the sender before it reached us.
    raw = message(
        "mx.ars.test; dkim=none; dmarc=none header.from=dsi.chu.test",
        "mx.ars.test; dmarc=pass header.from=dsi.chu.test",
    )
    verdict = authenticator().verify(raw)
    assert not verdict.authenticated
    assert "no aligned pass" in verdict.detail


def test_forgery_with_another_trusted_id_below_is_also_ignored() -> None:
    raw = message(
        "mx.ars.test; dmarc=fail header.from=dsi.chu.test",
        "filter.ars.test; dmarc=pass header.from=dsi.chu.test",
    )
    assert not authenticator().verify(raw).authenticated


def test_untrusted_headers_above_the_trusted_one_do_not_hide_it() -> None:
    raw = message(
        "imap.local; dkim=fail",
        "mx.ars.test; dmarc=pass header.from=dsi.chu.test",
        "mx.ars.test; dmarc=fail header.from=dsi.chu.test",
    )
    assert authenticator().verify(raw).authenticated


@pytest.mark.parametrize(
    "value",
    [
        "MX.ARS.TEST; dmarc=pass header.from=dsi.chu.test",
        "mx.ars.test 1; dmarc=pass header.from=dsi.chu.test",
        "(our MX) mx.ars.test; dmarc=pass header.from=DSI.CHU.TEST",
        "mx.ars.test;\r\n\tdkim=fail header.d=evil.test;\r\n\tdmarc=pass header.from=dsi.chu.test",
    ],
)
def test_authserv_id_and_domains_are_matched_tolerantly(value: str) -> None:
    assert authenticator().verify(message(value)).authenticated


@pytest.mark.parametrize(
    "value",
    [
        "mx.ars.test; dmarc=pass header.from=",
        "mx.ars.test; ;;; ===",
        "mx.ars.test; dmarc=pass header.from=dsi.chu.test (unterminated",
        "mx.ars.test",
        "",
        "mx.ars.test; dmarc=pass header.from=\x00\x01",
    ],
)
def test_garbled_trusted_results_do_not_authenticate_and_do_not_raise(value: str) -> None:
    verdict = authenticator().verify(message(value))
    assert not verdict.authenticated
    assert not verdict.detail.startswith("check failed")


def test_results_never_authenticate_an_ambiguous_from() -> None:
    raw = message("mx.ars.test; dmarc=pass header.from=dsi.chu.test", sender="dsi@dsi.chu.test, x@evil.test")
    assert not authenticator().verify(raw).authenticated


def test_our_own_dkim_check_comes_first() -> None:
    key = rsa_key("sel", "chu.test")
    raw = message("mx.ars.test; dmarc=pass header.from=dsi.chu.test")
    raw = DkimSigner("chu.test", [key.signing_key()]).sign(raw) + raw
    settings = AuthenticationSettings(trusted_authserv_ids=TRUSTED)
    verdict = Authenticator(settings, StaticResolver(zone(key))).verify(raw)
    assert verdict.authenticated
    assert verdict.method == "dkim"


# --- A-R only from the trusted path, and what it says was signed --------------------------


def test_forged_results_sent_straight_to_smtp_are_ignored() -> None:
    raw = message("mx.ars.test; dmarc=pass header.from=dsi.chu.test")
    plain = Authenticator(AuthenticationSettings(trusted_authserv_ids=TRUSTED), StaticResolver({}))
    verdict = plain.verify(raw)  # the default: not the trusted path
    assert not verdict.authenticated
    assert "not received through a trusted relay" in verdict.detail


def _settings(*relays: str) -> Settings:
    return Settings(intake=IntakeSettings(smtp=SmtpIntakeSettings(trusted_relays=relays)))


@pytest.mark.parametrize(
    ("source", "peer", "relays", "expected"),
    [
        ("imap", None, (), True),
        ("smtp", "192.0.2.10", (), False),
        ("smtp", "192.0.2.10", ("192.0.2.10",), True),
        ("smtp", "192.0.2.11", ("192.0.2.10",), False),
        ("smtp", "10.1.2.3", ("10.0.0.0/8",), True),
        ("smtp", "::ffff:10.1.2.3", ("10.0.0.0/8",), True),
        ("lmtp", "::1", ("::1",), True),
        ("smtp", None, ("192.0.2.10",), False),
        ("smtp", "not-an-ip", ("192.0.2.10",), False),
        ("cli", "192.0.2.10", ("192.0.2.10",), False),
    ],
)
def test_trusted_path(source: str, peer: str | None, relays: tuple[str, ...], expected: bool) -> None:
    assert arrived_via_trusted_path(_settings(*relays), source, peer) is expected


def test_dmarc_pass_alone_covers_nothing() -> None:
    verdict = authenticator().verify(message("mx.ars.test; dmarc=pass header.from=dsi.chu.test"))
    assert verdict.authenticated
    assert verdict.signed_headers == frozenset()


def _with_signature(raw: bytes, d: str, h: str, b: str) -> bytes:
    return f"DKIM-Signature: v=1; a=rsa-sha256; d={d}; s=sel; h={h}; bh=AAAA; b={b}\r\n".encode() + raw


def test_dkim_pass_covers_the_h_of_the_named_signature() -> None:
    raw = message("mx.ars.test; dkim=pass header.d=chu.test header.b=QmFy")
    raw = _with_signature(raw, "chu.test", "from:to:subject", "Rm9v")
    raw = _with_signature(raw, "chu.test", "from:subject:in-reply-to", "QmFyYmF6")
    raw = _with_signature(raw, "other.test", "from:references", "QmFy")
    verdict = authenticator().verify(raw)
    assert verdict.authenticated
    assert verdict.signed_headers == {"from", "subject", "in-reply-to"}
    assert verdict.signature_key is not None and verdict.signature_key.startswith("dkim:chu.test:")


def test_dkim_pass_without_header_b_covers_what_every_candidate_covers() -> None:
    raw = message("mx.ars.test; dkim=pass header.d=chu.test")
    raw = _with_signature(raw, "chu.test", "from:to:subject", "Rm9v")
    raw = _with_signature(raw, "chu.test", "from:subject:in-reply-to", "QmFy")
    verdict = authenticator().verify(raw)
    assert verdict.signed_headers == {"from", "subject"}
    assert verdict.signature_key is None


def test_dkim_pass_without_a_matching_signature_covers_nothing() -> None:
    verdict = authenticator().verify(message("mx.ars.test; dkim=pass header.d=chu.test"))
    assert verdict.authenticated
    assert verdict.signed_headers == frozenset()
