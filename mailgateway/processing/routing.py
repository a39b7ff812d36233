"""Which region a message belongs to, when the analysis alone could not tell.

Order: the analysis (a regional address in To/Cc, or the case reference), the SMTP envelope
recipient, a regional address's local part on another domain (``SSI-PDL@ars-sante.fr`` forwarded
through an alias domain — routing is not a trust decision), the département of the declared
FINESS number, and finally the only region of a single-region site.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import replace

from mailgateway.directory.regions import region_of_departement
from mailgateway.mail.facts import MessageFacts
from mailgateway.settings import Settings

_SSI_LOCAL = re.compile(r"^ssi[-_.]?(?P<code>[a-z0-9]{2,5})@", re.IGNORECASE)


def _finess_departement(finess: str | None) -> str | None:
    if not finess or len(finess) != 9:
        return None
    head = finess[:2].upper()
    if head == "97" or head == "98":
        # Overseas FINESS numbers start with 97 + a third digit (INSEE 971..976 -> 9A..9F).
        return {"1": "9A", "2": "9B", "3": "9C", "4": "9D", "6": "9F"}.get(finess[2])
    return head


AUTHORISING_REGION = "authorising_region"


def named_region(settings: Settings, facts: MessageFacts, envelope_region: str | None = None,
                 envelope_rcpts: Sequence[str] = ()) -> str | None:
    """The region whose SSI mailbox this mail was delivered or addressed to: the IMAP mailbox or
    SMTP envelope recipient first (docs/guarantees.md), else a regional address written in To/Cc, exactly.

    Unlike ``resolve_region`` this never guesses (no alias domain, FINESS or single-region
    fallback): it is the only region an approval by mail may be authorised for. A mail that names
    no regional mailbox authorises nobody (docs/guarantees.md: region None used to mean "any staff")."""
    configured = {r.code for r in settings.regions}
    if envelope_region in configured:
        return envelope_region
    by_address = {r.address.lower(): r.code for r in settings.regions}
    for address in [*envelope_rcpts, *facts.recipients]:
        code = by_address.get(address.strip().lower())
        if code is not None:
            return code
    return None


def resolve_region(settings: Settings, facts: MessageFacts, envelope_region: str | None = None,
                   envelope_rcpts: Sequence[str] = ()) -> MessageFacts:
    named = named_region(settings, facts, envelope_region, envelope_rcpts)
    facts = replace(facts, extra={**facts.extra, AUTHORISING_REGION: named})
    configured = {r.code for r in settings.regions}
    if facts.region in configured:
        return facts
    region: str | None = envelope_region if envelope_region in configured else None
    if region is None:
        locals_ = {r.address.split("@", 1)[0].lower(): r.code for r in settings.regions}
        for address in [*envelope_rcpts, *facts.recipients]:
            local = address.lower().split("@", 1)[0]
            if local in locals_:
                region = locals_[local]
                break
            match = _SSI_LOCAL.match(address)
            if match and match.group("code").upper() in configured:
                region = match.group("code").upper()
                break
    if region is None and facts.declaration is not None:
        by_finess = region_of_departement(_finess_departement(facts.declaration.finess))
        if by_finess in configured:
            region = by_finess
    if region is None and len(configured) == 1:
        region = next(iter(configured))
    return replace(facts, region=region) if region else facts
