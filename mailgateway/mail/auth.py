"""Who sent this message, and is it proven? (DESIGN §8: a From header proves nothing.)

A sender is *authenticated* when, and only when, one of these holds:

1. **DKIM, checked here** (RFC 6376, RSA and ed25519 per RFC 8463, with dkimpy): a valid signature
   whose ``d=`` is the From domain or a parent of it (relaxed alignment, RFC 7489 §3.1.1, restricted
   to ``d=`` at or above the From domain as our policy). A ``d=`` that is a public suffix (``fr``,
   ``gouv.fr``, ``co.uk``) never aligns: nobody should be able to speak for a whole TLD.
2. **A trusted Authentication-Results header** (RFC 8601), from an ``authserv-id`` listed in
   ``[authentication] trusted_authserv_ids``, saying ``dmarc=pass`` with ``header.from`` = the From
   domain, or ``dkim=pass`` with an aligned ``header.d``.

   Only the *topmost* header carrying a trusted authserv-id counts. Header fields are prepended in
   transit (RFC 5322 §3.6.7 / RFC 5321 §4.4), so the topmost one was added last, by the MTA
   closest to us, which we trust. Anything below it was already in the message when that MTA
   received it — possibly written by the sender to impersonate our MTA (RFC 8601 §5 asks MTAs to
   remove such forgeries, but not all do). Headers from untrusted authserv-ids are ignored.

Never authenticated: no From, several From fields or several addresses in From (RFC 5322 §3.6.2
allows a Sender then, and which one is "the" author becomes ambiguous; DMARC, RFC 7489 §6.6.1,
rejects them too), an address two parsers disagree on.

Robustness: this runs on every inbound message, including hostile and broken ones (shared/corpus).
``verify`` never raises; whatever goes wrong yields ``authenticated=False`` with the reason in
``detail``. DNS goes only through the injected ``TxtResolver``; only signatures that could align
are looked up (an unrelated ``d=`` would make us query an attacker's DNS: a read receipt), and at
most ``max_signatures`` of them.
"""

from __future__ import annotations

import email.parser
import email.policy
import email.utils
import functools
import logging
import re
from dataclasses import dataclass

import authres
import dkim
from dkim.util import parse_tag_value
from publicsuffixlist import PublicSuffixList

from mailgateway.dns import DnsTemporaryError, TxtResolver
from mailgateway.mail.facts import SenderVerdict
from mailgateway.settings import AuthenticationSettings

__all__ = ["MAX_SIGNATURES", "Authenticator", "aligned", "from_address", "normalise_domain"]

log = logging.getLogger(__name__)

# Bounds the work an attacker can make us do with one message (each check may cost a DNS lookup).
MAX_SIGNATURES = 5
# DKIM-Signature fields looked at, at all (parsing is cheap, but not free).
MAX_SIGNATURE_FIELDS = 50
# Header block examined for From / Authentication-Results (the body is irrelevant here).
MAX_HEADER_BYTES = 1_000_000

_AUTHSERV_ID = re.compile(r"\s*(?:\([^)]*\)\s*)*([^\s;()]+)")


@functools.cache
def _public_suffixes() -> PublicSuffixList:
    # The list bundled with the package: no download, no network (DESIGN §8).
    return PublicSuffixList()


def normalise_domain(domain: str | bytes | None) -> str | None:
    """Lower-case A-label form without trailing dot, or None when it is not a usable host name."""
    if domain is None:
        return None
    text = domain.decode("utf-8", "replace") if isinstance(domain, bytes) else domain
    text = text.strip().rstrip(".").lower()
    if not text or text.startswith("[") or any(c.isspace() or c in '@<>()[];:,\\"' for c in text):
        return None
    if not text.isascii():
        try:
            text = text.encode("idna").decode("ascii")
        except UnicodeError:
            return None
    if any(not label or len(label) > 63 for label in text.split(".")):
        return None
    return text


def aligned(signing_domain: str | None, from_domain: str | None) -> bool:
    """``d=`` equals the From domain or is a parent of it, and is not a public suffix."""
    d = normalise_domain(signing_domain)
    f = normalise_domain(from_domain)
    if d is None or f is None or "." not in d:
        return False
    if _public_suffixes().is_public(d):
        return False
    return f == d or f.endswith("." + d)


# --- header access ---------------------------------------------------------------------------------


def _header_block(raw: bytes) -> tuple[bytes, bool]:
    """The header block, and whether it is complete (a huge one is cut and never trusted)."""
    head = raw[:MAX_HEADER_BYTES]
    ends = [i + len(sep) for sep in (b"\r\n\r\n", b"\n\n") if (i := head.find(sep)) >= 0]
    if ends:
        return head[: min(ends)], True
    return head, len(raw) <= MAX_HEADER_BYTES


def _unfold(value: bytes | str) -> str:
    text = value.decode("utf-8", "replace") if isinstance(value, bytes) else value
    return re.sub(r"\r?\n(?=[ \t])", "", text).strip()


def _headers(raw: bytes) -> tuple[list[tuple[str, str]], bool]:
    """(name, unfolded value) pairs, and whether the block parsed under dkimpy's strict rules.

    The strict split is the one dkimpy verifies, so the From we align against is the From that was
    signed. When it fails (junk lines), the stdlib's tolerant compat32 parser still gives an address
    to report, but nothing is authenticated from such a block.
    """
    block, complete = _header_block(raw)
    try:
        parsed, _body = dkim.rfc822_parse(block)
        return [(bytes(n).decode("ascii", "replace"), _unfold(v)) for n, v in parsed], complete
    except Exception:  # dkimpy raises MessageFormatError, but also IndexError on odd continuations
        message = email.parser.BytesHeaderParser(policy=email.policy.compat32).parsebytes(block)
        return [(str(n), _unfold(str(v))) for n, v in message.items()], False


def _parse_from(values: list[str]) -> tuple[str | None, str | None]:
    """One address from exactly one From field, when both stdlib parsers agree on its domain."""
    if len(values) != 1:
        return None, None
    value = values[0]
    loose = [addr for _name, addr in email.utils.getaddresses([value]) if addr]
    try:
        header = email.policy.default.header_factory("From", value)
        strict: list[str] | None = [a.addr_spec for a in header.addresses]
    except Exception:  # corpus crash classes 1 and 2: Group.local_part, CR/LF in a decoded word
        strict = None
    if len(loose) != 1 or (strict is not None and len(strict) != 1):
        return None, None
    address = strict[0] if strict is not None else loose[0]
    local, at, domain = address.rpartition("@")
    loose_domain = loose[0].rpartition("@")[2]
    normal = normalise_domain(domain)
    if not (local and at and normal) or normalise_domain(loose_domain) != normal:
        # "a@b.c <d@e.f>" and similar: parsers (and mail clients) disagree on who the author is.
        return None, None
    return f"{local}@{domain.lower()}", normal


def from_address(raw: bytes) -> tuple[str | None, str | None]:
    """(address, domain) of the single author in From, else (None, None); never raises."""
    try:
        headers, _strict = _headers(raw)
        return _parse_from([v for n, v in headers if n.lower() == "from"])
    except Exception:  # last resort: garbage in, "unknown sender" out
        return None, None


# --- verification ----------------------------------------------------------------------------------


@dataclass
class _Lookup:
    """dkimpy's ``dnsfunc`` over our resolver, remembering what happened for the detail text."""

    resolver: TxtResolver
    missing: bool = False
    temporary: bool = False

    def __call__(self, name: bytes | str, timeout: int = 5) -> bytes | None:
        text = name.decode("ascii", "replace") if isinstance(name, bytes) else name
        try:
            value = self.resolver.txt(text)
        except DnsTemporaryError as exc:
            self.temporary = True
            raise dkim.DnsTimeoutError(str(exc)) from exc
        if value is None:
            self.missing = True
            return None
        return value.encode("ascii", "replace")


class Authenticator:
    """Checks DKIM signatures and trusted Authentication-Results; pure apart from the resolver."""

    def __init__(
        self,
        settings: AuthenticationSettings,
        resolver: TxtResolver,
        *,
        max_signatures: int = MAX_SIGNATURES,
    ) -> None:
        self._trusted_ids = frozenset(i.strip().lower() for i in settings.trusted_authserv_ids if i.strip())
        self._resolver = resolver
        self._max_signatures = max_signatures

    def verify(self, raw: bytes) -> SenderVerdict:
        try:
            return self._verify(raw)
        except Exception as exc:  # untrusted input must never crash processing (DESIGN §8)
            log.warning("sender authentication failed unexpectedly", exc_info=True)
            address, domain = from_address(raw)
            detail = f"check failed: {type(exc).__name__}"
            return SenderVerdict(address=address, domain=domain, authenticated=False, detail=detail)

    def _verify(self, raw: bytes) -> SenderVerdict:
        headers, strict = _headers(raw)
        address, domain = _parse_from([v for n, v in headers if n.lower() == "from"])
        if domain is None:
            froms = sum(1 for n, _v in headers if n.lower() == "from")
            why = "no From header" if froms == 0 else "From must hold exactly one address"
            return SenderVerdict(address=address, domain=None, authenticated=False, detail=why)
        if not strict:
            why = "malformed header block"
            return SenderVerdict(address=address, domain=domain, authenticated=False, detail=why)
        details: list[str] = []
        auth_domain = self._dkim(raw, domain, details)
        method = "dkim"
        if auth_domain is None:
            auth_domain = self._authentication_results(headers, domain, details)
            method = "authentication-results"
        return SenderVerdict(
            address=address,
            domain=domain,
            authenticated=auth_domain is not None,
            method=method if auth_domain is not None else None,
            auth_domain=auth_domain,
            detail="; ".join(details),
        )

    def _dkim(self, raw: bytes, from_domain: str, details: list[str]) -> str | None:
        # Tags are read from the header block alone; the whole message (body canonicalisation) is
        # only parsed once a signature deserves a cryptographic check.
        block_headers, _ = dkim.rfc822_parse(_header_block(raw)[0])
        fields = [v for n, v in block_headers if n.lower() == b"dkim-signature"]
        checker: dkim.DKIM | None = None
        if not fields:
            details.append("dkim=none (no signature)")
            return None
        checked = 0
        for idx, value in enumerate(fields[:MAX_SIGNATURE_FIELDS]):
            try:
                tags = parse_tag_value(value)
            except Exception:
                details.append("dkim=permerror (unparsable signature)")
                continue
            d = bytes(tags.get(b"d", b"")).decode("ascii", "replace")
            s = bytes(tags.get(b"s", b"")).decode("ascii", "replace")
            label = f"d={d} s={s}"
            refusal = _refusal(tags, from_domain)
            if refusal:
                details.append(f"dkim=ignored {label} ({refusal})")
                continue
            if checked >= self._max_signatures:
                details.append(f"dkim=ignored {label} (more than {self._max_signatures} signatures)")
                continue
            checked += 1
            lookup = _Lookup(self._resolver)
            if checker is None:
                checker = dkim.DKIM(raw)  # same header split as above: idx designates the same field
            try:
                ok = bool(checker.verify(idx=idx, dnsfunc=lookup))
            except dkim.DKIMException as exc:
                details.append(f"dkim=fail {label} ({_short(exc)})")
                continue
            except Exception as exc:  # dkimpy on hostile tags: binascii.Error, ValueError, KeyError...
                details.append(f"dkim=permerror {label} (malformed signature: {type(exc).__name__})")
                continue
            if ok:
                details.append(f"dkim=pass {label} aligned")
                return normalise_domain(d)
            if lookup.temporary:
                details.append(f"dkim=temperror {label} (key lookup failed)")
            elif lookup.missing:
                details.append(f"dkim=permerror {label} (no key published)")
            else:
                details.append(f"dkim=fail {label} (signature does not verify)")
        return None

    def _authentication_results(
        self, headers: list[tuple[str, str]], from_domain: str, details: list[str]
    ) -> str | None:
        if not self._trusted_ids:
            return None
        for name, value in headers:  # top to bottom: the first trusted one is the closest MTA's
            if name.lower() != "authentication-results":
                continue
            match = _AUTHSERV_ID.match(value)
            if match is None or match.group(1).lower() not in self._trusted_ids:
                continue
            authserv_id = match.group(1).lower()
            return self._trusted_result(authserv_id, value, from_domain, details)
        details.append("no trusted Authentication-Results")
        return None

    def _trusted_result(self, authserv_id: str, value: str, from_domain: str, details: list[str]) -> str | None:
        try:
            parsed = authres.AuthenticationResultsHeader.parse_value(value)
        except Exception:  # authres.AuthResError, or worse on garbage
            details.append(f"Authentication-Results from {authserv_id} unparsable")
            return None
        for result in parsed.results:
            method = str(result.method).lower()
            if str(result.result).lower() != "pass":
                continue
            props = {(str(p.type).lower(), str(p.name).lower()): str(p.value) for p in result.properties}
            if method == "dmarc":
                header_from = normalise_domain(props.get(("header", "from")))
                if header_from is not None and header_from == from_domain:
                    details.append(f"Authentication-Results {authserv_id}: dmarc=pass header.from={header_from}")
                    return header_from
            elif method == "dkim":
                signer = props.get(("header", "d")) or props.get(("header", "i"), "").rpartition("@")[2]
                if aligned(signer, from_domain):
                    details.append(f"Authentication-Results {authserv_id}: dkim=pass header.d={signer} aligned")
                    return normalise_domain(signer)
        details.append(f"Authentication-Results from {authserv_id}: no aligned pass")
        return None


def _refusal(tags: dict[bytes, bytes], from_domain: str) -> str | None:
    """Why a signature cannot authenticate the From domain, before spending a DNS lookup on it."""
    d = tags.get(b"d")
    if d is None or tags.get(b"s") is None:
        return "missing d= or s="
    if not aligned(bytes(d).decode("ascii", "replace"), from_domain):
        return f"not aligned with {from_domain}"
    algorithm = bytes(tags.get(b"a", b"")).lower()
    if algorithm == b"rsa-sha1":
        # RFC 8301 §3.1: verifiers MUST NOT consider rsa-sha1 signatures valid.
        return "rsa-sha1 refused"
    if b"l" in tags:
        # RFC 6376 §8.2: with l= anyone may append content under the signature.
        return "l= body length limit refused"
    signed = [h.strip().lower() for h in bytes(tags.get(b"h", b"")).split(b":")]
    if b"from" not in signed:
        # RFC 6376 §6.1.1: a signature not covering From MUST be ignored.
        return "From not signed"
    return None


def _short(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return text[:120]
