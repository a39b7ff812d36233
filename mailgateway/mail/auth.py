"""Who sent this message, and is it proven? (docs/guarantees.md: a From header proves nothing.)

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

   And only for mail that came through the trusted path (``verify(..., trusted_path=True)``, see
   ``arrived_via_trusted_path``): the IMAP mailbox, fed by the site's MTA, or SMTP from one of
   ``[intake.smtp] trusted_relays``. Sent straight to our SMTP listener, an A-R header was written
   by the sender, whatever authserv-id it claims.

Never authenticated: a header block that DKIM and analysis could read differently
(``mailgateway.wire.header_block_problem``: bare CR, duplicate single-instance fields, junk lines,
over the size bounds), no From, several From fields or several addresses in From (RFC 5322 §3.6.2
allows a Sender then, and which one is "the" author becomes ambiguous; DMARC, RFC 7489 §6.6.1,
rejects them too), an address two parsers disagree on.

What was signed: ``SenderVerdict.signed_headers`` lists the names in the accepted signature's
``h=`` (for an A-R pass, the ``h=`` of the DKIM-Signature it names, read without crypto), so that
analysis acts on Subject / In-Reply-To / References only when they are covered (RFC 6376 §8.15);
``signature_key`` identifies that signature for the replay guard.

Robustness: this runs on every inbound message, including hostile and broken ones (shared/corpus).
``verify`` never raises; whatever goes wrong yields ``authenticated=False`` with the reason in
``detail``. DNS goes only through the injected ``TxtResolver``; only signatures that could align
are looked up (an unrelated ``d=`` would make us query an attacker's DNS: a read receipt), and at
most ``max_signatures`` of them.
"""

from __future__ import annotations

import base64
import binascii
import email.parser
import email.policy
import email.utils
import functools
import hashlib
import ipaddress
import logging
import re
from dataclasses import dataclass, field, replace

import authres
import dkim
from dkim.canonicalization import CanonicalizationPolicy
from dkim.util import parse_tag_value
from publicsuffixlist import PublicSuffixList

from mailgateway.dns import DnsTemporaryError, TxtResolver, build_resolver, normalise_name
from mailgateway.mail import dkim_canon
from mailgateway.mail.facts import SenderVerdict
from mailgateway.mail.headers import PLAIN_DOMAIN, PLAIN_LOCAL, PLAIN_NAME
from mailgateway.settings import AuthenticationSettings, Settings
from mailgateway.wire import (
    MAX_HEADER_BYTES,
    MAX_SIGNATURE_FIELDS,
    MAX_SIGNED_NAMES,
    canonical,
    header_block,
    header_block_refusal,
)

# dkimpy's relaxed body canonicalisation is quadratic on a long run of blanks (80 KB: 20 s of CPU
# in the analysis worker per message): verification uses the linear one, same bytes (dkim_canon).
dkim_canon.install()

__all__ = [
    "MAX_KEY_LOOKUPS",
    "MAX_SIGNATURES",
    "Authenticator",
    "aligned",
    "arrived_via_trusted_path",
    "from_address",
    "normalise_domain",
    "signature_key",
    "signed_names",
]

log = logging.getLogger(__name__)

# Bounds the work an attacker can make us do with one message (each check may cost a DNS lookup).
# DKIM-Signature fields looked at at all (MAX_SIGNATURE_FIELDS), names in one h= (MAX_SIGNED_NAMES)
# and the header block handed to dkimpy (MAX_HEADER_BYTES) are bounded in mailgateway.wire.
MAX_SIGNATURES = 5
# Distinct DKIM key names looked up for one message: the first, plus two more (a dual RSA +
# ed25519 signature needs two; RFC 8463 §2). Each may cost a DNS timeout (docs/guarantees.md).
MAX_KEY_LOOKUPS = 3

_AUTHSERV_ID_END = frozenset(" \t\r\n;()")


def _authserv_id(value: str) -> str | None:
    """The authserv-id of an A-R value (RFC 8601 §2.2), after leading comments; string operations
    only (no regex with nested quantifiers on text the sender wrote)."""
    text = value.lstrip()
    while text.startswith("("):
        end = text.find(")")
        if end < 0:
            return None
        text = text[end + 1 :].lstrip()
    size = 0
    while size < len(text) and text[size] not in _AUTHSERV_ID_END:
        size += 1
    return text[:size].lower() or None


@functools.cache
def _public_suffixes() -> PublicSuffixList:
    # The list bundled with the package: no download, no network (docs/guarantees.md).
    return PublicSuffixList()


def normalise_domain(domain: str | bytes | None) -> str | None:
    """Lower-case A-label form without trailing dot, or None when it is not a usable host name."""
    if domain is None:
        return None
    text = domain.decode("utf-8", "replace") if isinstance(domain, bytes) else domain
    text = text.strip().rstrip(".").lower()
    # "[" is refused with the other specials: an address literal ("[192.0.2.1]") is no host name.
    if not text or any(c.isspace() or c in '@<>()[];:,\\"' for c in text):
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


def organisational_domain(domain: str | None) -> str:
    """The domain one registrant controls: the label under its public suffix (``s1.attacker.test``
    → ``attacker.test``, ``dsi.chu-lyon.fr`` → ``chu-lyon.fr``), as DMARC's organisational domain
    (RFC 7489 §3.2). Whoever signs for a domain can sign for any name under it (one wildcard TXT
    record): a budget per signing domain is a budget per organisational domain. Lower-cased
    input when it is no usable host name."""
    d = normalise_domain(domain)
    if d is None:
        return (domain or "").strip().lower()
    return str(_public_suffixes().privatesuffix(d) or d)


# --- header access ---------------------------------------------------------------------------------


def _header_block(raw: bytes) -> tuple[bytes, bool]:
    """The header block, and whether it is complete (a huge one is cut and never trusted)."""
    block = header_block(raw[: MAX_HEADER_BYTES + 2])
    return block, len(block) <= MAX_HEADER_BYTES


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


# The longest From read (display name, encoded words and address together: a real one is a few
# hundred characters). ``policy.default``'s header parser is quadratic on repeated quoted-pairs:
# a 100 KB From (« "a\"b"a\"b… ») held the analysis worker 22 s a message (outside attacker);
# 2,048 characters take ≈ 20 ms. Longer: no author, like any From the parsers cannot agree on.
MAX_FROM_CHARS = 2048


# The common From, read without the stdlib's two parsers (≈ 0.2 ms a message, a tenth of the
# analysis worker's time; issue 19): a display name of plain words — letters, digits, spaces,
# « ' » and « - », all atext (RFC 5322 §3.2.3), no quotes, comments, dots or encoded words — then
# an angle address, or a bare address; local part and domain are dot-atoms of a few characters.
# Anything else takes the slow path. Unambiguous (each repetition is delimited by a dot), so
# linear; tests/mail/test_plain_addresses.py holds it to the result of the two parsers.
_PLAIN_ADDRESS = rf"({PLAIN_LOCAL})@({PLAIN_DOMAIN})"  # the grammar of headers.py's address lists
_PLAIN_FROM = re.compile(rf"{PLAIN_NAME}<{_PLAIN_ADDRESS}>|{_PLAIN_ADDRESS}")


def _parse_from(values: list[str]) -> tuple[str | None, str | None]:
    """One address from exactly one From field, when both stdlib parsers agree on its domain."""
    if len(values) != 1 or len(values[0]) > MAX_FROM_CHARS:
        return None, None
    value = values[0]
    plain = _PLAIN_FROM.fullmatch(value.strip(" \t"))
    if plain is not None:
        local, domain = (plain[1], plain[2]) if plain[1] is not None else (plain[3], plain[4])
        normal = normalise_domain(domain)
        if normal is not None:
            return f"{local}@{domain.lower()}", normal
    return _parse_from_slowly(value)


def _parse_from_slowly(value: str) -> tuple[str | None, str | None]:
    try:
        loose = [addr for _name, addr in email.utils.getaddresses([value]) if addr]
    except RecursionError:  # thousands of nested « ( » comments (outside attack): no author, quietly
        return None, None
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
class _DnsBudget:
    """The DNS one message may cost (docs/guarantees.md, bounded work): a message that names several aligned
    domains whose DNS never answers must not cost one timeout per signature, holding processing
    for everyone behind it. After the first temporary failure no more key is looked up; at most
    ``max_lookups`` distinct key names are looked up at all (a dual RSA + ed25519 signature,
    RFC 8463 §2, needs two). A name asked twice is answered from this message's memo."""

    max_lookups: int
    # Names answered by [authentication.static_keys]: no DNS, so no budget. Without this, a fake
    # aligned signature whose selector never answers, put above a valid one, would make the
    # message skip even a key the gateway holds locally.
    free: frozenset[str] = frozenset()
    answers: dict[str, str | None] = field(default_factory=dict)
    lookups: int = 0
    failed: bool = False  # a temporary failure (timeout, SERVFAIL) happened in this message

    def refusal(self, name: str) -> str | None:
        """Why ``name`` may not be looked up for this message (None: it may, or it is memoised)."""
        if normalise_name(name) in self.answers or normalise_name(name) in self.free:
            return None
        if self.failed:
            return "temperror"
        if self.lookups >= self.max_lookups:
            return "ignored"
        return None


@dataclass
class _Lookup:
    """dkimpy's ``dnsfunc`` over our resolver, remembering what happened for the detail text."""

    resolver: TxtResolver
    budget: _DnsBudget
    missing: bool = False
    temporary: bool = False
    skipped: bool = False

    def __call__(self, name: bytes | str, timeout: int = 5) -> bytes | None:
        text = normalise_name(name)
        if self.budget.refusal(text) is not None:
            # Enforced here too: whatever dkimpy asks for, the budget holds.
            self.skipped = True
            raise dkim.DnsTimeoutError("skipped: DNS budget spent")
        if text in self.budget.answers:
            value = self.budget.answers[text]
        elif text in self.budget.free:
            value = self.resolver.txt(text)  # static key: answered locally, never a DNS query
        else:
            self.budget.lookups += 1
            try:
                value = self.resolver.txt(text)
            except DnsTemporaryError as exc:
                self.temporary = True
                self.budget.failed = True
                raise dkim.DnsTimeoutError(str(exc)) from exc
            self.budget.answers[text] = value
        if value is None:
            self.missing = True
            return None
        return value.encode("ascii", "replace")


def arrived_via_trusted_path(settings: Settings, source: str, peer: str | None) -> bool:
    """Whether an Authentication-Results header of this message can have been written by our MTA.

    IMAP: the regional mailbox is fed by the site's MTA, which adds (and must strip forged) A-R
    with its authserv-id. SMTP/LMTP: only from a client listed in ``[intake.smtp] trusted_relays``;
    anyone else talks to us directly and writes whatever headers they like. CLI ingest: never.
    """
    if source == "imap":
        return True
    if source not in ("smtp", "lmtp") or not peer:
        return False
    smtp = settings.intake.smtp
    if smtp is None or not smtp.trusted_relays:
        return False
    try:
        address = ipaddress.ip_address(peer.strip().strip("[]"))
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    for relay in smtp.trusted_relays:
        try:
            if address in ipaddress.ip_network(relay.strip(), strict=False):
                return True
        except (ValueError, TypeError):  # checked by check-config; a bad entry trusts nobody
            continue
    return False


def signed_names(tags: dict[bytes, bytes]) -> list[str]:
    """Lower-cased names of a signature's ``h=`` tag, in order (duplicates kept: over-signing)."""
    return [n.strip().decode("ascii", "replace").lower() for n in bytes(tags.get(b"h", b"")).split(b":") if n.strip()]


def signature_key(domain: str, tags: dict[bytes, bytes]) -> str:
    """``dkim:<d>:<sha256 of b=>`` for a signature we did not verify ourselves (named by a trusted
    Authentication-Results): b= decoded, leading zero bytes dropped — an RSA verifier reads the
    value as an integer, so ``AAAA`` prepended to b= still verifies and must not make a new key."""
    b = bytes(tags.get(b"b", b"")).translate(None, b" \t\r\n")
    try:
        b = base64.b64decode(b, validate=True).lstrip(b"\0")
    except (ValueError, binascii.Error):
        pass
    return f"dkim:{domain}:{hashlib.sha256(b).hexdigest()}"


def signed_content_key(
    domain: str, headers: list[tuple[bytes, bytes]], idx: int, tags: dict[bytes, bytes]
) -> str | None:
    """``dkim:<d>:<sha256 of what the signature signs>``, the replay key of a verified signature.

    The signed data (RFC 6376 §3.7: the h= fields and this DKIM-Signature field with b= empty,
    canonicalised as c= says; bh= in it covers the body) is hashed, not the b= value: b= is
    malleable — RSA verifiers read it as an integer, so leading zero bytes, or adding the modulus,
    still verify — and a replay with a doctored b= must meet the same key. None if it cannot be
    computed (the caller falls back to ``signature_key``).
    """
    try:
        signatures = [(n, v) for n, v in headers if n.lower() == b"dkim-signature"]
        policy = CanonicalizationPolicy.from_c_value(bytes(tags.get(b"c", b"simple/simple")))
        include = [n.strip().lower() for n in bytes(tags[b"h"]).split(b":") if n.strip()]
        # Only the fields h= can select are canonicalised (issue 19: canonicalising every field
        # was a twentieth of a signed declaration's analysis). Canonicalisation is per field and
        # dkimpy's selection compares lower-cased canonical names: relaxed names are
        # ``name.lower().rstrip()``, simple ones unchanged (selected only when their lower-case
        # form equals the h= entry, which then has no trailing space): a superset, in order.
        named = set(include)
        candidates = [field for field in headers if field[0].lower().rstrip() in named]
        hasher = hashlib.sha256()
        dkim.hash_headers(hasher, policy, policy.canonicalize_headers(candidates), include, signatures[idx], tags)
        return f"dkim:{domain}:{hasher.hexdigest()}"
    except Exception:
        return None


def _unauthenticated(raw: bytes, detail: str) -> SenderVerdict:
    address, domain = from_address(raw)
    return SenderVerdict(address=address, domain=domain, authenticated=False, detail=detail)


@dataclass(frozen=True)
class _Pass:
    """What a passing check established: the domain, and what the signature covers."""

    domain: str
    signed_headers: frozenset[str] = frozenset()
    key: str | None = None
    others: tuple[str, ...] = ()


class Authenticator:
    """Checks DKIM signatures and trusted Authentication-Results; pure apart from the resolver."""

    def __init__(
        self,
        settings: AuthenticationSettings,
        resolver: TxtResolver,
        *,
        max_signatures: int = MAX_SIGNATURES,
        max_key_lookups: int = MAX_KEY_LOOKUPS,
    ) -> None:
        self._trusted_ids = frozenset(i.strip().lower() for i in settings.trusted_authserv_ids if i.strip())
        self._resolver = resolver
        self._max_signatures = max_signatures
        self._max_key_lookups = max_key_lookups
        self._static_names = frozenset(normalise_name(name) for name in settings.static_keys)

    def verify(self, raw: bytes, *, trusted_path: bool = False) -> SenderVerdict:
        """Who sent ``raw`` and whether it is proven; A-R counts only when ``trusted_path``."""
        try:
            # The same bytes analysis reads (idempotent: accept already stored them canonical).
            raw = canonical(raw)
            refusal = header_block_refusal(raw)
            if refusal is not None:
                # Checked before any dkimpy call: this also bounds what dkimpy is handed.
                return _unauthenticated(raw, f"ambiguous header block: {refusal}")
            return self._verify(raw, trusted_path)
        except Exception as exc:  # untrusted input must never crash processing (docs/guarantees.md)
            log.warning("sender authentication failed unexpectedly", exc_info=True)
            return _unauthenticated(raw, f"check failed: {type(exc).__name__}")

    def _verify(self, raw: bytes, trusted_path: bool) -> SenderVerdict:
        headers, strict = _headers(raw)
        address, domain = _parse_from([v for n, v in headers if n.lower() == "from"])
        if domain is None:  # then address is None too: nobody is named
            has_from = any(n.lower() == "from" for n, _v in headers)
            return SenderVerdict(detail="From must hold exactly one address" if has_from else "no From header")
        if not strict:
            why = "malformed header block"
            return SenderVerdict(address=address, domain=domain, authenticated=False, detail=why)
        details: list[str] = []
        passed = self._dkim(raw, domain, details)
        method = "dkim"
        if passed is None:
            method = "authentication-results"
            if trusted_path:
                passed = self._authentication_results(headers, domain, details)
            elif self._trusted_ids and any(n.lower() == "authentication-results" for n, _v in headers):
                details.append("Authentication-Results ignored (not received through a trusted relay)")
        verdict = SenderVerdict(address=address, domain=domain, authenticated=False, detail="; ".join(details))
        verdict = replace(verdict, temporary=passed is None and any(d.startswith("dkim=temperror") for d in details))
        if passed is None:
            return verdict
        return replace(
            verdict,
            authenticated=True,
            method=method,
            auth_domain=passed.domain,
            signed_headers=passed.signed_headers,
            signature_key=passed.key,
            other_signature_keys=passed.others,
        )

    def _dkim(self, raw: bytes, from_domain: str, details: list[str]) -> _Pass | None:
        # Tags are read from the header block alone; the whole message (body canonicalisation) is
        # only parsed once a signature deserves a cryptographic check.
        block_headers, _ = dkim.rfc822_parse(_header_block(raw)[0])
        fields = [v for n, v in block_headers if n.lower() == b"dkim-signature"]
        checker: dkim.DKIM | None = None
        if not fields:
            details.append("dkim=none (no signature)")
            return None
        if len(fields) > MAX_SIGNATURE_FIELDS:
            details.append(f"dkim=ignored ({len(fields)} signatures, only the first {MAX_SIGNATURE_FIELDS} examined)")
        checked = 0
        budget = _DnsBudget(self._max_key_lookups, free=self._static_names)
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
            spent = budget.refusal(f"{s}._domainkey.{d}")
            if spent is not None:
                why = "after a DNS failure" if spent == "temperror" else f"at most {self._max_key_lookups} key lookups"
                details.append(f"dkim={spent} {label} (skipped: DNS budget spent, {why})")
                continue
            checked += 1
            lookup = _Lookup(self._resolver, budget)
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
                signer = normalise_domain(d) or d.lower()
                # A signature dkimpy verified always has computable signed content (same h=, c=, field).
                key = signed_content_key(signer, block_headers, idx, tags)
                others = _other_keys(fields[:MAX_SIGNATURE_FIELDS], idx, block_headers, from_domain)
                return _Pass(signer, frozenset(signed_names(tags)), key, others)
            if lookup.skipped:
                details.append(f"dkim=temperror {label} (skipped: DNS budget spent)")
            elif lookup.temporary:
                details.append(f"dkim=temperror {label} (key lookup failed)")
            elif lookup.missing:
                details.append(f"dkim=permerror {label} (no key published)")
            else:
                details.append(f"dkim=fail {label} (signature does not verify)")
        return None

    def _authentication_results(
        self, headers: list[tuple[str, str]], from_domain: str, details: list[str]
    ) -> _Pass | None:
        if not self._trusted_ids:
            return None
        for name, value in headers:  # top to bottom: the first trusted one is the closest MTA's
            if name.lower() != "authentication-results":
                continue
            authserv_id = _authserv_id(value)
            if authserv_id is None or authserv_id not in self._trusted_ids:
                continue
            return self._trusted_result(authserv_id, value, from_domain, headers, details)
        details.append("no trusted Authentication-Results")
        return None

    def _trusted_result(
        self, authserv_id: str, value: str, from_domain: str, headers: list[tuple[str, str]], details: list[str]
    ) -> _Pass | None:
        try:
            parsed = authres.AuthenticationResultsHeader.parse_value(value)
        except Exception:  # authres.AuthResError, or worse on garbage
            details.append(f"Authentication-Results from {authserv_id} unparsable")
            return None
        dmarc: str | None = None
        for result in parsed.results:
            method = str(result.method).lower()
            if str(result.result).lower() != "pass":
                continue
            props = {(str(p.type).lower(), str(p.name).lower()): str(p.value) for p in result.properties}
            if method == "dmarc":
                header_from = normalise_domain(props.get(("header", "from")))
                if header_from is not None and header_from == from_domain:
                    dmarc = header_from
            elif method == "dkim":
                signer = props.get(("header", "d")) or props.get(("header", "i"), "").rpartition("@")[2]
                if aligned(signer, from_domain):
                    domain = normalise_domain(signer) or signer.lower()
                    details.append(f"Authentication-Results {authserv_id}: dkim=pass header.d={signer} aligned")
                    names, key = _covered_by(headers, domain, props.get(("header", "b")))
                    return _Pass(domain, names, key)
        if dmarc is not None:
            # DMARC may pass on SPF alone: nothing is known to be signed, so nothing steers.
            details.append(f"Authentication-Results {authserv_id}: dmarc=pass header.from={dmarc}")
            return _Pass(dmarc)
        details.append(f"Authentication-Results from {authserv_id}: no aligned pass")
        return None


def _covered_by(headers: list[tuple[str, str]], domain: str, b_prefix: str | None) -> tuple[frozenset[str], str | None]:
    """What the DKIM-Signature that an A-R ``dkim=pass header.d=<domain>`` vouches for covers.

    No crypto: the relay checked it. The signature is the one with that ``d=`` whose ``b=`` starts
    with ``header.b`` when given (RFC 6008 §4); when several could be meant, only the names they all
    cover count. None found: nothing is known to be covered.
    """
    prefix = "".join((b_prefix or "").split())
    found: list[tuple[frozenset[str], str]] = []
    for name, value in headers[: 4 * MAX_SIGNATURE_FIELDS]:
        if name.lower() != "dkim-signature":
            continue
        try:
            # The value was decoded with "replace" (``_headers``): plain UTF-8, no surrogate in it.
            tags = parse_tag_value(value.encode())
        except Exception:  # noqa: S112 - an unparsable signature covers nothing
            continue
        if normalise_domain(bytes(tags.get(b"d", b"")).decode("ascii", "replace")) != domain:
            continue
        b = "".join(bytes(tags.get(b"b", b"")).decode("ascii", "replace").split())
        if prefix and not b.startswith(prefix):
            continue
        found.append((frozenset(signed_names(tags)), signature_key(domain, tags)))
        if len(found) >= MAX_SIGNATURE_FIELDS:
            break
    if not found:
        return frozenset(), None
    names = frozenset.intersection(*(n for n, _k in found))
    return names, found[0][1] if len(found) == 1 else None


def _other_keys(fields: list[bytes], accepted: int, headers: list[tuple[bytes, bytes]],
                from_domain: str) -> tuple[str, ...]:
    """The replay keys of the message's other signatures that could authenticate it (aligned,
    not refused), not verified: a copy stripped of the accepted signature and given a new
    Message-ID verified under its second one and opened a second case (an outside tester). Only
    computing what they sign, no DNS, no RSA: a few microseconds each, and only for mail signed
    more than once."""
    keys: list[str] = []
    for idx, value in enumerate(fields):
        if idx == accepted:
            continue
        try:
            tags = parse_tag_value(value)
        except Exception:  # unparsable: reported by the loop that verifies (dkim=permerror)
            tags = {}
        if not tags or _refusal(tags, from_domain) is not None:
            continue
        d = bytes(tags.get(b"d", b"")).decode("ascii", "replace")
        key = signed_content_key(normalise_domain(d) or d.lower(), headers, idx, tags)
        if key is not None:
            keys.append(key)
    return tuple(dict.fromkeys(keys))


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
    signed = signed_names(tags)
    if len(signed) > MAX_SIGNED_NAMES:
        # Verifying costs (names in h=) x (fields in the block): the DKIM cost bomb (docs/guarantees.md).
        return f"h= lists {len(signed)} header names, more than {MAX_SIGNED_NAMES}"
    if "from" not in signed:
        # RFC 6376 §6.1.1: a signature not covering From MUST be ignored.
        return "From not signed"
    return None


def _short(exc: BaseException) -> str:
    """dkimpy's reason, first line, at most 120 characters (its class name if it gives none)."""
    return (str(exc) or type(exc).__name__).splitlines()[0][:120]


def default_resolver(settings: Settings, *, use_dns: bool = True) -> TxtResolver:
    """Static keys first, then DNS (the system resolver unless ``nameservers`` is set)."""
    return build_resolver(settings.authentication, use_dns=use_dns)


def build_authenticator(settings: Settings, resolver: TxtResolver | None = None, *,
                        use_dns: bool = True) -> Authenticator:
    """The authenticator of ``settings``: trusted authserv-ids, ACSS domains, keys by ``resolver``."""
    return Authenticator(settings.authentication, resolver or default_resolver(settings, use_dns=use_dns))
