"""Processing order, decided at accept: agency staff and ACSS mail before declarations (issue 19).

During a burst of declarations a staff command (an ARS agent waiting for its receipt) or an ACSS
alert must not wait behind hundreds of declarations. What is known before analysis decides: the
SMTP envelope ``MAIL FROM`` and the address of the header ``From`` (a bounded scan of the header
block, never a parse of the message). Either one that is a configured staff address, or of an
agency domain (the regional mailboxes', the DKIM and bounce domains) or of an
``[authentication] acss_domains`` domain, makes the message ``URGENT``.

Priority only ORDERS work; it grants nothing. Both inputs are unauthenticated here and trivially
forged: whether the sender is staff or ACSS is decided later by analysis (DKIM, trusted
Authentication-Results), exactly as for any other message. A forged envelope or From can at worst
have its message processed earlier; the runner still keeps part of every batch for first-come
mail, so a flood of forged "urgent" mail cannot starve declarations (processing/runner.py,
docs/guarantees.md).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

from sqlalchemy import Engine, select

from mailgateway.settings import Settings
from mailgateway.store.models import StaffMember

NORMAL = 0
URGENT = 1  # InboundMessage.priority: a staff command or an ACSS alert, by its envelope or From

# Only the start of the header block is read: From is near the top; the work is bounded whatever
# the message (a 25 MB mail, a header block without end) and linear (no regex on hostile bytes).
HEADER_SCAN = 16 * 1024
# Staff imported by CSV (``staff import``) are picked up this long after the import at worst.
REFRESH_SECONDS = 60.0


def header_from(raw: bytes) -> str | None:
    """The address of the first ``From`` header among the first HEADER_SCAN bytes, lowercased, or
    None. The angle address when there is one (``"staff@ars.fr" <x@evil>`` is ``x@evil``: a display
    name is not an address), else the whole value; folded lines (RFC 5322 §2.2.3) are joined."""
    head = raw[:HEADER_SCAN]
    end = head.find(b"\r\n\r\n")
    if end >= 0:
        head = head[:end]
    value: bytes | None = None
    for line in head.split(b"\r\n"):
        if value is not None:
            if line[:1] in (b" ", b"\t"):
                value += line
                continue
            break
        if line[:5].lower() == b"from:":
            value = line[5:]
    if value is None:
        return None
    text = value.decode("ascii", "replace")
    opening = text.rfind("<")
    if opening >= 0:
        closing = text.find(">", opening)
        text = text[opening + 1:closing if closing >= 0 else len(text)]
    address = text.strip().lower()
    return address if "@" in address else None


def _domain_in(address: str, domains: tuple[str, ...]) -> bool:
    domain = address.rpartition("@")[2].rstrip(".")
    return any(domain == d or domain.endswith("." + d) for d in domains)


@dataclass(frozen=True)
class PriorityRule:
    """Who is served first: ``staff`` addresses and ``domains`` (agency and ACSS), lowercased."""

    staff: frozenset[str] = frozenset()
    domains: tuple[str, ...] = ()

    @classmethod
    def of_settings(cls, settings: Settings, imported_staff: frozenset[str] = frozenset()) -> PriorityRule:
        staff = {s.address.lower() for s in settings.staff} | {a.lower() for a in imported_staff}
        domains = {r.address.rpartition("@")[2] for r in settings.regions if "@" in r.address}
        domains.update(settings.authentication.acss_domains)
        domains.add(settings.acss.address.rpartition("@")[2])
        if settings.dkim is not None:
            domains.add(settings.dkim.domain)
        if settings.outbound.bounce_domain:
            domains.add(settings.outbound.bounce_domain)
        return cls(frozenset(staff), tuple(sorted(d.lower().rstrip(".") for d in domains if d)))

    def priority(self, mail_from: str | None, raw: bytes) -> int:
        """URGENT when the envelope sender or the header From is staff, agency or ACSS (unverified:
        see the module docstring), else NORMAL."""
        for address in (mail_from, header_from(raw)):
            if address and ((address := address.strip().lower()) in self.staff or _domain_in(address, self.domains)):
                return URGENT
        return NORMAL


class Prioritiser:
    """The rule for the accept writer and IMAP intake: the configuration's staff and domains plus
    the imported staff (read from the database at most every REFRESH_SECONDS). ``settings`` is
    replaced on a reload (SIGHUP); thread-safe."""

    def __init__(self, settings: Settings, engine: Engine) -> None:
        self._settings = settings
        self._engine = engine
        self._lock = threading.Lock()
        self._rule: PriorityRule | None = None
        self._loaded = 0.0

    @property
    def settings(self) -> Settings:
        return self._settings

    @settings.setter
    def settings(self, settings: Settings) -> None:
        with self._lock:
            self._settings = settings
            self._rule = None

    def rule(self) -> PriorityRule:
        with self._lock:
            if self._rule is None or time.monotonic() - self._loaded >= REFRESH_SECONDS:
                try:
                    with self._engine.connect() as conn:
                        imported = frozenset(str(a) for a in conn.scalars(select(StaffMember.address)))
                except Exception:  # ordering is best effort: never fail an accept over it
                    imported = self._rule.staff if self._rule is not None else frozenset()
                self._rule = PriorityRule.of_settings(self._settings, imported)
                self._loaded = time.monotonic()
            return self._rule

    def priority(self, mail_from: str | None, raw: bytes) -> int:
        return self.rule().priority(mail_from, raw)
