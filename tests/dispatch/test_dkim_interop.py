"""Our signatures verify with independent implementations: Mail::DKIM (Perl) and OpenDKIM (C).

Debian 12's Mail::DKIM has no ed25519 (it reports such signatures "invalid"), so ed25519 is
cross-checked with OpenDKIM only (recipe §5). The tools are installed by scripts/test; a missing
tool skips locally and fails under CI=true.
"""

from __future__ import annotations

import pytest

from mailgateway.dispatch.dkim import DkimSigner
from tests.support.dkim import (
    ed25519_key,
    mail_dkim_verify,
    opendkim_verify,
    rsa_key,
    sample_message,
    zone,
)


def signed_message(*keys_fmt: tuple[str, str]) -> bytes:
    keys = {"rsa": rsa_key(), "ed": ed25519_key()}
    signer = DkimSigner("ars.test", [keys[name].signing_key(fmt) for name, fmt in keys_fmt])
    message = sample_message(extra_headers="Cc: rssi@chu.test\r\nIn-Reply-To: <x@chu.test>\r\n")
    return signer.sign(message) + message


def records() -> dict[str, str]:
    return zone(rsa_key(), ed25519_key())


@pytest.mark.parametrize("fmt", ["pem", "pkcs8"])
def test_mail_dkim_verifies_our_rsa_signature(fmt: str) -> None:
    assert mail_dkim_verify(signed_message(("rsa", fmt)), records()) == [
        ("pass", "ars.test", "rsa", "rsa-sha256")
    ]


def test_mail_dkim_rejects_our_rsa_signature_on_a_tampered_body() -> None:
    tampered = signed_message(("rsa", "pem")).replace(b"bien", b"mal")
    assert [v[0] for v in mail_dkim_verify(tampered, records())] == ["fail"]


def test_opendkim_verifies_our_dual_signature() -> None:
    verdicts = opendkim_verify(signed_message(("rsa", "pem"), ("ed", "dkimpy")), records())
    assert sorted(verdicts) == [
        ("pass", "ars.test", "ed", "ed25519-sha256"),
        ("pass", "ars.test", "rsa", "rsa-sha256"),
    ]


@pytest.mark.parametrize("name", ["rsa", "ed"])
def test_opendkim_rejects_our_signature_on_a_tampered_body(name: str) -> None:
    tampered = signed_message((name, "pem")).replace(b"bien", b"mal")
    assert [v[0] for v in opendkim_verify(tampered, records())] == ["fail"]


def test_opendkim_rejects_our_signature_with_an_added_from() -> None:
    forged = signed_message(("rsa", "pem")).replace(
        b"From: Cellule", b"From: x@evil.test\r\nFrom: Cellule", 1
    )
    assert [v[0] for v in opendkim_verify(forged, records())] != ["pass"]
