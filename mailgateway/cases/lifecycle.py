"""The explicit transition table between case statuses (the names: ``mailgateway/statuses.py``).

Incidents follow the steps of Instruction SG/SHFDS/FSSI/2017/281: received, acknowledged, sent
to the national cell for qualification, qualified, supported, followed, resolved (the structure
reports resolution, décret 2022-715), closed. Alerts: received, awaiting approval, broadcast,
closed. Closing is possible from any open state; reopening returns to a working state.
"""

from __future__ import annotations

from mailgateway.errors import MailgatewayError
from mailgateway.statuses import ALERT_STATUSES, CLOSED, INCIDENT_STATUSES, CaseStatus

__all__ = ["ALERT_STATUSES", "CLOSED", "INCIDENT_STATUSES", "InvalidTransition", "allowed", "check_transition",
           "initial_status", "is_open", "statuses_for"]

S = CaseStatus
_INCIDENT: dict[str, frozenset[str]] = {
    S.RECU: frozenset({S.PRIS_EN_COMPTE, S.EN_QUALIFICATION, S.QUALIFIE, S.CLOS}),
    S.PRIS_EN_COMPTE: frozenset({S.EN_QUALIFICATION, S.QUALIFIE, S.ACCOMPAGNEMENT, S.CLOS}),
    S.EN_QUALIFICATION: frozenset({S.QUALIFIE, S.ACCOMPAGNEMENT, S.CLOS}),
    S.QUALIFIE: frozenset({S.EN_QUALIFICATION, S.ACCOMPAGNEMENT, S.SUIVI, S.RESOLU, S.CLOS}),
    S.ACCOMPAGNEMENT: frozenset({S.SUIVI, S.RESOLU, S.CLOS}),
    S.SUIVI: frozenset({S.ACCOMPAGNEMENT, S.RESOLU, S.CLOS}),
    S.RESOLU: frozenset({S.SUIVI, S.CLOS}),
    S.CLOS: frozenset({S.PRIS_EN_COMPTE, S.SUIVI}),  # #rouvrir
}
_ALERT: dict[str, frozenset[str]] = {
    S.RECUE: frozenset({S.A_DIFFUSER, S.DIFFUSEE, S.CLOSE}),
    S.A_DIFFUSER: frozenset({S.DIFFUSEE, S.CLOSE}),
    S.DIFFUSEE: frozenset({S.CLOSE}),
    S.CLOSE: frozenset({S.A_DIFFUSER}),
}


class InvalidTransition(MailgatewayError):
    def __init__(self, current: str, target: str) -> None:
        self.current = current
        self.target = target
        super().__init__(f"passage de {current} à {target} impossible")


def statuses_for(kind: str) -> tuple[CaseStatus, ...]:
    return ALERT_STATUSES if kind == "alert" else INCIDENT_STATUSES


def initial_status(kind: str) -> CaseStatus:
    return CaseStatus.RECUE if kind == "alert" else CaseStatus.RECU


def allowed(kind: str, current: str, target: str) -> bool:
    table = _ALERT if kind == "alert" else _INCIDENT
    return target in table.get(current, frozenset())


def check_transition(kind: str, current: str, target: str) -> None:
    if current == target or not allowed(kind, current, target):
        raise InvalidTransition(current, target)


def is_open(status: str) -> bool:
    return status not in CLOSED
