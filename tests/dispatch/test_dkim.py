"""DkimSigner: dkimpy-identical signatures with OpenSSL RSA, ed25519, key formats, settings, errors."""

from __future__ import annotations

import re
import shutil
import subprocess
import unittest.mock
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import dkim
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from dkim.util import parse_tag_value

from mailgateway.dispatch.dkim import OVERSIGNED_HEADERS, DkimKey, DkimSigner
from mailgateway.errors import ConfigError, PolicyRefusal
from mailgateway.settings import DkimKeySettings, DkimSettings
from tests.support import unavailable
from tests.support.dkim import dkimpy_verify, ed25519_key, rsa_key, sample_message, zone

T0 = 1_795_000_000


def dual_signer() -> DkimSigner:
    return DkimSigner("ars.test", [rsa_key().signing_key(), ed25519_key().signing_key()], clock=lambda: T0)


def signatures(header_block: bytes) -> list[dict[bytes, bytes]]:
    message = dkim.DKIM(header_block + b"\r\n")
    return [parse_tag_value(v) for n, v in message.headers if n.lower() == b"dkim-signature"]


def test_dual_signature_verifies_with_dkimpy() -> None:
    message = sample_message()
    signed = dual_signer().sign(message) + message
    records = zone(rsa_key(), ed25519_key())
    assert dkimpy_verify(signed, records, idx=0)
    assert dkimpy_verify(signed, records, idx=1)
    assert [s[b"a"] for s in signatures(dual_signer().sign(message))] == [b"rsa-sha256", b"ed25519-sha256"]


def test_output_is_byte_identical_to_dkimpy_sign() -> None:
    message = sample_message()
    headers = [b"from", b"to", b"subject", b"date", b"message-id", b"mime-version", b"content-type"]
    headers += [b"content-transfer-encoding", b"auto-submitted", *OVERSIGNED_HEADERS]
    with unittest.mock.patch("time.time", return_value=T0):
        expected = b"".join(
            dkim.sign(
                message,
                key.selector.encode(),
                b"ars.test",
                key.dkimpy_key,
                signature_algorithm=key.algorithm.encode(),
                canonicalize=(b"relaxed", b"relaxed"),
                include_headers=headers,
            )
            for key in (rsa_key(), ed25519_key())
        )
    assert dual_signer().sign(message) == expected


def test_signature_is_crlf_terminated_header_lines() -> None:
    signed = dual_signer().sign(sample_message())
    assert signed.startswith(b"DKIM-Signature: ")
    assert signed.endswith(b"\r\n")
    assert b"\n" not in signed.replace(b"\r\n", b"")
    assert signed.count(b"DKIM-Signature: ") == 2


def test_signed_headers_present_ones_in_order_with_steering_fields_oversigned() -> None:
    message = sample_message(extra_headers="Cc: rssi@chu.test\r\nReply-To: ssi-ara@ars.test\r\nX-Other: 1\r\n")
    (sig,) = signatures(DkimSigner("ars.test", [rsa_key().signing_key()]).sign(message))
    signed = [h.strip() for h in sig[b"h"].split(b":")]
    assert signed == [
        b"from", b"to", b"subject", b"date", b"message-id", b"mime-version", b"content-type",
        b"content-transfer-encoding", b"auto-submitted", b"cc", b"reply-to",
        b"from", b"to", b"cc", b"reply-to", b"subject", b"date", b"message-id", b"in-reply-to", b"references",
    ]  # fmt: skip
    assert sig[b"c"] == b"relaxed/relaxed"
    assert sig[b"d"] == b"ars.test"


@pytest.mark.parametrize("header", ["Subject: #clore", "In-Reply-To: <other@ars.test>", "Cc: victim@evil.test"])
def test_added_steering_header_breaks_the_signature(header: str) -> None:
    message = sample_message()
    signed = DkimSigner("ars.test", [rsa_key().signing_key()]).sign(message) + message
    assert dkimpy_verify(signed, zone(rsa_key()))
    forged = header.encode() + b"\r\n" + signed
    assert not dkimpy_verify(forged, zone(rsa_key()))


def test_added_second_from_breaks_the_signature() -> None:
    message = sample_message()
    signed = DkimSigner("ars.test", [rsa_key().signing_key()]).sign(message) + message
    forged = signed.replace(b"From: Cellule", b"From: attacker@evil.test\r\nFrom: Cellule", 1)
    assert not dkimpy_verify(forged, zone(rsa_key()))


@pytest.mark.parametrize("algorithm", ["rsa", "ed25519"])
def test_tampered_body_fails_verification(algorithm: str) -> None:
    key = rsa_key() if algorithm == "rsa" else ed25519_key()
    message = sample_message()
    signed = DkimSigner("ars.test", [key.signing_key()]).sign(message) + message
    assert dkimpy_verify(signed, zone(key))
    with pytest.raises(dkim.ValidationError, match="body hash mismatch"):
        dkimpy_verify(signed.replace(b"bien", b"mal"), zone(key))


def test_tampered_subject_fails_verification() -> None:
    message = sample_message(subject="Accusé de réception")
    signed = dual_signer().sign(message) + message
    tampered = signed.replace(b"Subject: =?utf-8?", b"Subject: =?UTF-8?", 1)
    assert tampered != signed
    assert not dkimpy_verify(tampered, zone(rsa_key(), ed25519_key()), idx=0)


@pytest.mark.parametrize("fmt", ["pem", "pkcs8"])
def test_rsa_key_loads_as_pkcs1_or_pkcs8(fmt: str) -> None:
    signer = DkimSigner("ars.test", [rsa_key().signing_key(fmt)])
    message = sample_message()
    assert dkimpy_verify(signer.sign(message) + message, zone(rsa_key()))


@pytest.mark.parametrize("fmt", ["pem", "dkimpy"])
def test_ed25519_key_loads_as_pkcs8_pem_or_dkimpy_seed(fmt: str) -> None:
    signer = DkimSigner("ars.test", [ed25519_key().signing_key(fmt)])
    message = sample_message()
    assert dkimpy_verify(signer.sign(message) + message, zone(ed25519_key()))


def test_dns_record_is_the_published_key() -> None:
    signer = DkimSigner("ars.test", [rsa_key().signing_key(), ed25519_key().signing_key("dkimpy")])
    assert signer.dns_record("rsa") == rsa_key().txt
    assert signer.dns_record("ed") == ed25519_key().txt
    assert signer.dns_record("ed").startswith("v=DKIM1; k=ed25519; p=")
    with pytest.raises(ConfigError):
        signer.dns_record("unknown")
    assert signer.selectors == ("rsa", "ed")


def test_zone_line_splits_long_records_into_strings_of_255_bytes() -> None:
    signer = DkimSigner("ars.test", [rsa_key().signing_key()])
    line = signer.zone_line("rsa")
    assert line.startswith('rsa._domainkey.ars.test. IN TXT ( "v=DKIM1; k=rsa; p=')
    strings = re.findall(r'"([^"]*)"', line)
    assert len(strings) == 2 and all(len(s) <= 255 for s in strings)
    assert "".join(strings) == rsa_key().txt


def test_from_settings_reads_key_files(tmp_path: Path) -> None:
    (tmp_path / "rsa.pem").write_bytes(rsa_key().pkcs8_pem)
    (tmp_path / "ed.key").write_bytes(ed25519_key().dkimpy_key + b"\n")
    settings = DkimSettings(
        domain="ars.test",
        keys=(
            DkimKeySettings("rsa", "rsa-sha256", str(tmp_path / "rsa.pem")),
            DkimKeySettings("ed", "ed25519-sha256", str(tmp_path / "ed.key")),
        ),
    )
    signer = DkimSigner.from_settings(settings)
    assert signer is not None
    message = sample_message()
    signed = signer.sign(message) + message
    assert dkimpy_verify(signed, zone(rsa_key(), ed25519_key()), idx=0)
    assert dkimpy_verify(signed, zone(rsa_key(), ed25519_key()), idx=1)


def test_from_settings_without_dkim_is_none() -> None:
    assert DkimSigner.from_settings(None) is None


def test_from_settings_reports_unreadable_key_with_its_path(tmp_path: Path) -> None:
    settings = DkimSettings("ars.test", (DkimKeySettings("s", "rsa-sha256", str(tmp_path / "absent.pem")),))
    with pytest.raises(ConfigError) as info:
        DkimSigner.from_settings(settings)
    assert info.value.problems[0][0] == "dkim.keys[0].private_key_file"


def _pem(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


@pytest.mark.parametrize(
    ("key", "reason"),
    [
        (DkimKey("s", "rsa-sha256", b"not a key"), "cannot load PEM"),
        (DkimKey("s", "rsa-sha1", rsa_key().pem), "algorithm"),
        (DkimKey("s", "rsa-sha256", ed25519_key().pem), "RSA private key"),
        (DkimKey("s", "ed25519-sha256", rsa_key().pem), "Ed25519"),
        (DkimKey("s", "ed25519-sha256", b"c2hvcnQ="), "32 bytes"),
        (DkimKey("s", "ed25519-sha256", b"!!!"), "neither PEM nor base64"),
        (DkimKey("bad selector", "rsa-sha256", rsa_key().pem), "selector"),
        (DkimKey("s", "rsa-sha256", _pem(ec.generate_private_key(ec.SECP256R1()))), "RSA private key"),
    ],
)
def test_unusable_keys_are_config_errors(key: DkimKey, reason: str) -> None:
    with pytest.raises(ConfigError, match=reason) as info:
        DkimSigner("ars.test", [key])
    assert info.value.problems[0][0] == "dkim.keys[0]"


def test_short_rsa_keys_are_refused() -> None:
    floor = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    DkimSigner("ars.test", [DkimKey("s", "rsa-sha256", _pem(floor))])
    # cryptography refuses to generate keys under 1024 bits; OpenSSL's command line still can.
    if shutil.which("openssl") is None:
        unavailable("openssl command line missing")
    weak = subprocess.run(["openssl", "genrsa", "768"], capture_output=True, check=True).stdout
    with pytest.raises(ConfigError, match="RFC 8301"):
        DkimSigner("ars.test", [DkimKey("s", "rsa-sha256", weak)])


@pytest.mark.parametrize(
    "message",
    [
        b"To: a@b.test\r\nSubject: no from\r\n\r\nbody\r\n",
        b"From: a@ars.test\r\nFrom: b@ars.test\r\n\r\nbody\r\n",
        b"From: a@ars.test\r\nthis line is not a header\r\n\r\nbody\r\n",
    ],
)
def test_unsignable_messages_are_refused(message: bytes) -> None:
    with pytest.raises(PolicyRefusal):
        dual_signer().sign(message)


def test_lf_only_message_still_verifies() -> None:
    message = sample_message().replace(b"\r\n", b"\n")
    signed = dual_signer().sign(message) + message
    assert dkimpy_verify(signed, zone(rsa_key(), ed25519_key()))


def test_signer_is_safe_to_share_between_threads() -> None:
    signer = dual_signer()
    messages = [sample_message(to=f"dsi{i}@chu.test", body=f"Message {i}\r\n") for i in range(64)]
    with ThreadPoolExecutor(max_workers=8) as pool:
        signed = list(pool.map(lambda m: signer.sign(m) + m, messages))
    records = zone(rsa_key(), ed25519_key())
    assert all(dkimpy_verify(s, records, 0) and dkimpy_verify(s, records, 1) for s in signed)
    assert signed[0] == signer.sign(messages[0]) + messages[0]  # deterministic for a fixed t=
