"""Bulletin target expressions and the recipients they select (README, "Command line").

Grammar: ``all``, or clauses ``key=value[|value...]`` joined with ``,`` (and). Keys:
``category``/``categorie`` (structure category identifiers, see categories.py), ``departement``
(FINESS codes; ``1``, ``974`` are accepted and normalised) and ``finess`` (an extension, to send a
bulletin to a few named structures); accents and case do not matter (``catégorie``,
``Département``). ``|`` is "or" within a key. ``region``/``région`` may be written but only
names the bulletin's own region (anything else is refused): the region of a bulletin is never
chosen by its target. Sets joined with ``;`` are a union (DESIGN.md: each ``#cible`` line of a
mail is one set, several lines add up).

By mail (``parse_cible``), one ``#cible`` line is written as people write: ``categorie=LBM,ESMS
departement=69,01`` (clauses separated by blanks, values by commas), ``catégorie : LBM, ESMS``, or
the expression above.

Recipients: one row per establishment, its active ``ssi`` contact, falling back to ``rssi`` then
``dsi`` when the establishment has no active ``ssi`` contact (bouncing, disabled or missing).
Rows are streamed from one ordered query (``yield_per``), so a 40,000-recipient fan-out holds
one batch in memory, not the whole list.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, NamedTuple, TypeVar

from sqlalchemy import ColumnElement, Select, and_, case, func, or_, select, true
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
    "region": "region",
    "regions": "region",
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
TARGET_KEYS = frozenset(_KEYS)  # the keys a « #cible » clause may start with (folded)
# Any select statement, whatever its columns (Select is variadic in SQLAlchemy 2.1).
_S = TypeVar("_S", bound="Select[*tuple[Any, ...]]")
_EXAMPLE = "exemples : « all », « categorie=LBM », « categorie=ESMS,departement=69|01 »"
# The French name of each key, for messages (staff write French keys).
FRENCH_KEYS = {"category": "categorie", "departement": "departement", "region": "region", "finess": "finess"}
_KNOWN_KEYS = "categorie, departement, region, finess"
MAX_SETS = 50  # "#cible" lines of one bulletin (a mail holds at most 50 commands anyway)


@dataclass(frozen=True)
class Target:
    """What a bulletin is sent to within its region; empty sets mean "any"."""

    categories: frozenset[str] = frozenset()
    departements: frozenset[str] = frozenset()
    finess: frozenset[str] = frozenset()
    regions: frozenset[str] = frozenset()  # only ever the bulletin's own (check_region)
    # A union: establishments of any of these sets (the fields above are then empty).
    alternatives: tuple[Target, ...] = ()

    @property
    def is_all(self) -> bool:
        if self.alternatives:
            return any(t.is_all for t in self.alternatives)
        return not (self.categories or self.departements or self.finess)

    @property
    def sets(self) -> tuple[Target, ...]:
        """The sets of the union (one for a plain target)."""
        return self.alternatives or (self,)

    def __str__(self) -> str:
        """Canonical expression (parse_target(str(t)) == t), as stored on the bulletin."""
        if self.alternatives:
            return " ; ".join(str(t) for t in self.alternatives)
        if self.is_all and not self.regions:
            return "all"
        parts = [
            f"{key}={'|'.join(sorted(values))}"
            for key, values in (
                ("category", self.categories),
                ("departement", self.departements),
                ("finess", self.finess),
                ("region", self.regions),
            )
            if values
        ]
        return ",".join(parts)

    def check_region(self, region: str) -> None:
        """Refuse départements outside the bulletin's region (they would silently select nobody),
        and a ``region`` clause naming another region."""
        info = regions().get(region)
        if info is None:
            raise InputError(f"région inconnue « {region} »")
        for one in self.sets:
            outside = sorted(one.departements - set(info.departements))
            if outside:
                raise InputError(f"departement : département(s) hors de la région {region} : {', '.join(outside)}")
            other = sorted(one.regions - {region})
            if other:
                raise InputError(f"region : « {', '.join(other)} » n'est pas la région du bulletin ({region}) ; "
                                 "un bulletin ne s'adresse qu'aux établissements de sa région")

    def describe(self) -> str:
        """The target in French, for the staff who wrote it (the bulletin preview)."""
        if self.is_all:
            return "tous les établissements de la région"
        texts = []
        for one in self.sets:
            parts = [f"{label} {' ou '.join(sorted(values))}" for label, values in (
                ("catégorie", one.categories), ("département", one.departements), ("FINESS", one.finess)) if values]
            texts.append(" et ".join(parts))
        return " ; ou ".join(texts)


def union(sets: list[Target]) -> Target:
    """The union of ``sets`` (each a plain target or itself a union), canonical: sorted, no repeat."""
    flat = {str(t): t for one in sets for t in one.sets}
    if not flat:
        raise InputError(f"cible vide ({_EXAMPLE})")
    if len(flat) > MAX_SETS:
        raise InputError(f"plus de {MAX_SETS} ensembles de destinataires")
    if any(t.is_all for t in flat.values()):
        # Everyone; a region clause is kept for check_region to refuse another region.
        return Target(regions=frozenset().union(*(t.regions for t in flat.values())))
    if len(flat) == 1:
        return next(iter(flat.values()))
    return Target(alternatives=tuple(flat[key] for key in sorted(flat)))


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
    if ";" in text:
        parts = text.split(";")
        if not all(part.strip() for part in parts):
            raise InputError(f"cible invalide « {_show(text)} » : ensemble vide (point-virgule en trop ?)")
        return union([_parse_set(part.strip()) for part in parts[: MAX_SETS + 1]])
    return _parse_set(text)


def _parse_set(text: str) -> Target:
    """One set: ``all`` or clauses joined with ``,``."""
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
            raise InputError(_unknown_key(raw_key))
        written = _show(raw_key.strip())
        if key in found:
            raise InputError(f"critère « {written} » répété : séparer les valeurs par « | » ({written}=A|B)")
        found[key] = frozenset(_value(key, v.strip(), written) for v in raw_value.split("|"))
    return _target(found)


def _unknown_key(raw_key: str) -> str:
    return (f"critère inconnu « {_show(raw_key.strip())} » (critères : {_KNOWN_KEYS} ; "
            "la région est celle du bulletin)")


def _target(found: dict[str, frozenset[str]]) -> Target:
    return Target(
        categories=found.get("category", frozenset()),
        departements=found.get("departement", frozenset()),
        finess=found.get("finess", frozenset()),
        regions=found.get("region", frozenset()),
    )


def _value(key: str, value: str, written: str | None = None) -> str:
    """``value`` of ``key`` in its canonical form; the message names the key as written (else in French)."""
    name = written or FRENCH_KEYS[key]
    if not value:
        raise InputError(f"valeur vide pour « {name} »")
    if key == "category":
        category = normalise_category(value)
        if category is None:
            choices = ", ".join(CATEGORIES)
            raise InputError(f"{name} : catégorie inconnue « {_show(value)} » (valeurs possibles : {choices} ; "
                             "leur nom en français aussi : « établissement de santé », « LBM », « EHPAD »…)")
        return category
    if key == "departement":
        departement = normalise_departement(value)
        if departement is None:
            raise InputError(f"{name} : département invalide « {_show(value)} » (un numéro : 69, 01, 2A, 974)")
        return departement
    if key == "region":
        return _region_code(value, name)
    finess = value.upper()
    if not FINESS_RE.fullmatch(finess):
        raise InputError(f"{name} : numéro FINESS invalide « {_show(value)} » (9 caractères)")
    return finess


def _region_code(value: str, name: str) -> str:
    """A region by its code (ARA), INSEE number (84) or name (Auvergne-Rhône-Alpes)."""
    wanted = fold(value)
    for region in regions().values():
        if wanted in (fold(region.code), region.insee, fold(region.name)):
            return region.code
    raise InputError(f"{name} : région inconnue « {_show(value)} » (un code comme ARA, ou le nom de la région)")


def parse_cible(line: str) -> Target:
    """One ``#cible`` line of a mail (what follows the command) as one set of establishments.

    Clauses ``clé=valeurs`` separated by blanks, values separated by commas (``|`` also works),
    ``:`` accepted for ``=``; the expression grammar of ``parse_target`` is read too, since a comma
    followed by ``clé=`` starts a clause. French messages name the key as the writer wrote it.
    String operations only: linear in the length of the line.
    """
    text = line.replace("=", " = ").replace(":", " = ")
    for separator in (",", "|", ";"):
        text = text.replace(separator, " ")
    words = text.split()[:200]
    if not words:
        raise InputError(f"ligne « #cible » vide ({_EXAMPLE_MAIL})")
    if len(words) == 1 and fold(words[0]) in _ALL:
        return Target()
    found: dict[str, set[str]] = {}
    key: str | None = None
    written = ""
    i = 0
    while i < len(words):
        word = words[i]
        if i + 1 < len(words) and words[i + 1] == "=":
            written = _show(word)
            key = _KEYS.get(fold(word))
            if key is None:
                raise InputError(_unknown_key(word))
            found.setdefault(key, set())
            i += 2
            continue
        if word == "=":
            raise InputError(f"« = » sans critère devant ({_EXAMPLE_MAIL})")
        if fold(word) in _ALL:
            raise InputError("« tous » ne se combine pas avec d'autres critères")
        if key is None:
            raise InputError(f"valeur « {_show(word)} » sans critère devant ({_EXAMPLE_MAIL})")
        if key == "category":
            # A category by its French name, blanks and all (« établissement de santé »,
            # « laboratoire de biologie médicale »): « catégorie inconnue « de » » (an outside
            # tester, an agent). The longest run of words that names one.
            words_taken, category = _category_words(words, i)
            if category is not None:
                found[key].add(category)
                i += words_taken
                continue
        found[key].add(_value(key, word, written))
        i += 1
    for name, values in found.items():
        if not values:
            raise InputError(f"valeur vide pour « {FRENCH_KEYS[name]} » ({_EXAMPLE_MAIL})")
    return _target({k: frozenset(v) for k, v in found.items()})


def _category_words(words: list[str], start: int) -> tuple[int, str | None]:
    """(how many words, the category) of the longest run of words from ``start`` (at most six,
    not past the next « clé = ») that names a category; (0, None) when none does."""
    end = start
    while end < len(words) and end - start < 6 and words[end] != "=" and not (
            end + 1 < len(words) and words[end + 1] == "="):
        end += 1
    for stop in range(end, start, -1):
        category = normalise_category(" ".join(words[start:stop]))
        if category is not None:
            return stop - start, category
    return 0, None


_EXAMPLE_MAIL = "exemple : « #cible categorie=LBM,ESMS departement=69,01 », « #cible tous »"


def _where(stmt: _S, region: str, target: Target) -> _S:
    stmt = stmt.where(Establishment.region == region)
    if target.is_all:
        return stmt
    return stmt.where(or_(*(_condition(one) for one in target.sets)))


def _condition(target: Target) -> ColumnElement[bool]:
    """One set as a condition (the region clause selects nothing more: it is the bulletin's)."""
    found: list[ColumnElement[bool]] = []
    if target.categories:
        found.append(Establishment.category.in_(sorted(target.categories)))
    if target.departements:
        found.append(Establishment.departement.in_(sorted(target.departements)))
    if target.finess:
        found.append(Establishment.finess.in_(sorted(target.finess)))
    return and_(true(), *found)


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
