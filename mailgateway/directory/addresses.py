"""Validation of contact and staff e-mail addresses.

``email.utils`` parses what people paste (``Nom <adresse>``); the result must then be a plain
RFC 5322 §3.4.1 addr-spec with a dot-atom local part (quoted local parts are legal but no health
structure uses one, and they break many relays) and a DNS host name, within the RFC 5321
§4.5.3.1 size limits. Addresses are stored lower-case: RFC 5321 §2.4 lets the local part be
case-sensitive, but in practice no mailbox is, and bounces must find the contact again whatever
case the remote MTA echoes.
"""

from __future__ import annotations

import re
from email.errors import HeaderParseError
from email.headerregistry import Address
from email.utils import parseaddr
from functools import lru_cache

# RFC 5322 §3.2.3 atext, dot-separated.
_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_LOCAL_RE = re.compile(rf"{_ATEXT}(?:\.{_ATEXT})*")
# RFC 1035 §2.3.1 / RFC 5890 labels; the top-level label is never all digits.
_LABEL_RE = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")


@lru_cache(maxsize=4096)
def normalise_address(value: str) -> str | None:
    """The address in canonical (lower-case) form, or None when it is not a usable address.
    Remembered (a pure function of its text): processing asks it of every authenticated sender,
    and a contacts import of every row (≈ 40 µs each, the email package's parser)."""
    text = value.strip()
    if not text or any(c in text for c in "\r\n\t,;"):
        return None
    if text.count("<") != text.count(">") or text.count("<") > 1 or ("<" in text and not text.endswith(">")):
        return None
    _name, spec = parseaddr(text)
    if not spec or spec.count("@") != 1:
        return None
    local, _, domain = spec.rpartition("@")
    if len(local) > 64 or not _LOCAL_RE.fullmatch(local):  # RFC 5321 §4.5.3.1.1
        return None
    try:
        ascii_domain = domain.encode("idna").decode("ascii").lower().rstrip(".")
    except UnicodeError:
        return None
    labels = ascii_domain.split(".")
    if len(labels) < 2 or len(ascii_domain) > 253 or labels[-1].isdigit():
        return None
    if not all(_LABEL_RE.fullmatch(label) for label in labels):
        return None
    address = f"{local}@{domain.lower().rstrip('.')}".lower()
    if len(address) > 254:  # RFC 5321 §4.5.3.1.3: 256 octets including the angle brackets
        return None
    try:
        Address(addr_spec=address)  # the email package must accept what we will write in headers
    except (HeaderParseError, ValueError, IndexError):
        return None
    return address
