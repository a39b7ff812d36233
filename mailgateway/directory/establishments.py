"""Establishments of the directory by FINESS ET or EJ, remembered for the session.

Processing looks the same number up several times per declaration (which establishment, which
region, what the staff notification shows) and a batch shares one session (issue 19). Answers
are remembered in ``session.info`` — the numbers the directory does not know too (an unknown
FINESS cost a SELECT per look-up: four per declaration) — and read by statements on the driver
(store/fast.py): an ORM ``Session.get`` that misses its identity map cost ≈ 80 µs, the statement
≈ 10 µs. A row read is attached to the session as the ORM would load it.

The directory is written by imports in their own transactions, never by processing, so an
answer stays true for the session's life; the memo lives in ``session.info`` and goes with it.
"""

from __future__ import annotations

from functools import cache
from typing import Any, cast

from sqlalchemy import Select, Table, bindparam, select
from sqlalchemy.orm import Session

from mailgateway.directory.addresses import normalise_address
from mailgateway.store import fast
from mailgateway.store.models import Contact, Establishment

_MEMO = "mailgateway.directory.establishments"
_EJ_MEMO = "mailgateway.directory.establishments.ej"
_CONTACT_MEMO = "mailgateway.directory.establishments.contact"


def establishment(session: Session, finess: str) -> Establishment | None:
    """The establishment whose FINESS ET is ``finess``, or None."""
    memo: dict[str, Establishment | None] = session.info.setdefault(_MEMO, {})
    if finess in memo:
        return memo[finess]
    found = session.identity_map.get(session.identity_key(Establishment, finess))  # loaded elsewhere
    if found is None:
        found = fast.load(session, Establishment, _by_et(), {"finess": finess})
    memo[finess] = cast(Establishment | None, found)
    return memo[finess]


def establishments_of_ej(session: Session, finess_ej: str) -> list[Establishment]:
    """The establishments (ET) of the juridique number ``finess_ej``, by number, at most
    ``EJ_SITES_READ``: one read per EJ and session, whatever its callers show of them."""
    memo: dict[str, list[Establishment]] = session.info.setdefault(_EJ_MEMO, {})
    found = memo.get(finess_ej)
    if found is None:  # one query for the sites, whole rows: no second look-up per site
        found = memo[finess_ej] = fast.load_all(session, Establishment, _of_ej(),
                                                {"finess_ej": finess_ej, "limit": EJ_SITES_READ})
        for site in found:
            session.info.setdefault(_MEMO, {})[site.finess] = site
    return list(found)


def finess_of_contact(session: Session, address: str) -> str | None:
    """The FINESS of the one establishment whose contact ``address`` is, or None: unknown, or a
    mailbox several establishments share (a GHT's: which one is meant is the declaration's to say).
    The address is put in the form imports store (``normalise_address``: lower case, IDNA domain)."""
    canonical = normalise_address(address) or address.strip().lower()
    memo: dict[str, str | None] = session.info.setdefault(_CONTACT_MEMO, {})
    if canonical not in memo:
        found = session.scalars(select(Contact.finess).where(Contact.address == canonical).distinct().limit(2)).all()
        memo[canonical] = found[0] if len(found) == 1 else None
    return memo[canonical]


# The sites of an EJ read at most: where they are (processing/regional.py) is decided on these.
# Staff are shown the first EJ_SITES_SHOWN (the staff notification, ``#finess``'s refusal), and
# told when there are more.
EJ_SITES_READ = 50
EJ_SITES_SHOWN = 10


@cache
def _by_et() -> Select[Any]:
    c = cast(Table, Establishment.__table__).c
    return select(*c).where(c.finess == bindparam("finess"))


@cache
def _of_ej() -> Select[Any]:
    c = cast(Table, Establishment.__table__).c
    return (select(*c).where(c.finess_ej == bindparam("finess_ej")).order_by(c.finess)
            .limit(bindparam("limit")))
