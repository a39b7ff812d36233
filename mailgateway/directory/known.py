"""Whether a domain is one the agency deals with: its own, the national cell's, its staff's, or
an establishment's in the directory.

An authenticated signature proves who sent a mail, not that the sender matters: anybody can sign
with a domain they registered yesterday. Exemptions from anti-flood caps are granted to known
domains only (processing/context.py), never to "signed" alone.
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from mailgateway.directory.staff import all_staff
from mailgateway.settings import Settings
from mailgateway.store.models import Contact


def _domain_of(address: str) -> str:
    return address.rpartition("@")[2].strip().lower()


def _like_escaped(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def is_known_domain(settings: Settings, session: Session, domain: str | None) -> bool:
    """True for the agency's and ACSS's domains, a staff member's domain, or the domain of an
    establishment contact in the directory (exact domain, never a parent or a child)."""
    domain = (domain or "").strip().lower().rstrip(".")
    if not domain:
        return False
    own = {d.lower() for d in settings.authentication.acss_domains}
    own.update(_domain_of(r.address) for r in settings.regions)
    if settings.dkim and settings.dkim.domain:
        own.add(settings.dkim.domain.lower())
    if domain in own:
        return True
    if any(_domain_of(a) == domain for a in all_staff(settings, session)):
        return True
    pattern = "%@" + _like_escaped(domain)
    found = session.scalar(select(Contact.id).where(Contact.address.ilike(pattern, escape="\\")).limit(1))
    return found is not None
