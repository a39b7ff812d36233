"""Case statuses and the explicit transition table (shared/domain/enumerations.md).

Incidents follow the steps of Instruction SG/SHFDS/FSSI/2017/281: received, acknowledged, sent
to the national cell for qualification, qualified, supported, followed, resolved (the structure
reports resolution, décret 2022-715), closed. Alerts: received, awaiting approval, broadcast,
closed. Closing is possible from any open state; reopening returns to a working state.
"""

from __future__ import annotations

from mailgateway.errors import MailgatewayError

INCIDENT_STATUSES = (
    "RECU", "PRIS_EN_COMPTE", "EN_QUALIFICATION", "QUALIFIE", "ACCOMPAGNEMENT", "SUIVI", "RESOLU", "CLOS",
)
ALERT_STATUSES = ("RECUE", "A_DIFFUSER", "DIFFUSEE", "CLOSE")
CLOSED = frozenset({"CLOS", "CLOSE"})

_INCIDENT: dict[str, frozenset[str]] = {
    "RECU": frozenset({"PRIS_EN_COMPTE", "EN_QUALIFICATION", "QUALIFIE", "CLOS"}),
    "PRIS_EN_COMPTE": frozenset({"EN_QUALIFICATION", "QUALIFIE", "ACCOMPAGNEMENT", "CLOS"}),
    "EN_QUALIFICATION": frozenset({"QUALIFIE", "ACCOMPAGNEMENT", "CLOS"}),
    "QUALIFIE": frozenset({"EN_QUALIFICATION", "ACCOMPAGNEMENT", "SUIVI", "RESOLU", "CLOS"}),
    "ACCOMPAGNEMENT": frozenset({"SUIVI", "RESOLU", "CLOS"}),
    "SUIVI": frozenset({"ACCOMPAGNEMENT", "RESOLU", "CLOS"}),
    "RESOLU": frozenset({"SUIVI", "CLOS"}),
    "CLOS": frozenset({"PRIS_EN_COMPTE", "SUIVI"}),  # #rouvrir
}
_ALERT: dict[str, frozenset[str]] = {
    "RECUE": frozenset({"A_DIFFUSER", "DIFFUSEE", "CLOSE"}),
    "A_DIFFUSER": frozenset({"DIFFUSEE", "CLOSE"}),
    "DIFFUSEE": frozenset({"CLOSE"}),
    "CLOSE": frozenset({"A_DIFFUSER"}),
}


class InvalidTransition(MailgatewayError):
    def __init__(self, current: str, target: str) -> None:
        self.current = current
        self.target = target
        super().__init__(f"passage de {current} à {target} impossible")


def statuses_for(kind: str) -> tuple[str, ...]:
    return ALERT_STATUSES if kind == "alert" else INCIDENT_STATUSES


def initial_status(kind: str) -> str:
    return "RECUE" if kind == "alert" else "RECU"


def allowed(kind: str, current: str, target: str) -> bool:
    table = _ALERT if kind == "alert" else _INCIDENT
    return target in table.get(current, frozenset())


def check_transition(kind: str, current: str, target: str) -> None:
    if current == target or not allowed(kind, current, target):
        raise InvalidTransition(current, target)


def is_open(status: str) -> bool:
    return status not in CLOSED
