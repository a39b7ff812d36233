"""Import of ARS staff (``address;region;role``), in addition to ``[[staff]]`` in the configuration.

Staff addresses carry authority: authenticated mail from them is obeyed as commands (docs/guarantees.md).
The CSV is therefore the complete list of CSV-managed staff: whoever is absent from the file is
removed, so that striking someone from the list is enough to revoke them. All or nothing, like
contacts: a file with any error changes nothing. The header row is optional.
"""

from __future__ import annotations

import re
from datetime import datetime
from functools import cache
from os import PathLike

from sqlalchemy import Select, bindparam, delete, insert, select, tuple_, update
from sqlalchemy.orm import Session

from mailgateway.directory.addresses import normalise_address
from mailgateway.directory.csvfile import fold, read_rows, read_text
from mailgateway.directory.regions import regions
from mailgateway.directory.report import ImportReport
from mailgateway.settings import Settings
from mailgateway.store import fast
from mailgateway.store.models import StaffMember

DEFAULT_ROLE = "agent"
_ROLE_RE = re.compile(r"[a-z][a-z0-9_]{0,31}")
_ALIASES = {
    **{k: "address" for k in ("address", "adresse", "email", "e_mail", "courriel", "mail")},
    **{k: "region" for k in ("region", "ars")},
    **{k: "role" for k in ("role", "fonction")},
}


def import_staff(session: Session, path: str | PathLike[str], now: datetime) -> ImportReport:
    """Replace the CSV-managed staff with the file's list; the caller commits.

    ``now`` is accepted for symmetry with the other imports (staff rows carry no timestamp).
    """
    del now
    report = ImportReport("staff")
    rows = read_rows(
        read_text(path, report),
        report,
        _ALIASES,
        ("address", "region"),
        header_optional=("address", "region", "role"),
    )
    if rows is None:
        report.refused = True
        return report
    known_regions = regions()
    wanted: dict[tuple[str, str], str] = {}
    first_line: dict[tuple[str, str], int] = {}
    for row in rows:
        raw = row.values["address"]
        address = normalise_address(raw)
        if address is None:
            report.error(row.line, f"adresse invalide « {raw} »" if raw else "adresse manquante")
        region = row.values["region"].strip().upper()
        if region not in known_regions:
            report.error(
                row.line,
                f"région inconnue « {row.values['region']} » (valeurs possibles : {', '.join(known_regions)})",
            )
        role = fold(row.values.get("role", "")) or DEFAULT_ROLE
        if not _ROLE_RE.fullmatch(role):
            report.error(row.line, f"rôle invalide « {row.values['role']} »")
        if address is None or region not in known_regions or not _ROLE_RE.fullmatch(role):
            continue
        key = (address, region)
        if key in first_line:
            report.error(row.line, f"doublon de la ligne {first_line[key]} ({address}, {region})")
            continue
        first_line[key] = row.line
        wanted[key] = role
    if report.errors:
        report.refused = True
        return report

    existing = {
        (s.address, s.region): s.role
        for s in session.execute(select(StaffMember.address, StaffMember.region, StaffMember.role))
    }
    added = [{"address": a, "region": r, "role": role} for (a, r), role in wanted.items() if (a, r) not in existing]
    changed = [
        {"address": a, "region": r, "role": role}
        for (a, r), role in wanted.items()
        if (a, r) in existing and existing[(a, r)] != role
    ]
    removed = [key for key in existing if key not in wanted]
    if added:
        session.execute(insert(StaffMember), added)
    if changed:
        session.execute(update(StaffMember), changed)
    if removed:
        pk = tuple_(StaffMember.address, StaffMember.region)
        session.execute(delete(StaffMember).where(pk.in_(removed)))
    session.info.pop(_CACHE_KEY, None)  # all_staff reads the new list
    report.added, report.changed, report.removed = len(added), len(changed), len(removed)
    report.unchanged = len(wanted) - len(added) - len(changed)
    return report


# --- who the staff are (read by the outbound gate, the mail commands, bulletins and jobs) ---


def staff_addresses(settings: Settings, session: Session, region: str) -> list[str]:
    """Staff of ``region``: [[staff]] from the configuration plus imported staff."""
    found = {s.address.lower() for s in settings.staff if s.region == region}
    # No autoflush: staff rows are only written by Core statements (``import_staff``), never as
    # pending ORM objects, so the caller's pending changes cannot alter the answer (issue 19:
    # each autoflush on the processing hot path is a unit of work of its own).
    with session.no_autoflush:
        found.update(a.lower() for (a,) in fast.execute(session, _region_statement(), {"region": region}).rows)
    return sorted(found)


@cache
def _region_statement() -> Select[str]:
    """Built once on the table's columns: every staff notification asks (issue 19)."""
    columns = StaffMember.__table__.c
    return select(columns.address).where(columns.region == bindparam("region"))


_CACHE_KEY = "mailgateway.all_staff"


def all_staff(settings: Settings, session: Session) -> frozenset[str]:
    """Every staff address (configuration and imported list), lower case. Read once per
    transaction: processing asks it of every authenticated message and every TLP-marked mail,
    and the list only changes by an import (``import_staff``, which forgets it)."""
    transaction = session.get_transaction()
    cached = session.info.get(_CACHE_KEY)
    if cached is not None and transaction is not None and cached[0] is transaction and cached[1] is settings:
        return cached[2]  # type: ignore[no-any-return]
    found = {s.address.lower() for s in settings.staff}
    with session.no_autoflush:  # nothing processing writes changes the staff list
        found.update(a.lower() for a in session.scalars(select(StaffMember.address)))
    staff = frozenset(found)
    if transaction is not None:
        session.info[_CACHE_KEY] = (transaction, settings, staff)
    return staff


class StaffDirectory:
    """``dispatch.mailer.StaffDirectory`` over the configuration and the imported list."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def of_region(self, session: Session, region: str) -> list[str]:
        return staff_addresses(self.settings, session, region)

    def everyone(self, session: Session) -> frozenset[str]:
        return all_staff(self.settings, session)
