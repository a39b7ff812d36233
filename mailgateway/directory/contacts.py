"""Import of the establishments' contacts CSV maintained by the ARS (README, "Command line").

``finess;name;category;departement;email;role`` — UTF-8 (BOM tolerated), header row, ';' or ','.
Several rows per establishment are allowed; ``ssi`` rows (the default role) are the bulletin
recipients, ``rssi``/``dsi`` their fall-backs (see targets.py).

All or nothing: the whole file is validated first and, if any line is wrong, nothing is written
and the report lists every error with its line number. A contact list half-imported would send
the next bulletin to an arbitrary subset without anyone noticing.

Decisions:
- A FINESS not yet in the directory (a new structure, or no FINESS extraction imported yet) is
  created from the row's name, category and département (``source = "contacts"``); without a
  name that is an error. A later FINESS import takes such establishments over.
- For establishments from the FINESS extraction, the file's name/category/département never
  override the national reference; a differing category is reported as a warning.
- Contacts absent from the file are kept and counted (a partial file must not silently
  unsubscribe a region); their status (bouncing, disabled) is never reset by a re-import.
"""

from __future__ import annotations

from collections.abc import Collection
from datetime import datetime
from os import PathLike
from typing import Any

from sqlalchemy import insert, select, update
from sqlalchemy.orm import Session

from mailgateway.directory.addresses import normalise_address
from mailgateway.directory.bounces import reactivate
from mailgateway.directory.categories import accepted_categories, normalise_category
from mailgateway.directory.csvfile import Row, fold, read_rows, read_text
from mailgateway.directory.finess import FINESS_RE
from mailgateway.directory.known import forget_known
from mailgateway.directory.regions import departement_of_finess, normalise_departement, region_of_departement
from mailgateway.directory.report import ImportReport
from mailgateway.store.models import Contact, Establishment

ROLES = ("ssi", "rssi", "dsi", "direction")

_ALIASES = {
    **{k: "finess" for k in ("finess", "n_finess", "no_finess", "numero_finess", "finess_et", "nofinesset")},
    **{k: "name" for k in ("name", "nom", "raison_sociale", "etablissement", "structure", "rs")},
    **{k: "category" for k in ("category", "categorie", "type")},
    **{k: "departement" for k in ("departement", "dept", "dep", "department")},
    **{
        k: "email"
        for k in (
            "email",
            "e_mail",
            "mail",
            "courriel",
            "adresse",
            "adresse_email",
            "adresse_e_mail",
            "adresse_mail",
            "address",
        )
    },
    **{k: "role" for k in ("role", "fonction")},
    # Optional: « actif » re-lists a contact taken out of use after refusals as active again.
    **{k: "status" for k in ("status", "statut", "etat")},
}
_ACTIVE = ("actif", "active", "oui")


def normalise_finess(value: str, line: int, report: ImportReport) -> str | None:
    finess = value.strip().upper()
    if len(finess) == 8 and finess.isdigit():
        # Spreadsheets turn 010000024 into the number 10000024.
        report.warn(line, f"FINESS « {finess} » complété en 0{finess} (zéro initial perdu par un tableur ?)")
        finess = "0" + finess
    return finess if FINESS_RE.fullmatch(finess) else None


def _establishment_values(row: Row, finess: str, radiotherapy: Collection[str]) -> dict[str, Any]:
    category = normalise_category(row.values.get("category", "")) or "AUTRE"
    if finess in radiotherapy:
        category = "CENTRE_RADIOTHERAPIE"
    dep_text = row.values.get("departement", "")
    departement = normalise_departement(dep_text) if dep_text else departement_of_finess(finess)
    return {
        "name": row.values.get("name", ""),
        "category": category,
        "departement": departement,
        "region": region_of_departement(departement),
    }


def _lines_fr(lines: list[int], shown: int = 3) -> str:
    """« ligne 8 », « lignes 3, 5 », « lignes 3, 5, 9 … 120 lignes »."""
    if len(lines) == 1:
        return f"ligne {lines[0]}"
    if len(lines) <= shown + 1:
        return "lignes " + ", ".join(map(str, lines))
    return "lignes " + ", ".join(map(str, lines[:shown])) + f" … {len(lines)} lignes"


def _report_unknown_categories(report: ImportReport, unknown: dict[str, list[int]]) -> None:
    """One error per unknown value, not one per line (a file with « PHARMACIE » on 120 lines gave
    120 identical lines), and the accepted values said once, with the first."""
    accepted = f" — valeurs possibles : {accepted_categories()}"
    for n, (value, lines) in enumerate(sorted(unknown.items(), key=lambda item: item[1][0])):
        hint = accepted if n == 0 else ""
        if len(lines) == 1:
            report.error(lines[0], f"catégorie inconnue « {value} »{hint}")
        else:
            report.error(lines[0], f"catégorie inconnue « {value} » ({_lines_fr(lines)}){hint}")


def import_contacts(
    session: Session,
    path: str | PathLike[str],
    now: datetime,
    *,
    radiotherapy_finess: Collection[str] = (),
) -> ImportReport:
    """Validate the whole file, then add its contacts (and missing establishments); caller commits."""
    forget_known(session)  # the domains « we deal with » change
    report = ImportReport("contacts")
    rows = read_rows(read_text(path, report), report, _ALIASES, ("finess", "email"))
    if rows is None:
        report.refused = True
        return report
    radiotherapy = frozenset(radiotherapy_finess)
    known = {
        r.finess: (r.name, r.category, r.departement, r.source)
        for r in session.execute(
            select(
                Establishment.finess,
                Establishment.name,
                Establishment.category,
                Establishment.departement,
                Establishment.source,
            )
        )
    }
    # First pass: the rows that can create an unknown establishment (first row with a name wins).
    creating: dict[str, Row] = {}
    valid: list[tuple[Row, str, str, str]] = []
    with_finess: list[tuple[Row, str]] = []  # every row whose FINESS is well-formed
    seen: dict[tuple[str, str, str], int] = {}
    unknown_categories: dict[str, list[int]] = {}  # value -> its lines
    for row in rows:
        v = row.values
        ok = True
        finess = normalise_finess(v["finess"], row.line, report)
        if finess is None:
            report.error(row.line, f"numéro FINESS invalide « {v['finess']} »")
            ok = False
        raw_address = v["email"]
        address = normalise_address(raw_address)
        if address is None:
            message = f"adresse invalide « {raw_address} »" if raw_address else "adresse manquante"
            report.error(row.line, message)
            ok = False
        role = fold(v.get("role", "")) or "ssi"
        if role not in ROLES:
            report.error(row.line, f"rôle inconnu « {v['role']} » (valeurs possibles : {', '.join(ROLES)})")
            ok = False
        if v.get("status") and fold(v["status"]) not in _ACTIVE:
            report.error(row.line, f"statut inconnu « {v['status']} » (valeur possible : actif, ou vide)")
            ok = False
        if v.get("category") and normalise_category(v["category"]) is None:
            unknown_categories.setdefault(v["category"].strip(), []).append(row.line)  # told once, below
            ok = False
        if v.get("departement") and normalise_departement(v["departement"]) is None:
            report.error(row.line, f"département invalide « {v['departement']} »")
            ok = False
        if finess is not None:
            with_finess.append((row, finess))
            if finess not in known and v.get("name") and finess not in creating:
                creating[finess] = row
        if not ok or finess is None or address is None:
            continue
        key = (finess, address, role)
        if key in seen:
            report.error(row.line, f"doublon de la ligne {seen[key]} ({finess}, {address}, {role})")
            continue
        seen[key] = row.line
        valid.append((row, finess, address, role))

    _report_unknown_categories(report, unknown_categories)
    for row, finess in with_finess:
        if finess not in known and finess not in creating:
            report.error(
                row.line,
                f"FINESS {finess} absent de l'annuaire et sans nom : "
                "impossible de créer l'établissement (renseigner la colonne name)",
            )
    for row, finess, _address, _role in valid:
        if finess in known and row.values.get("category"):
            category = normalise_category(row.values["category"])
            old_name, old_category, _dep, source = known[finess]
            if source == "finess" and category != old_category:
                report.warn(
                    row.line,
                    f"catégorie « {category} » différente de l'annuaire FINESS "
                    f"({old_category}) pour {old_name} : annuaire conservé",
                )
    if report.errors:
        report.errors.sort(key=lambda e: e.line)  # stable: a line's errors keep their order
        report.refused = True
        return report

    new_establishments = [
        {
            "finess": f,
            "finess_ej": None,
            "categetab": None,
            "commune": None,
            "source": "contacts",
            "updated_at": now,
            **_establishment_values(row, f, radiotherapy),
        }
        for f, row in creating.items()
    ]
    # Establishments this file created earlier follow the file (it is their only source).
    updated_establishments = []
    for row, finess, _a, _r in valid:
        if finess in known and known[finess][3] == "contacts" and row.values.get("name"):
            values = _establishment_values(row, finess, radiotherapy)
            old = known[finess]
            if (values["name"], values["category"], values["departement"]) != old[:3]:
                updated_establishments.append({"finess": finess, "updated_at": now, **values})
                known[finess] = (values["name"], values["category"], values["departement"], "contacts")
    existing = {
        (c.finess, c.address, c.role) for c in session.execute(select(Contact.finess, Contact.address, Contact.role))
    }
    new_contacts = [
        {
            "finess": f,
            "address": a,
            "role": r,
            "status": "active",
            "bounce_score": 0.0,
            "created_at": now,
            "updated_at": now,
        }
        for _row, f, a, r in valid
        if (f, a, r) not in existing
    ]
    if new_establishments:
        session.execute(insert(Establishment), new_establishments)
    if updated_establishments:
        session.execute(update(Establishment), updated_establishments)
    if new_contacts:
        session.execute(insert(Contact), new_contacts)
    report.reactivated = _reactivate_listed(session, valid, now)
    report.added = len(new_contacts)
    report.unchanged = len(valid) - len(new_contacts)
    report.changed = len(updated_establishments)
    report.absent = len(existing - set(seen))
    if new_establishments:
        report.warn(
            0,
            f"établissements créés depuis ce fichier (absents de l'extraction FINESS) : {len(new_establishments)}",
        )
    return report


def _reactivate_listed(session: Session, valid: list[tuple[Row, str, str, str]], now: datetime) -> int:
    """Contacts the file lists explicitly as active (``statut`` = actif) that refusals had taken out
    of use: active again, their counted refusals cleared (bounces.reactivate). Without the column a
    re-import leaves their status alone (module docstring)."""
    wanted = {(f, a, r) for row, f, a, r in valid if fold(row.values.get("status", "")) in _ACTIVE}
    if not wanted:
        return 0
    addresses = sorted({a for _f, a, _r in wanted})
    count = 0
    for start in range(0, len(addresses), 500):
        for contact in session.scalars(select(Contact).where(
                Contact.address.in_(addresses[start:start + 500]), Contact.status.in_(("bouncing", "disabled")))):
            if (contact.finess, contact.address, contact.role) in wanted:
                reactivate(contact, now)
                count += 1
    return count
