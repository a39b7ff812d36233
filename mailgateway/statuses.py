"""The case vocabulary: statuses and severities, as stored (the strings never change: no migration).

``StrEnum`` members are their strings: they compare equal to the stored values, serialise to them
in JSON and templates, and let mypy catch a misspelt status. The transitions between statuses are
the domain's (``cases/lifecycle.py``); the names are here, in the base layer, because the
configuration validates them (``[scheduler.deadlines]``) and every layer prints them.
"""

from __future__ import annotations

from enum import StrEnum


class CaseStatus(StrEnum):
    # Incidents (Instruction SG/SHFDS/FSSI/2017/281): received, acknowledged, sent to the national
    # cell for qualification, qualified, supported, followed, resolved, closed.
    RECU = "RECU"
    PRIS_EN_COMPTE = "PRIS_EN_COMPTE"
    EN_QUALIFICATION = "EN_QUALIFICATION"
    QUALIFIE = "QUALIFIE"
    ACCOMPAGNEMENT = "ACCOMPAGNEMENT"
    SUIVI = "SUIVI"
    RESOLU = "RESOLU"
    CLOS = "CLOS"
    # Alerts: received, awaiting approval, broadcast, closed.
    RECUE = "RECUE"
    A_DIFFUSER = "A_DIFFUSER"
    DIFFUSEE = "DIFFUSEE"
    CLOSE = "CLOSE"


class Severity(StrEnum):
    GRAVE = "GRAVE"
    SIGNIFICATIF = "SIGNIFICATIF"
    SANS_SUITE = "SANS_SUITE"
    NON_QUALIFIE = "NON_QUALIFIE"


S = CaseStatus
INCIDENT_STATUSES: tuple[CaseStatus, ...] = (
    S.RECU, S.PRIS_EN_COMPTE, S.EN_QUALIFICATION, S.QUALIFIE, S.ACCOMPAGNEMENT, S.SUIVI, S.RESOLU, S.CLOS,
)
ALERT_STATUSES: tuple[CaseStatus, ...] = (S.RECUE, S.A_DIFFUSER, S.DIFFUSEE, S.CLOSE)
CLOSED: frozenset[CaseStatus] = frozenset({S.CLOS, S.CLOSE})
SEVERITIES: tuple[Severity, ...] = tuple(Severity)
del S

# A bulletin's state as ARS staff and operators read it (CLI, mail); ``--json`` keeps the stored
# values (a contract).
BULLETIN_STATUS_FR = {"draft": "brouillon", "approved": "approuvé", "sending": "en envoi", "sent": "envoyé",
                      "cancelled": "annulé"}
