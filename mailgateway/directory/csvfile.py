"""Reading the ARS-maintained CSV files (contacts, staff): encoding, separator, header.

README, "Command line": UTF-8 with a header row, ';' or ',' separated. A byte-order mark is tolerated (Excel
writes one), and so is Windows-1252, which is what French Excel writes for "CSV (séparateur :
point-virgule)": refusing it would only send staff back to a text editor, and since the bytes are
not valid UTF-8 the reading is unambiguous; the report says so.
"""

from __future__ import annotations

import csv
import io
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass
from os import PathLike
from pathlib import Path

from mailgateway.directory.report import ImportReport
from mailgateway.errors import InputError


@dataclass(frozen=True)
class Row:
    line: int  # physical line where the record starts (1 = header)
    values: dict[str, str]


def fold(text: str) -> str:
    """'Adresse e-mail' -> 'adresse_e_mail': accents, case, spaces and dashes folded."""
    ascii_text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")
    return "_".join(ascii_text.lower().replace("-", " ").replace("_", " ").split())


def read_text(path: str | PathLike[str], report: ImportReport) -> str:
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise InputError(f"fichier illisible : {path} ({exc.strerror})") from exc
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        report.warn(line, "le fichier n'est pas en UTF-8 : lu en Windows-1252 (export Excel ?)")
        return data.decode("cp1252", errors="replace")


def sniff_delimiter(header: str) -> str:
    """';' or ',': whichever separates the header's column names (names contain neither)."""
    return ";" if header.count(";") >= header.count(",") and ";" in header else ","


def read_rows(
    text: str,
    report: ImportReport,
    aliases: Mapping[str, str],
    required: tuple[str, ...],
    *,
    header_optional: tuple[str, ...] = (),
) -> list[Row] | None:
    """Rows keyed by canonical column names, or None (with errors reported) when unusable.

    ``aliases`` maps folded header names to canonical ones. With ``header_optional``, a first
    line that is not a header is read as data in that column order.
    """
    lines = text.splitlines()
    first = next((i for i, line in enumerate(lines) if line.strip()), None)
    if first is None:
        report.error(0, "fichier vide")
        return None
    delimiter = sniff_delimiter(lines[first])
    reader = csv.reader(io.StringIO("\n".join(lines[first:])), delimiter=delimiter)
    header_cells = next(reader)
    columns = [aliases.get(fold(cell)) for cell in header_cells]
    has_header = any(columns)
    previous_end = first + (1 if has_header else 0)
    if not has_header and header_optional:
        columns = list(header_optional)
        reader = csv.reader(io.StringIO("\n".join(lines[first:])), delimiter=delimiter)
        previous_end = first
    elif not has_header:
        report.error(first + 1, "ligne d'en-tête absente ou non reconnue (attendu : " + ";".join(required) + ")")
        return None
    missing = [name for name in required if name not in columns]
    if missing:
        report.error(first + 1, "colonne(s) obligatoire(s) absente(s) : " + ", ".join(missing))
        return None
    for cell, column in zip(header_cells, columns, strict=True):
        if column is None and has_header:
            report.warn(first + 1, f"colonne inconnue « {cell.strip()} » ignorée")
    rows: list[Row] = []
    for cells in reader:
        start = previous_end + 1
        previous_end = first + reader.line_num
        if not any(cell.strip() for cell in cells):
            report.skipped += 1
            continue
        while len(cells) > len(columns) and not cells[-1].strip():
            cells.pop()  # spreadsheets add empty trailing columns
        if len(cells) != len(columns):
            report.error(start, f"nombre de colonnes incorrect ({len(cells)} au lieu de {len(columns)})")
            continue
        values = {col: cell.strip() for col, cell in zip(columns, cells, strict=True) if col is not None}
        rows.append(Row(start, values))
    return rows
