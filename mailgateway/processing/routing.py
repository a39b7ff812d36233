"""The region of a message: where it arrived, never what its headers say (docs/guarantees.md).

Arrival first: the IMAP mailbox's region or the SMTP envelope recipient's (``row.region``, one
row per receiving region: intake/accept.py), then a regional address among the envelope
recipients, exactly or by its local part on another domain (``SSI-PDL@ars-sante.fr`` forwarded
through an alias domain — routing is not a trust decision). To/Cc decide nothing when the mail
has arrival information: a Brest declaration in the Bretagne mailbox with PDL in Cc is Bretagne's.

Only a message without arrival information (``mailgateway ingest`` / ``parse`` with no
envelope, or an SMTP message addressed only to the bounce address) falls back to the analysis (a
regional address in To/Cc, or the case reference), the département of the declared FINESS
number, and finally the only region of a single-region site.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import replace

from mailgateway.directory.regions import region_of_departement
from mailgateway.mail.facts import MessageFacts
from mailgateway.settings import Settings

_SSI_LOCAL = re.compile(r"^ssi[-_.]?(?P<code>[a-z0-9]{2,5})@", re.IGNORECASE)


def finess_departement(finess: str | None) -> str | None:
    if not finess or len(finess) != 9:
        return None
    head = finess[:2].upper()
    if head == "97" or head == "98":
        # Overseas FINESS numbers start with 97 + a third digit (INSEE 971..976 -> 9A..9F).
        return {"1": "9A", "2": "9B", "3": "9C", "4": "9D", "6": "9F"}.get(finess[2])
    return head


AUTHORISING_REGION = "authorising_region"


def _by_address(settings: Settings) -> dict[str, str]:
    return {r.address.lower(): r.code for r in settings.regions}


def arrival_region(settings: Settings, envelope_region: str | None = None,
                   envelope_rcpts: Sequence[str] = ()) -> str | None:
    """The configured region the message was delivered to: its mailbox, else its envelope
    recipient (exact address, then the alias-domain local part); None without arrival information."""
    configured = {r.code for r in settings.regions}
    if envelope_region in configured:
        return envelope_region
    by_address = _by_address(settings)
    rcpts = [a.strip().lower() for a in envelope_rcpts]
    for address in rcpts:
        if address in by_address:
            return by_address[address]
    return _by_local_part(settings, rcpts)


def _by_local_part(settings: Settings, addresses: Sequence[str]) -> str | None:
    configured = {r.code for r in settings.regions}
    locals_ = {r.address.split("@", 1)[0].lower(): r.code for r in settings.regions}
    for address in addresses:
        local = address.lower().split("@", 1)[0]
        if local in locals_:
            return locals_[local]
        match = _SSI_LOCAL.match(address)
        if match and match.group("code").upper() in configured:
            return match.group("code").upper()
    return None


def named_region(settings: Settings, facts: MessageFacts, envelope_region: str | None = None,
                 envelope_rcpts: Sequence[str] = ()) -> str | None:
    """The region whose SSI mailbox this mail was delivered or addressed to: the IMAP mailbox or
    SMTP envelope recipient (docs/guarantees.md); only without arrival information, a regional
    address written in To/Cc, exactly.

    Unlike ``resolve_region`` this never guesses (no alias domain, FINESS or single-region
    fallback): it is the only region an approval by mail may be authorised for. A mail that names
    no regional mailbox authorises nobody (docs/guarantees.md: region None used to mean "any staff")."""
    configured = {r.code for r in settings.regions}
    if envelope_region in configured:
        return envelope_region
    by_address = _by_address(settings)
    for address in envelope_rcpts:
        code = by_address.get(address.strip().lower())
        if code is not None:
            return code
    for address in facts.recipients:
        code = by_address.get(address.strip().lower())
        if code is not None:
            return code
    return None


def resolve_region(settings: Settings, facts: MessageFacts, envelope_region: str | None = None,
                   envelope_rcpts: Sequence[str] = ()) -> MessageFacts:
    named = named_region(settings, facts, envelope_region, envelope_rcpts)
    facts = replace(facts, extra={**facts.extra, AUTHORISING_REGION: named})
    arrived = arrival_region(settings, envelope_region, envelope_rcpts)
    if arrived is not None:
        return replace(facts, region=arrived)
    configured = {r.code for r in settings.regions}
    if facts.region in configured:
        return facts
    region = _by_local_part(settings, list(facts.recipients))
    if region is None and facts.declaration is not None:
        by_finess = region_of_departement(finess_departement(facts.declaration.finess))
        if by_finess in configured:
            region = by_finess
    if region is None and len(configured) == 1:
        region = next(iter(configured))
    return replace(facts, region=region) if region else facts
