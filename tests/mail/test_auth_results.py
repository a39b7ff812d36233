"""Authentication-Results (RFC 8601): trusted only from our authserv-ids, and only the topmost one."""

from __future__ import annotations

import pytest

from mailgateway.dispatch.dkim import DkimSigner
from mailgateway.dns import StaticResolver
from mailgateway.mail.auth import Authenticator
from mailgateway.settings import AuthenticationSettings
from tests.support.dkim import rsa_key, zone

TRUSTED = ("mx.ars.test", "filter.ars.test")


def authenticator(trusted: tuple[str, ...] = TRUSTED) -> Authenticator:
    return Authenticator(AuthenticationSettings(trusted_authserv_ids=trusted), StaticResolver({}))


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
