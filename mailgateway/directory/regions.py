"""Regions and départements, loaded from the packaged ``data/regions.csv`` (public reference data).

The FINESS extraction has no region column: the region is derived from the département code,
which FINESS writes ``01``..``95``, ``2A``/``2B`` for Corse and ``9A``..``9F`` overseas (INSEE
971..976). Territories without an ARS (9E Saint-Pierre-et-Miquelon, 9J Wallis-et-Futuna...)
have no region.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from functools import cache
from importlib import resources


@dataclass(frozen=True)
class Region:
    code: str  # ARA, IDF, ... (the region codes of the configuration)
    insee: str
    name: str
    departements: tuple[str, ...]


# INSEE overseas département numbers as written in FINESS (enumerations.md "FINESS extraction").
_OVERSEAS_INSEE = {"971": "9A", "972": "9B", "973": "9C", "974": "9D", "975": "9E", "976": "9F"}


@cache
def regions() -> dict[str, Region]:
    """Region code -> Region, in file order."""
    text = resources.files("mailgateway").joinpath("data/regions.csv").read_text(encoding="utf-8")
    out: dict[str, Region] = {}
    for row in csv.DictReader(io.StringIO(text)):
        code = row["code"].strip()
        deps = tuple(row["departements"].split())
        out[code] = Region(code, row["insee"].strip(), row["name"].strip(), deps)
    return out


@cache
def _departement_index() -> dict[str, str]:
    return {dep: region.code for region in regions().values() for dep in region.departements}


def region_of_departement(departement: str | None) -> str | None:
    """Region code of a FINESS département code, or None (unknown code, territory without ARS)."""
    if not departement:
        return None
    return _departement_index().get(departement)


def known_departements() -> frozenset[str]:
    return frozenset(_departement_index())


def normalise_departement(value: str) -> str | None:
    """Operator spelling -> FINESS code: ``1`` -> ``01``, ``2a`` -> ``2A``, ``974`` -> ``9D``.

    Returns None when the value is not a département code at all (it may still be a code of a
    territory without an ARS, which callers check with :func:`region_of_departement`).
    """
    v = value.strip().upper()
    if v in _OVERSEAS_INSEE:
        return _OVERSEAS_INSEE[v]
    if len(v) == 1 and v.isdigit() and v != "0":
        return "0" + v
    if len(v) == 2 and v.isascii() and (v.isdigit() or v in ("2A", "2B") or (v[0] == "9" and v[1].isalpha())):
        return v
    return None


def departement_of_finess(finess: str) -> str | None:
    """Département guessed from a FINESS number, for rows that do not give one.

    Metropolitan numbers start with the département (``69``, ``2A``). Overseas numbers start
    with 97/98 and the next two digits name the territory, as observed in the extraction
    (9701 Guadeloupe, 9702 Martinique, 9703 Guyane, 9704 La Réunion, 9805 Mayotte); anything
    else overseas is left unknown rather than guessed.
    """
    head = finess[:2].upper()
    if head not in ("97", "98"):
        return head if normalise_departement(head) == head else None
    return {"9701": "9A", "9702": "9B", "9703": "9C", "9704": "9D", "9805": "9F"}.get(finess[:4])
