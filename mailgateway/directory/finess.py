"""Import of the national FINESS extraction (establishments, ET) into the directory.

File format (the FINESS extraction file): ';'-separated, latin-1,
no header row, a first line ``finess;etalab;<n>;<date>``, then ``structureet`` lines of 32 fields
and, in some extractions, ``geolocalisation`` lines (skipped: we need no coordinates). About
100,000 lines: the import reads the current directory into a dict once, compares in Python and
writes with executemany (insert and update by primary key), which is fast on SQLite and PostgreSQL
alike and makes a second import of the same file a no-op.

A FINESS import writes its valid lines and lists the bad ones (a national file with a few broken
lines must still refresh the other 99,990); it is refused only when the file does not look like an
extraction (no valid line, or more bad lines than good ones). Establishments absent from the file
are counted, never deleted: their contacts and case history stay attached.
"""

from __future__ import annotations

import csv
import re
from collections import Counter
from collections.abc import Collection
from datetime import date, datetime
from os import PathLike
from typing import Any, cast

from sqlalchemy import Table, bindparam, insert, select, update
from sqlalchemy.orm import Session

from mailgateway.directory.categories import category_table
from mailgateway.directory.regions import departement_of_finess, normalise_departement, region_of_departement
from mailgateway.directory.report import ImportReport
from mailgateway.errors import InputError
from mailgateway.store.models import Establishment

STRUCTURE = "structureet"
SKIPPED_SECTIONS = frozenset({"geolocalisation"})
FIELD_COUNT = 32
# Field positions in a structureet line (0 = the section name).
F_FINESS, F_EJ, F_RS, F_RSLONGUE = 1, 2, 3, 4
F_DEPARTEMENT, F_ACHEMINEMENT, F_CATEGETAB, F_CATEGAGRETAB = 13, 15, 18, 20

# Metropolitan numbers start with the département (2A/2B for Corse), overseas ones with 97/98.
FINESS_RE = re.compile(r"(?:\d{2}|2[AB])\d{7}")
_ACHEMINEMENT_RE = re.compile(r"\s*\d{5}\s+(.*\S)\s*")

# Compared and written columns, in this order.
COLUMNS = ("finess_ej", "name", "category", "categetab", "departement", "region", "commune", "source")


def decode_line(raw: bytes) -> str:
    """The extraction is latin-1; tolerate UTF-8 (re-saved files) and cp1252 (œ, ’) per line."""
    for encoding in ("utf-8", "cp1252"):
        try:
            return raw.decode(encoding)
        except UnicodeDecodeError:
            continue
    return raw.decode("latin-1")  # total: every byte is a character


def parse_date(value: str) -> date | None:
    """yyyy-mm-dd today, dd/mm/yyyy in old extractions; None when neither."""
    value = value.strip()
    for fmt in ("%Y-%m-%d", "%d/%m/%Y"):
        try:
            return datetime.strptime(value, fmt).date()
        except ValueError:
            continue
    return None


def split_fields(text: str) -> list[str]:
    # Fields are only quoted when they hold quotes ("LIEU DE VIE ""X"""): split is much faster.
    if '"' not in text:
        return text.split(";")
    return next(csv.reader([text], delimiter=";"))


def _commune(acheminement: str) -> str | None:
    """'69437 LYON CEDEX 03' -> 'LYON CEDEX 03' (the file's commune column is an INSEE code)."""
    match = _ACHEMINEMENT_RE.fullmatch(acheminement)
    text = match.group(1) if match else acheminement.strip()
    return text or None


def read_extraction(
    path: str | PathLike[str], report: ImportReport, radiotherapy: Collection[str]
) -> dict[str, tuple[Any, ...]]:
    """Parse the file into FINESS -> column values (``COLUMNS`` order), reporting bad lines."""
    table = category_table()
    rows: dict[str, tuple[Any, ...]] = {}
    first_seen: dict[str, int] = {}
    unknown_sections: Counter[str] = Counter()
    try:
        fh = open(path, "rb")  # binary: decoding is per line
    except OSError as exc:
        raise InputError(f"fichier illisible : {path} ({exc.strerror})") from exc
    with fh:
        for lineno, raw in enumerate(fh, 1):
            text = decode_line(raw).rstrip("\r\n")
            if not text.strip():
                report.skipped += 1
                continue
            section = text.partition(";")[0].strip()
            if lineno == 1 and section == "finess":
                head = text.split(";")
                extracted = parse_date(head[3]) if len(head) > 3 else None
                report.extracted_on = extracted.isoformat() if extracted else None
                continue
            if section != STRUCTURE:
                report.skipped += 1
                if section not in SKIPPED_SECTIONS:
                    unknown_sections[section[:40]] += 1
                continue
            f = split_fields(text)
            if len(f) != FIELD_COUNT:
                report.error(lineno, f"nombre de champs incorrect ({len(f)} au lieu de {FIELD_COUNT})")
                continue
            finess = f[F_FINESS].strip().upper()
            if not FINESS_RE.fullmatch(finess):
                report.error(lineno, f"numéro FINESS invalide « {f[F_FINESS].strip()} »")
                continue
            if finess in first_seen:
                report.error(lineno, f"FINESS {finess} en double (déjà ligne {first_seen[finess]})")
                continue
            name = f[F_RSLONGUE].strip() or f[F_RS].strip()
            if not name:
                report.error(lineno, f"raison sociale vide pour le FINESS {finess}")
                continue
            first_seen[finess] = lineno
            ej = f[F_EJ].strip().upper()
            dep_raw = f[F_DEPARTEMENT].strip()
            departement = (normalise_departement(dep_raw) if dep_raw else departement_of_finess(finess)) or (
                dep_raw.upper()[:3] or None
            )
            categetab = f[F_CATEGETAB].strip()
            rows[finess] = (
                ej if FINESS_RE.fullmatch(ej) else None,
                name,
                table.category(categetab, f[F_CATEGAGRETAB].strip(), finess, radiotherapy),
                categetab or None,
                departement,
                region_of_departement(departement),
                _commune(f[F_ACHEMINEMENT]),
                "finess",
            )
    for section, count in unknown_sections.most_common():
        report.warn(0, f"{count} ligne(s) de type inconnu « {section} » ignorée(s)")
    return rows


def import_finess(
    session: Session,
    path: str | PathLike[str],
    now: datetime,
    *,
    radiotherapy_finess: Collection[str] = (),
) -> ImportReport:
    """Upsert the establishments of a FINESS extraction; the caller commits.

    ``radiotherapy_finess`` (settings.labels.radiotherapy_finess) marks CENTRE_RADIOTHERAPIE.
    """
    report = ImportReport("finess")
    rows = read_extraction(path, report, frozenset(radiotherapy_finess))
    if not rows or len(report.errors) > len(rows):
        report.refused = True
        report.error(
            0,
            "le fichier ne ressemble pas à une extraction FINESS (lignes structureet valides : "
            f"{len(rows)}) : rien n'a été importé",
        )
        return report

    cols = [getattr(Establishment, c) for c in COLUMNS]
    existing = {r[0]: tuple(r[1:]) for r in session.execute(select(Establishment.finess, *cols))}
    added: list[dict[str, Any]] = []
    changed: list[dict[str, Any]] = []
    for finess, values in rows.items():
        old = existing.get(finess)
        if old == values:
            report.unchanged += 1
            continue
        record = dict(zip(COLUMNS, values, strict=True), finess=finess, updated_at=now)
        (changed if old is not None else added).append(record)
    report.absent = len(existing.keys() - rows.keys())
    # Core executemany on the session's connection: the ORM bulk path costs 2 s per 100,000 rows
    # building per-row state we do not need (no events, no identity map for these rows).
    table = cast(Table, Establishment.__table__)
    conn = session.connection()
    if added:
        conn.execute(insert(table), added)
    if changed:
        stmt = (
            update(table)
            .where(table.c.finess == bindparam("key"))
            .values({c: bindparam(c) for c in (*COLUMNS, "updated_at")})
        )
        conn.execute(stmt, [{**record, "key": record["finess"]} for record in changed])
    report.added, report.changed = len(added), len(changed)
    return report
