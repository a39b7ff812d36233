"""What the survivors of mutation testing on ``mail/auth.py`` showed untested (issue 21, docs/mutation.md):
a signature dkimpy crashes on, a ``d=`` written with a trailing dot, the replay key of a signature
without ``c=`` or with ``h=`` written without blanks, the DNS budget inside dkimpy's lookups, a
``header.b`` the relay wrote with blanks. Each asserts what staff or the replay guard see."""

from __future__ import annotations

import base64

import dkim
import pytest
from dkim.util import parse_tag_value

import mailgateway.mail.auth as auth
from mailgateway.dns import StaticResolver
from mailgateway.mail.auth import Authenticator
from mailgateway.settings import AuthenticationSettings
from tests.mail.test_auth_signatures import ar_verify, message, relayed, sig, signed
from tests.support.casemail import staff_key
from tests.support.dkim import rsa_key


def test_a_signature_dkimpy_crashes_on_is_named_and_the_next_one_still_checked() -> None:
    # The key published for selector "bad" says k=ed25519 under an RSA signature: dkimpy raises a
    # ValueError (not a DKIMException). That signature is reported, the valid one below verifies.
    bad = rsa_key("bad", "ars.test")
    records = {staff_key().name: staff_key().txt,
               bad.name: "v=DKIM1; k=ed25519; p=" + base64.b64encode(b"1" * 32).decode()}
    raw = signed(message(), staff_key(), bad)
    verdict = Authenticator(AuthenticationSettings(), StaticResolver(records)).verify(raw)
    assert verdict.authenticated and verdict.auth_domain == "ars.test"
    assert verdict.detail == ("dkim=permerror d=ars.test s=bad (malformed signature: ValueError); "
                              "dkim=pass d=ars.test s=rsa aligned")


def test_a_signing_domain_with_a_trailing_dot_authenticates_as_the_domain() -> None:
    key = staff_key()
    raw = message()
    raw = dkim.sign(raw, b"rsa", b"ars.test.", key.dkimpy_key, include_headers=[b"from", b"to", b"subject"]) + raw
    verdict = Authenticator(AuthenticationSettings(), StaticResolver({key.name: key.txt})).verify(raw)
    assert verdict.authenticated
    assert verdict.auth_domain == "ars.test"  # the From's domain as written by us, never "ars.test."
    assert verdict.detail == "dkim=pass d=ars.test. s=rsa aligned"
    assert verdict.signature_key is not None and verdict.signature_key.startswith("dkim:ars.test:")


def test_a_trusted_result_for_a_domain_with_a_trailing_dot_names_the_domain() -> None:
    verdict = ar_verify(relayed(sig("from:subject"), ar="mx.ars.test; dkim=pass header.d=ars.test."))
    assert verdict.authenticated and verdict.auth_domain == "ars.test"
    assert verdict.signed_headers == {"from", "subject"}


def test_a_header_b_written_with_blanks_still_picks_its_signature() -> None:
    raw = relayed(sig("from", b="zzzz"), sig("from:subject", b="abcdef"),
                  ar='mx.ars.test; dkim=pass header.d=ars.test header.b="ab cd"')
    verdict = ar_verify(raw)
    assert verdict.signed_headers == {"from", "subject"}
    assert verdict.signature_key == auth.signature_key("ars.test", {b"b": b"abcdef"})


# --- the replay key of what a signature signs (RFC 6376 §3.7) ---------------------------------------


def _headers(raw: bytes) -> list[tuple[bytes, bytes]]:
    parsed, _body = dkim.rfc822_parse(raw)
    return [(bytes(n), bytes(v)) for n, v in parsed]


SIGNATURE = b"DKIM-Signature: v=1; a=rsa-sha256; d=ars.test; s=rsa; h=from:subject; bh=eA==; b=eA==\r\n"


def test_a_signature_without_c_is_keyed_as_simple_simple() -> None:
    # RFC 6376 §3.5: c= is optional and defaults to simple/simple.
    headers = _headers(SIGNATURE + message())
    tags = parse_tag_value(headers[0][1])
    assert b"c" not in tags
    key = auth.signed_content_key("ars.test", headers, 0, tags)
    assert key is not None and key.startswith("dkim:ars.test:")
    assert key == auth.signed_content_key("ars.test", headers, 0, {**tags, b"c": b"simple/simple"})
    assert key != auth.signed_content_key("ars.test", headers, 0, {**tags, b"c": b"relaxed/relaxed"})


@pytest.mark.parametrize("h", [b"from:subject", b"from : subject", b"From:Subject"])
def test_the_key_covers_the_headers_h_names_however_written(h: bytes) -> None:
    raw = SIGNATURE.replace(b"h=from:subject", b"h=" + h) + message()
    headers = _headers(raw)
    tags = parse_tag_value(headers[0][1])
    other = _headers(raw.replace(b"Subject: Re: dossier", b"Subject: Re: autre dossier"))
    assert auth.signed_content_key("ars.test", headers, 0, tags) != auth.signed_content_key(
        "ars.test", other, 0, tags)
    unsigned = _headers(raw.replace(b"To: ssi-ara@ars.test", b"To: autre@ars.test"))
    assert auth.signed_content_key("ars.test", headers, 0, tags) == auth.signed_content_key(
        "ars.test", unsigned, 0, tags)


# --- the DNS budget holds inside dkimpy's lookups too -------------------------------------------------


class _Counting(StaticResolver):
    def __init__(self, records: dict[str, str]) -> None:
        super().__init__(records)
        self.asked: list[str] = []

    def txt(self, name: str) -> str | None:
        self.asked.append(name)
        return super().txt(name)


def test_a_lookup_past_the_budget_is_refused_without_asking_dns() -> None:
    resolver = _Counting({"a._domainkey.ars.test": "v=DKIM1; p=x"})
    budget = auth._DnsBudget(1)
    first = auth._Lookup(resolver, budget)
    assert first(b"a._domainkey.ars.test") == b"v=DKIM1; p=x"
    assert (first.skipped, budget.lookups) == (False, 1)
    second = auth._Lookup(resolver, budget)
    assert second("A._domainkey.ars.test.") == b"v=DKIM1; p=x"  # memo: no budget, no query
    with pytest.raises(dkim.DnsTimeoutError):
        second("b._domainkey.ars.test")
    assert second.skipped and not second.temporary and not second.missing
    assert resolver.asked == ["a._domainkey.ars.test"]


@pytest.mark.parametrize(("text", "expected"), [
    ("CHU.TEX", "chu.tex"),  # trailing dots are stripped, nothing else
    ("chu.test.", "chu.test"),
    (b"\xff.test", None),  # not UTF-8: replaced, then not a host name — never an exception
    (b"\xc3\xa4rs.test", "xn--rs-uia.test"),  # UTF-8 bytes: the A-label
    ("[chu.test]", None),
])
def test_normalise_domain_edges(text: str | bytes, expected: str | None) -> None:
    assert auth.normalise_domain(text) == expected


# --- what staff and the logs read -------------------------------------------------------------------


def test_an_ar_header_on_mail_that_did_not_come_through_a_trusted_relay_is_said_ignored() -> None:
    raw = relayed(ar="mx.ars.test; dkim=pass header.d=ars.test")
    settings = AuthenticationSettings(trusted_authserv_ids=("mx.ars.test",))
    verdict = Authenticator(settings, StaticResolver({})).verify(raw, trusted_path=False)
    assert verdict.authenticated is False
    assert verdict.detail == ("dkim=none (no signature); "
                              "Authentication-Results ignored (not received through a trusted relay)")


def test_an_unsigned_message_is_unauthenticated_as_false_not_unknown() -> None:
    verdict = Authenticator(AuthenticationSettings(), StaticResolver({})).verify(message())
    assert verdict.authenticated is False  # parse --json writes false, never null
    assert verdict.to_json()["authenticated"] is False


@pytest.mark.parametrize(("raw", "detail"), [
    (b"To: a@ars.test\r\nSubject: x\r\n\r\nbody\r\n", "no From header"),
    (b"From: a@ars.test, b@ars.test\r\nSubject: x\r\n\r\nbody\r\n", "From must hold exactly one address"),
])
def test_without_a_single_author_nobody_is_named(raw: bytes, detail: str) -> None:
    verdict = Authenticator(AuthenticationSettings(), StaticResolver({})).verify(raw)
    assert (verdict.address, verdict.domain, verdict.authenticated, verdict.detail) == (None, None, False, detail)


def test_an_unexpected_failure_is_logged_with_its_traceback(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def explode(raw: bytes, trusted_path: bool) -> object:
        raise RuntimeError("bug")

    authenticator_ = Authenticator(AuthenticationSettings(), StaticResolver({}))
    monkeypatch.setattr(authenticator_, "_verify", explode)
    with caplog.at_level("WARNING", logger="mailgateway.mail.auth"):
        authenticator_.verify(message())
    [record] = [r for r in caplog.records if r.name == "mailgateway.mail.auth"]
    assert record.levelname == "WARNING"
    assert record.getMessage() == "sender authentication failed unexpectedly"
    assert record.exc_info is not None and isinstance(record.exc_info[1], RuntimeError)


# --- header values as dkimpy splits them --------------------------------------------------------------


def test_a_header_value_that_is_not_utf8_does_not_spoil_the_block() -> None:
    # An 8-bit Latin-1 byte in a header (old clients still write them): read with replacement
    # characters, the block stays well-formed and the signature verifies.
    raw = message().replace(b"Subject: Re: dossier", b"Subject: Re: r\xe9union")
    verdict = authenticator_with_staff().verify(signed(raw, staff_key()))
    assert verdict.authenticated, verdict.detail


def test_folded_header_values_are_unfolded_before_they_are_read() -> None:
    raw = relayed(sig("from:subject"), ar="mx.ars.test;\r\n dkim=pass\r\n\theader.d=ars.test")
    verdict = ar_verify(raw)
    assert verdict.authenticated and verdict.signed_headers == {"from", "subject"}
    assert verdict.detail.endswith("Authentication-Results mx.ars.test: dkim=pass header.d=ars.test aligned")
    folded = message().replace(b"From: agent@ars.test", b"From: Agent\r\n <agent@ars.test>")
    verdict = authenticator_with_staff().verify(signed(folded, staff_key()))
    assert verdict.authenticated and verdict.address == "agent@ars.test"


def authenticator_with_staff() -> Authenticator:
    return Authenticator(AuthenticationSettings(), StaticResolver({staff_key().name: staff_key().txt}))


# --- the header block handed to dkimpy: MAX_HEADER_BYTES (256 KiB) and not one byte more -------------------


def _block_of(size: int) -> bytes:
    """A signed message whose header block (up to and including the empty line) is ``size`` bytes:
    an unsigned X-Pad field below the signature, folded in 900-byte lines, takes the slack."""
    raw = signed(message(), staff_key())
    head, _, body = raw.partition(b"\r\n\r\n")
    pad = size - len(head) - len(b"\r\nX-Pad: ") - len(b"\r\n\r\n")
    content = b""
    while len(content) < pad:
        room = pad - len(content)
        if not content:
            content = b"x" * min(900, room)
        elif room >= 4:
            content += b"\r\n " + b"x" * min(900, room - 3)
        else:
            content += b"x" * room  # the last line a few bytes longer
    block = head + b"\r\nX-Pad: " + content + b"\r\n\r\n"
    assert len(block) == size, (len(block), size)
    return block + body


def test_a_header_block_of_exactly_the_limit_is_read_whole() -> None:
    from mailgateway.wire import MAX_HEADER_BYTES

    assert MAX_HEADER_BYTES == 256 * 1024
    verdict = authenticator_with_staff().verify(_block_of(MAX_HEADER_BYTES))
    assert verdict.authenticated, verdict.detail


def test_a_header_block_one_byte_over_the_limit_is_never_trusted() -> None:
    from mailgateway.wire import MAX_HEADER_BYTES

    verdict = authenticator_with_staff().verify(_block_of(MAX_HEADER_BYTES + 1))
    assert verdict.authenticated is False
    assert verdict.address == "agent@ars.test"
    # The wire check lets it through (its empty line ends at byte 256 KiB + 1); dkimpy is never handed it.
    assert verdict.detail == "malformed header block"


def test_a_from_only_the_lenient_parser_reads_names_nobody() -> None:
    # "agent@ars.test." : the stdlib's strict parser finds no valid address in it; the lenient one
    # would read agent@ars.test. (and normalise its domain to ars.test): both must agree.
    raw = signed(message(sender="agent@ars.test."), staff_key())
    verdict = authenticator_with_staff().verify(raw)
    assert (verdict.address, verdict.authenticated, verdict.detail) == (
        None, False, "From must hold exactly one address")


def test_the_domain_is_after_the_last_at_sign() -> None:
    # RFC 5322 §3.4.1: a quoted local part may hold "@"; the domain is what follows the last one.
    assert auth.from_address(b'From: "a@b"@ars.test\r\nTo: x@y.test\r\n\r\nbody') == ('"a@b"@ars.test', "ars.test")
    assert auth.from_address(b'From: Agent <"a@b"@ars.test>\r\n\r\nbody') == ('"a@b"@ars.test', "ars.test")


def _key_of_every_field(domain: str, headers: list[tuple[bytes, bytes]], idx: int, tags: dict[bytes, bytes]) -> str:
    """The replay key as computed before issue 19's shortcut: every field canonicalised."""
    import hashlib

    from dkim.canonicalization import CanonicalizationPolicy

    signatures = [(n, v) for n, v in headers if n.lower() == b"dkim-signature"]
    policy = CanonicalizationPolicy.from_c_value(bytes(tags.get(b"c", b"simple/simple")))
    include = [n.strip().lower() for n in bytes(tags[b"h"]).split(b":") if n.strip()]
    hasher = hashlib.sha256()
    dkim.hash_headers(hasher, policy, policy.canonicalize_headers(headers), include, signatures[idx], tags)
    return f"dkim:{domain}:{hasher.hexdigest()}"


@pytest.mark.parametrize("c", [b"simple/simple", b"relaxed/relaxed", b"relaxed/simple", b"simple/relaxed"])
@pytest.mark.parametrize("h", [b"from:subject:to", b"from:from:subject:date", b"FROM : Subject", b"subject:x-absent"])
def test_the_key_from_the_selectable_fields_is_the_key_from_every_field(c: bytes, h: bytes) -> None:
    # Fields named with a trailing blank ("From :"), in upper case, twice, folded, or not named at
    # all: the key is the one every field canonicalised gave.
    fields = (b"Received: from a by b;\r\n\tFri, 27 Nov 2026 09:00:00 +0100\r\n"
              b"From : rssi@clinique.test\r\nFROM: autre@clinique.test\r\nSubject:  Incident\r\n\tsuite \r\n"
              b"To: ssi-ara@ars.test\r\nDate: Fri, 27 Nov 2026 09:00:00 +0100\r\nX-Other: y\r\n\r\nCorps\r\n")
    raw = (b"DKIM-Signature: v=1; a=rsa-sha256; c=" + c + b"; d=ars.test; s=rsa; h=" + h
           + b"; bh=eA==; b=eA==\r\n" + fields)
    headers = _headers(raw)
    tags = parse_tag_value(headers[0][1])
    assert auth.signed_content_key("ars.test", headers, 0, tags) == _key_of_every_field("ars.test", headers, 0, tags)
