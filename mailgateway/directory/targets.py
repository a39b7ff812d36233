"""Bulletin target expressions and the recipients they select (README, "Command line").

Grammar: ``all``, or clauses ``key=value[|value...]`` joined with ``,`` (and). Keys:
``category``/``categorie`` (structure category identifiers, see categories.py), ``departement``
(FINESS codes; ``1``, ``974`` are accepted and normalised) and ``finess`` (an extension, to send a
bulletin to a few named structures). ``|`` is "or" within a key. The region is never part of the
expression: it is the bulletin's region.

Recipients: one row per establishment, its active ``ssi`` contact, falling back to ``rssi`` then
``dsi`` when the establishment has no active ``ssi`` contact (bouncing, disabled or missing).
Rows are streamed from one ordered query (``yield_per``), so a 40,000-recipient fan-out holds
one batch in memory, not the whole list.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, NamedTuple, TypeVar

from sqlalchemy import Select, case, func, select
from sqlalchemy.orm import Session

from mailgateway.directory.categories import CATEGORIES, normalise_category
from mailgateway.directory.csvfile import fold
from mailgateway.directory.finess import FINESS_RE
from mailgateway.directory.regions import normalise_departement, regions
from mailgateway.errors import InputError
from mailgateway.store.models import Contact, Establishment

RECIPIENT_ROLES = ("ssi", "rssi", "dsi")  # in order of preference
_ALL = frozenset({"all", "tous", "toutes", "tout"})
_KEYS = {
    "category": "category",
    "categorie": "category",
    "categories": "category",
    "cat": "category",
    "departement": "departement",
    "departements": "departement",
    "dept": "departement",
    "dep": "departement",
    "finess": "finess",
}
# Any select statement, whatever its columns (Select is variadic in SQLAlchemy 2.1).
_S = TypeVar("_S", bound="Select[*tuple[Any, ...]]")
_EXAMPLE = "exemples : « all », « category=LBM », « categorie=ESMS,departement=69|01 »"


@dataclass(frozen=True)
class Target:
    """What a bulletin is sent to within its region; empty sets mean "any"."""

    categories: frozenset[str] = frozenset()
    departements: frozenset[str] = frozenset()
    finess: frozenset[str] = frozenset()

    @property
    def is_all(self) -> bool:
        return not (self.categories or self.departements or self.finess)

    def __str__(self) -> str:
        """Canonical expression (parse_target(str(t)) == t), as stored on the bulletin."""
        if self.is_all:
            return "all"
        parts = [
            f"{key}={'|'.join(sorted(values))}"
            for key, values in (
                ("category", self.categories),
                ("departement", self.departements),
                ("finess", self.finess),
            )
            if values
        ]
        return ",".join(parts)

    def check_region(self, region: str) -> None:
        """Refuse départements outside the bulletin's region (they would silently select nobody)."""
        info = regions().get(region)
        if info is None:
            raise InputError(f"région inconnue « {region} »")
        outside = sorted(self.departements - set(info.departements))
        if outside:
            raise InputError(f"département(s) hors de la région {region} : {', '.join(outside)}")


class RecipientRow(NamedTuple):
    finess: str
    name: str
    category: str | None
    departement: str | None
    contact_id: int
    address: str
    role: str


def _show(text: str) -> str:
    return text if len(text) <= 60 else text[:57] + "…"


def parse_target(expr: str) -> Target:
    """Parse a target expression; raise InputError (French message) on anything else."""
    text = expr.strip()
    if not text:
        raise InputError(f"cible vide ({_EXAMPLE})")
    clauses = [clause.strip() for clause in text.split(",")]
    if len(clauses) == 1 and fold(clauses[0]) in _ALL:
        return Target()
    found: dict[str, frozenset[str]] = {}
    for clause in clauses:
        if not clause:
            raise InputError(f"cible invalide « {_show(text)} » : critère vide (virgule en trop ?)")
        if fold(clause) in _ALL:
            raise InputError("« all » ne se combine pas avec d'autres critères")
        raw_key, sep, raw_value = clause.partition("=")
        if not sep:
            raise InputError(f"critère « {_show(clause)} » sans « = » ({_EXAMPLE})")
        key = _KEYS.get(fold(raw_key))
        if key is None:
            raise InputError(
                f"critère inconnu « {_show(raw_key.strip())} » (connus : category, departement, finess ; "
                "la région est celle du bulletin)"
            )
        if key in found:
            raise InputError(f"critère « {key} » répété : séparer les valeurs par « | » ({key}=A|B)")
        found[key] = frozenset(_value(key, v.strip()) for v in raw_value.split("|"))
    return Target(
        categories=found.get("category", frozenset()),
        departements=found.get("departement", frozenset()),
        finess=found.get("finess", frozenset()),
    )


def _value(key: str, value: str) -> str:
    if not value:
        raise InputError(f"valeur vide pour « {key} »")
    if key == "category":
        category = normalise_category(value)
        if category is None:
            choices = ", ".join(CATEGORIES)
            raise InputError(f"catégorie inconnue « {_show(value)} » (valeurs possibles : {choices})")
        return category
    if key == "departement":
        departement = normalise_departement(value)
        if departement is None:
            raise InputError(f"département invalide « {_show(value)} »")
        return departement
    finess = value.upper()
    if not FINESS_RE.fullmatch(finess):
        raise InputError(f"numéro FINESS invalide « {_show(value)} »")
    return finess


def _where(stmt: _S, region: str, target: Target) -> _S:
    stmt = stmt.where(Establishment.region == region)
    if target.categories:
        stmt = stmt.where(Establishment.category.in_(sorted(target.categories)))
    if target.departements:
        stmt = stmt.where(Establishment.departement.in_(sorted(target.departements)))
    if target.finess:
        stmt = stmt.where(Establishment.finess.in_(sorted(target.finess)))
    return stmt


def _reachable(stmt: _S) -> _S:
    return stmt.join(Contact, Contact.finess == Establishment.finess).where(
        Contact.status == "active", Contact.role.in_(RECIPIENT_ROLES)
    )


def select_recipients(session: Session, region: str, target: Target, *, batch: int = 1000) -> Iterator[RecipientRow]:
    """Stream one RecipientRow per reachable establishment, ordered by FINESS."""
    preference = case({role: rank for rank, role in enumerate(RECIPIENT_ROLES)}, value=Contact.role)
    stmt = select(
        Establishment.finess,
        Establishment.name,
        Establishment.category,
        Establishment.departement,
        Contact.id,
        Contact.address,
        Contact.role,
    )
    stmt = _where(_reachable(stmt), region, target).order_by(Establishment.finess, preference, Contact.id)
    last: str | None = None
    for row in session.execute(stmt.execution_options(yield_per=batch)):
        if row[0] == last:
            continue  # a less preferred contact of the establishment just yielded
        last = row[0]
        yield RecipientRow(*row)


def count_recipients(session: Session, region: str, target: Target) -> int:
    """How many establishments select_recipients would yield."""
    stmt = _reachable(select(func.count(func.distinct(Establishment.finess))))
    return int(session.execute(_where(stmt, region, target)).scalar_one())


def count_establishments(session: Session, region: str, target: Target) -> int:
    """Establishments matched by the target, reachable or not (the dry run shows the difference)."""
    stmt = select(func.count()).select_from(Establishment)
    return int(session.execute(_where(stmt, region, target)).scalar_one())
