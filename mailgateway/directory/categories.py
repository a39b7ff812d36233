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
    # The French labels the gateway itself prints (data/libelles.toml), and what people write in
    # a contacts file: the kinds of health establishment (CH, CHU, clinique…) and of medico-social one.
    "ETABLISSEMENT_DE_SANTE": "ETABLISSEMENT_SANTE",
    "CH": "ETABLISSEMENT_SANTE",
    "CHU": "ETABLISSEMENT_SANTE",
    "CHR": "ETABLISSEMENT_SANTE",
    "CHRU": "ETABLISSEMENT_SANTE",
    "CHS": "ETABLISSEMENT_SANTE",
    "CHI": "ETABLISSEMENT_SANTE",
    "GHT": "ETABLISSEMENT_SANTE",
    "CLCC": "ETABLISSEMENT_SANTE",
    "CENTRE_HOSPITALIER": "ETABLISSEMENT_SANTE",
    "CENTRE_HOSPITALIER_UNIVERSITAIRE": "ETABLISSEMENT_SANTE",
    "CENTRE_HOSPITALIER_REGIONAL": "ETABLISSEMENT_SANTE",
    "CENTRE_HOSPITALIER_REGIONAL_UNIVERSITAIRE": "ETABLISSEMENT_SANTE",
    "CLINIQUE": "ETABLISSEMENT_SANTE",
    "POLYCLINIQUE": "ETABLISSEMENT_SANTE",
    "HOPITAL_PRIVE": "ETABLISSEMENT_SANTE",
    "HOPITAL_D_INSTRUCTION_DES_ARMEES": "HOPITAL_ARMEES",
    "HOPITAL_DES_ARMEES": "HOPITAL_ARMEES",
    "HOPITAL_MILITAIRE": "HOPITAL_ARMEES",
    "LABORATOIRE_DE_BIOLOGIE_MEDICALE": "LBM",
    "LABO": "LBM",
    "CENTRE_DE_RADIOTHERAPIE": "CENTRE_RADIOTHERAPIE",
    "ETABLISSEMENT_SOCIAL_OU_MEDICO_SOCIAL": "ESMS",
    "ETABLISSEMENT_MEDICO_SOCIAL": "ESMS",
    "MEDICOSOCIAL": "ESMS",
    "EHPAD": "ESMS",
}

# Shown when a value is refused: each identifier with what people may write instead.
CATEGORY_HINTS = {
    "ETABLISSEMENT_SANTE": "établissement de santé, ES, CH, CHU, clinique, hôpital",
    "HOPITAL_ARMEES": "hôpital d'instruction des armées, HIA",
    "LBM": "laboratoire de biologie médicale, laboratoire",
    "CENTRE_RADIOTHERAPIE": "centre de radiothérapie, radiothérapie",
    "ESMS": "établissement social ou médico-social, ESSMS, médico-social, EHPAD",
    "AUTRE": "autre",
}


def accepted_categories() -> str:
    """« ETABLISSEMENT_SANTE (ou : établissement de santé, ES, CH…), LBM (…) », for an error message."""
    return " ; ".join(f"{c} (ou : {CATEGORY_HINTS[c]})" for c in CATEGORIES)


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
    text = value.strip()
    # « hôpital d'instruction des armées », « médico‑social »: apostrophes and hyphens separate words.
    for sep in ("-", "_", "'", "\u2019", "\u2011"):
        text = text.replace(sep, " ")
    folded = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")
    key = "_".join(folded.upper().split())
    if key in CATEGORIES:
        return key
    return _ALIASES.get(key)
