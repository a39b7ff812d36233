"""Builders of FINESS extraction lines and directory CSV files for the directory tests."""

from __future__ import annotations

from pathlib import Path


def structure_line(
    finess: str,
    name: str,
    departement: str,
    categetab: str = "355",
    categagretab: str = "1102",
    *,
    ej: str = "",
    acheminement: str = "",
    rs: str | None = None,
    datemaj: str = "2024-04-22",
) -> str:
    """One ``structureet`` line of 32 fields, as in the national extraction."""
    fields = [
        "structureet", finess, ej, rs if rs is not None else name[:38].upper(), name, "", "",
        "1", "R", "DE LA PAIX", "", "", "123", departement, "LIBDEP", acheminement,
        "0400000000", "", categetab, "Libellé catégorie", categagretab, "Libellé agrégat",
        "", "8610Z", "03", "ARS", "1", "Etablissement public de santé", "1979-02-13", "1979-02-13",
        datemaj, "",
    ]  # fmt: skip
    assert len(fields) == 32
    return ";".join(fields)


def write_extraction(path: Path, lines: list[str], date: str = "2026-05-12") -> Path:
    text = "\n".join([f"finess;etalab;111;{date}", *lines]) + "\n"
    path.write_bytes(text.encode("latin-1"))
    return path


def write_csv(path: Path, text: str, *, bom: bool = False, encoding: str = "utf-8") -> Path:
    data = text.encode(encoding)
    path.write_bytes(b"\xef\xbb\xbf" + data if bom else data)
    return path
