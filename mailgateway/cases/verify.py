"""``mailgateway cases verify``: is every case what the gateway wrote? (README, "Command line")

Checked, for each case: its event chain (cases/timeline.py), its row against the state sealed in
its latest event, its chain head against the region's audit ledger; for the whole database: each
region's ledger chain and head, cases present in the ledger but gone, and gaps in case numbers
(``case_sequences.last`` against the references that exist: references are never reused, so a
missing number is a deleted case).

Rows are read with the column types' decoders applied one value at a time: a row whose stored
data cannot be decoded (corrupt JSON, a date that is not one, a number where text belongs — SQLite
stores whatever it is given) is reported as altered, it never raises.

Databases from before migration 0002: their events carry no sealed state (``state_hash`` NULL)
and hash as they always did, so their chains still verify. The row of such a case is checked
against a sealed state from the first event written after the upgrade; until then only its chain
and its number are (the ledger holds no entry for it yet, and none is required).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from sqlalchemy import JSON, ColumnElement, select, type_coerce
from sqlalchemy.orm import Session
from sqlalchemy.sql.sqltypes import NullType

from mailgateway.cases.reference import REFERENCE_RE, format_reference
from mailgateway.cases.timeline import GENESIS, ChainBreak, event_hash, ledger_hash, state_hash
from mailgateway.store.models import AuditHead, AuditLedger, Base, Case, CaseEvent, CaseSequence

Anchor = tuple[int, str]  # (event seq, event hash) last anchored for a case
MAX_GAPS_PER_SEQUENCE = 20


def _python_type(column: Any) -> type | None:
    if isinstance(column.type, JSON):
        return dict  # case fields and event data are JSON objects
    try:
        expected: type = column.type.python_type
    except NotImplementedError:
        return None
    return None if expected is object else expected


def _decoded(session: Session, model: type[Base], *where: ColumnElement[bool], order_by: tuple[Any, ...] = (),
             limit: int | None = None) -> Iterator[tuple[dict[str, Any], list[str]]]:
    """Rows of ``model`` as ``(values, undecodable column names)``, never raising on bad data."""
    dialect = session.get_bind().dialect
    columns = list(model.__table__.columns)
    processors = [c.type.dialect_impl(dialect).result_processor(dialect, None) for c in columns]
    expected = [_python_type(c) for c in columns]
    # NullType: the driver's value, undecoded; each column's decoder is applied below, guarded.
    stmt = select(*[type_coerce(c, NullType()).label(c.name) for c in columns]).where(*where).order_by(*order_by)
    if limit is not None:
        stmt = stmt.limit(limit)
    for row in session.execute(stmt.execution_options(yield_per=500)):
        values: dict[str, Any] = {}
        bad: list[str] = []
        for column, processor, wanted, raw in zip(columns, processors, expected, row, strict=True):
            try:
                value = processor(raw) if processor is not None and raw is not None else raw
            except Exception:  # any decoding failure means altered data
                bad.append(column.name)
                continue
            if value is None and column.nullable:
                values[column.name] = None
            elif wanted is not None and (not isinstance(value, wanted) or (wanted is int and isinstance(value, bool))):
                bad.append(column.name)
            else:
                values[column.name] = value
        yield values, bad


def _label(values: dict[str, Any]) -> str:
    reference = values.get("reference")
    return reference if isinstance(reference, str) else f"dossier n°{values.get('id')}"


def verify_references(session: Session, reference: str | None) -> tuple[list[ChainBreak], int]:
    """Problems found (the first one first) and the number of cases checked."""
    if reference:
        return _verify_one(session, reference.strip().upper())
    return _verify_all(session)


def _verify_all(session: Session) -> tuple[list[ChainBreak], int]:
    raw_references: Any = session.execute(select(Case.id, type_coerce(Case.reference, NullType())))
    references: dict[int, str] = {case_id: ref for case_id, ref in raw_references if isinstance(ref, str)}
    ledger_problems, anchors = _verify_ledger(session)
    problems: list[ChainBreak] = []
    existing: set[str] = set()
    checked = 0
    for values, bad in _decoded(session, Case, order_by=(Case.id,)):
        checked += 1
        existing.add(_label(values))
        problems.extend(_verify_case(session, values, bad, lambda i: references.get(i) if i is not None else None,
                                     anchors.get(_label(values))))
    deleted = sorted(set(anchors) - existing)
    problems.extend(ChainBreak(ref, None, "dossier supprimé : présent au registre d'audit, absent de la base")
                    for ref in deleted)
    problems.extend(p for p in _number_gaps(session, existing) if p.case_ref not in deleted)
    return problems + ledger_problems, checked


def _verify_one(session: Session, reference: str) -> tuple[list[ChainBreak], int]:
    anchor_problems, anchor = _anchor_of(session, reference)
    rows = list(_decoded(session, Case, Case.reference == reference))
    if not rows:
        if anchor is not None:
            return [ChainBreak(reference, None, "dossier supprimé : présent au registre d'audit, absent de la base")], 0
        return _issued_but_missing(session, reference), 0

    def reference_of(case_id: int | None) -> str | None:
        if case_id is None:
            return None
        found = session.scalar(select(type_coerce(Case.reference, NullType())).where(Case.id == case_id))
        return found if isinstance(found, str) else None

    values, bad = rows[0]
    return anchor_problems + _verify_case(session, values, bad, reference_of, anchor), 1


def _verify_case(session: Session, values: dict[str, Any], bad: list[str],
                 reference_of: Callable[[int | None], str | None], anchor: Anchor | None) -> list[ChainBreak]:
    """The first problem of one case: its row, its chain, its state, its anchor."""
    ref = _label(values)
    if bad:
        return [ChainBreak(ref, None, f"données du dossier illisibles ou altérées ({', '.join(bad)})")]
    prev, count, sealed = GENESIS, 0, None
    events = _decoded(session, CaseEvent, CaseEvent.case_id == values["id"], order_by=(CaseEvent.seq, CaseEvent.id))
    for event, event_bad in events:
        expected = count + 1
        if event_bad:
            damaged = ", ".join(event_bad)
            return [ChainBreak(ref, expected, f"données de l'événement illisibles ou altérées ({damaged})")]
        if event["seq"] != expected:
            return [ChainBreak(ref, expected, "événement manquant")]
        if event["prev_hash"] != prev:
            return [ChainBreak(ref, expected, "chaînage rompu (hash précédent différent)")]
        computed = event_hash(prev, ref, expected, event["at"], event["actor"], event["type"], event["data"],
                              event["state_hash"])
        if computed != event["hash"]:
            return [ChainBreak(ref, expected, "contenu modifié (hash différent)")]
        if sealed is not None and event["state_hash"] is None:  # written since 0002, yet in the old format
            return [ChainBreak(ref, expected, "événement sans état scellé après un événement scellé")]
        prev, count, sealed = event["hash"], expected, event["state_hash"]
    if count == 0:
        return [ChainBreak(ref, 1, "aucun événement : chronologie supprimée")]
    if values["last_event_hash"] not in (None, prev) or values["event_count"] != count:
        return [ChainBreak(ref, count + 1, "fin de chaîne supprimée")]
    if sealed is not None and state_hash(values, reference_of) != sealed:
        return [ChainBreak(ref, None, f"dossier modifié hors chronologie : statut, gravité, déclarant, TLP, champs "
                                      f"ou liens diffèrent de l'état scellé par l'événement {count}")]
    if anchor is None and sealed is not None:
        return [ChainBreak(ref, count, "événement absent du registre d'audit (ajouté hors passerelle)")]
    if anchor is not None and anchor != (count, prev):
        return [ChainBreak(ref, None, f"chronologie différente du registre d'audit (événement {anchor[0]} ancré, "
                                      f"{count} présent(s)) : fin de chaîne supprimée ou réécrite")]
    return []


def _verify_ledger(session: Session) -> tuple[list[ChainBreak], dict[str, Anchor]]:
    """Each region's ledger chain and head; the last anchor of every case reference in it."""
    problems: list[ChainBreak] = []
    anchors: dict[str, Anchor] = {}
    last: dict[str, tuple[int, str]] = {}
    broken: set[str] = set()
    for entry, bad in _decoded(session, AuditLedger, order_by=(AuditLedger.region, AuditLedger.seq)):
        region = str(entry.get("region"))
        if region in broken:
            continue
        seq, prev = last.get(region, (0, GENESIS))
        name = f"registre d'audit {region}"
        if bad:
            reason = f"entrée {seq + 1} illisible ou altérée ({', '.join(bad)})"
        elif entry["seq"] != seq + 1:
            reason = f"entrée {seq + 1} manquante"
        elif entry["prev_hash"] != prev:
            reason = f"entrée {seq + 1} : chaînage rompu"
        elif entry["hash"] != ledger_hash(prev, region, entry["seq"], entry["case_reference"], entry["event_seq"],
                                          entry["event_hash"]):
            reason = f"entrée {seq + 1} : contenu modifié (hash différent)"
        else:
            last[region] = (entry["seq"], entry["hash"])
            anchors[entry["case_reference"]] = (entry["event_seq"], entry["event_hash"])
            continue
        problems.append(ChainBreak(name, None, reason))
        broken.add(region)
    heads: dict[str, tuple[int, str]] = {}
    for head, bad in _decoded(session, AuditHead, order_by=(AuditHead.region,)):
        if bad:
            problems.append(ChainBreak(f"registre d'audit {_label(head)}", None, "tête illisible ou altérée"))
        else:
            heads[head["region"]] = (head["seq"], head["hash"])
    for region in sorted((set(heads) | set(last)) - broken):
        if heads.get(region, (0, GENESIS)) != last.get(region, (0, GENESIS)):
            problems.append(ChainBreak(f"registre d'audit {region}", None,
                                       "tête différente de la dernière entrée : entrées supprimées ou ajoutées"))
    return problems, anchors


def _anchor_of(session: Session, reference: str) -> tuple[list[ChainBreak], Anchor | None]:
    rows = list(_decoded(session, AuditLedger, AuditLedger.case_reference == reference,
                         order_by=(AuditLedger.seq.desc(),), limit=1))
    if not rows:
        return [], None
    entry, bad = rows[0]
    if bad:
        return [ChainBreak(reference, None, "registre d'audit illisible ou altéré")], None
    return [], (entry["event_seq"], entry["event_hash"])


def _issued_but_missing(session: Session, reference: str) -> list[ChainBreak]:
    """A reference its sequence has issued but that has no case: a deleted case (else unknown)."""
    match = REFERENCE_RE.match(reference)
    if match is None:
        return []
    rows = list(_decoded(session, CaseSequence, CaseSequence.region == match["region"],
                         CaseSequence.year == int(match["year"])))
    last = rows[0][0].get("last") if rows else None
    if isinstance(last, int) and int(match["number"]) <= last:
        return [ChainBreak(reference, None, f"dossier manquant : numéro attribué (séquence {match['region']} "
                                            f"{match['year']} : {last}), dossier absent de la base")]
    return []


def _number_gaps(session: Session, existing: set[str]) -> list[ChainBreak]:
    """Numbers issued by a case sequence without their case, and cases no sequence issued."""
    problems: list[ChainBreak] = []
    issued: dict[tuple[str, int], int] = {}
    for row, bad in _decoded(session, CaseSequence):
        if bad:
            problems.append(ChainBreak(f"séquence {row.get('region')}/{row.get('year')}", None,
                                       "séquence de numérotation illisible ou altérée"))
        else:
            issued[(row["region"], row["year"])] = row["last"]
    numbers: dict[tuple[str, int], set[int]] = {}
    for ref in sorted(existing):
        match = REFERENCE_RE.match(ref)
        if match is None:
            problems.append(ChainBreak(ref, None, "référence invalide"))
            continue
        numbers.setdefault((match["region"], int(match["year"])), set()).add(int(match["number"]))
    for (region, year) in sorted(set(issued) | set(numbers)):
        last, present = issued.get((region, year), 0), numbers.get((region, year), set())
        missing = (n for n in range(1, last + 1) if n not in present)
        for n, _ in zip(missing, range(MAX_GAPS_PER_SEQUENCE), strict=False):
            problems.append(ChainBreak(format_reference(region, year, n), None,
                                       f"dossier manquant : numéro attribué (séquence {region} {year} : {last}), "
                                       "dossier absent de la base"))
        problems.extend(ChainBreak(format_reference(region, year, n), None,
                                   f"numéro jamais attribué (séquence {region} {year} : {last}) : dossier ajouté "
                                   "hors passerelle") for n in sorted(present) if n > last)
    return problems


def ledger_heads(session: Session) -> list[tuple[str, int, str]]:
    """(region, entries, head hash) of every region's ledger: what to copy elsewhere as an anchor."""
    return [(region, seq, head_hash) for region, seq, head_hash in session.execute(
        select(AuditHead.region, AuditHead.seq, AuditHead.hash).order_by(AuditHead.region))]


def verify_chain(session: Session, case: Case) -> ChainBreak | None:
    """Return the first problem of ``case``'s timeline, state and anchor, or None when all hold."""
    problems, _checked = verify_references(session, case.reference)
    return problems[0] if problems else None
