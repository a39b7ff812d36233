"""Structure categories (``category``, data/finess_categories.toml) and their FINESS mapping.

The mapping from FINESS codes lives in ``data/finess_categories.toml`` (data, not ``if`` chains);
radiotherapy centres have no FINESS code of their own, so they come from a configured list of
FINESS numbers (``labels.radiotherapy_finess``).
"""

from __future__ import annotations

import tomllib
import unicodedata
from collections.abc import Collection
from dataclasses import dataclass
from functools import cache
from importlib import resources

CATEGORIES: tuple[str, ...] = (
    "ETABLISSEMENT_SANTE",
    "HOPITAL_ARMEES",
    "LBM",
    "CENTRE_RADIOTHERAPIE",
    "ESMS",
    "AUTRE",
)

# What operators type in target expressions and CSV files besides the identifiers themselves.
_ALIASES = {
    "ES": "ETABLISSEMENT_SANTE",
    "ETABLISSEMENT": "ETABLISSEMENT_SANTE",
    "HOPITAL": "ETABLISSEMENT_SANTE",
    "HIA": "HOPITAL_ARMEES",
    "LABORATOIRE": "LBM",
    "RADIOTHERAPIE": "CENTRE_RADIOTHERAPIE",
    "ESSMS": "ESMS",
    "MEDICO_SOCIAL": "ESMS",
}


@dataclass(frozen=True)
class CategoryTable:
    by_categetab: dict[str, str]
    by_categagretab_prefix: tuple[tuple[str, str], ...]

    def category(self, categetab: str, categagretab: str, finess: str, radiotherapy: Collection[str]) -> str:
        if finess in radiotherapy:
            return "CENTRE_RADIOTHERAPIE"
        found = self.by_categetab.get(categetab)
        if found:
            return found
        for prefix, category in self.by_categagretab_prefix:
            if categagretab.startswith(prefix):
                return category
        return "AUTRE"


@cache
def category_table() -> CategoryTable:
    raw = resources.files("mailgateway").joinpath("data/finess_categories.toml").read_text(encoding="utf-8")
    data = tomllib.loads(raw)
    by_code = {code: cat for cat, codes in data.get("categetab", {}).items() for code in codes}
    prefixes = sorted(
        ((p, cat) for cat, ps in data.get("categagretab", {}).items() for p in ps),
        key=lambda item: -len(item[0]),  # the most specific prefix wins
    )
    unknown = (set(by_code.values()) | {cat for _, cat in prefixes}) - set(CATEGORIES)
    if unknown:
        raise ValueError(f"finess_categories.toml names unknown categories: {sorted(unknown)}")
    return CategoryTable(by_code, tuple(prefixes))


def normalise_category(value: str) -> str | None:
    """``lbm``, ``Établissement santé``, ``CENTRE-RADIOTHERAPIE`` -> identifier; None if unknown."""
    folded = unicodedata.normalize("NFKD", value.strip()).encode("ascii", "ignore").decode("ascii")
    key = "_".join(folded.upper().replace("-", " ").replace("_", " ").split())
    if key in CATEGORIES:
        return key
    return _ALIASES.get(key)
