"""An establishment of the directory by FINESS ET, remembered for the session.

Processing looks the same number up several times per declaration (which establishment, which
region, what the staff notification shows) and a batch shares one session (issue 19). The ORM's
identity map already answers for a number the directory knows; this also remembers the numbers
it does not know (an unknown FINESS cost a SELECT per look-up: four per declaration).

The directory is written by imports in their own transactions, never by processing, so an
answer stays true for the session's life; the memo lives in ``session.info`` and goes with it.
"""

from __future__ import annotations

from sqlalchemy.orm import Session

from mailgateway.store.models import Establishment

_MEMO = "mailgateway.directory.establishments"


def establishment(session: Session, finess: str) -> Establishment | None:
    memo: dict[str, Establishment | None] = session.info.setdefault(_MEMO, {})
    if finess in memo:
        return memo[finess]
    with session.no_autoflush:  # a directory row: nothing pending changes it
        found = session.get(Establishment, finess)
    memo[finess] = found
    return found
