"""The transition table of case statuses, pair by pair (cases/lifecycle.py).

Every (from, to) pair of every status is checked against the table written out below, which is
the documented one (module docstring of cases/lifecycle.py; Instruction SG/SHFDS/FSSI/2017/281 for
the steps of an incident): a pair listed is allowed, any other pair — including a status to
itself, and a status of the other kind — is refused with ``InvalidTransition``. Adding an illegal
transition (RECU→RESOLU, CLOS→QUALIFIE, CLOSE→DIFFUSEE...) or removing a legal one fails here.
"""

from __future__ import annotations

import itertools

import pytest

from mailgateway.cases.lifecycle import (
    InvalidTransition,
    allowed,
    check_transition,
    initial_status,
    is_open,
    statuses_for,
)
from mailgateway.statuses import ALERT_STATUSES, CLOSED, INCIDENT_STATUSES, CaseStatus

# Incidents: received → acknowledged → sent for qualification → qualified → supported / followed
# → resolved (the structure reports it, décret 2022-715) → closed. Closing from any open state;
# #rouvrir takes a closed case back to a working state.
INCIDENT = {
    "RECU": {"PRIS_EN_COMPTE", "EN_QUALIFICATION", "QUALIFIE", "CLOS"},
    "PRIS_EN_COMPTE": {"EN_QUALIFICATION", "QUALIFIE", "ACCOMPAGNEMENT", "CLOS"},
    "EN_QUALIFICATION": {"QUALIFIE", "ACCOMPAGNEMENT", "CLOS"},
    "QUALIFIE": {"EN_QUALIFICATION", "ACCOMPAGNEMENT", "SUIVI", "RESOLU", "CLOS"},
    "ACCOMPAGNEMENT": {"SUIVI", "RESOLU", "CLOS"},
    "SUIVI": {"ACCOMPAGNEMENT", "RESOLU", "CLOS"},
    "RESOLU": {"SUIVI", "CLOS"},
    "CLOS": {"PRIS_EN_COMPTE", "SUIVI"},
}
# Alerts: received → awaiting approval → broadcast → closed; reopening goes back to approval.
ALERT = {
    "RECUE": {"A_DIFFUSER", "DIFFUSEE", "CLOSE"},
    "A_DIFFUSER": {"DIFFUSEE", "CLOSE"},
    "DIFFUSEE": {"CLOSE"},
    "CLOSE": {"A_DIFFUSER"},
}
TABLES = {"incident": INCIDENT, "alert": ALERT}
EVERY_STATUS = [str(s) for s in CaseStatus]


def test_the_vocabulary_is_the_documented_one() -> None:
    assert [str(s) for s in INCIDENT_STATUSES] == list(INCIDENT)
    assert [str(s) for s in ALERT_STATUSES] == list(ALERT)
    assert set(EVERY_STATUS) == set(INCIDENT) | set(ALERT)
    assert statuses_for("incident") == INCIDENT_STATUSES
    assert statuses_for("alert") == ALERT_STATUSES
    assert initial_status("incident") == "RECU" and initial_status("alert") == "RECUE"
    assert CLOSED == {"CLOS", "CLOSE"}


@pytest.mark.parametrize("kind", ["incident", "alert"])
@pytest.mark.parametrize(("current", "target"), list(itertools.product(EVERY_STATUS, EVERY_STATUS)))
def test_every_pair_is_allowed_exactly_when_the_table_lists_it(kind: str, current: str, target: str) -> None:
    expected = target in TABLES[kind].get(current, set())
    assert allowed(kind, current, target) is expected
    if expected:
        check_transition(kind, current, target)
    else:
        with pytest.raises(InvalidTransition) as refused:
            check_transition(kind, current, target)
        assert (refused.value.current, refused.value.target) == (current, target)
        assert str(refused.value) == f"passage de {current} à {target} impossible"


def test_the_table_has_the_documented_shape() -> None:
    """The properties the docstring states, checked on the expected table itself."""
    for table, closed, first in ((INCIDENT, "CLOS", "RECU"), (ALERT, "CLOSE", "RECUE")):
        opens = [s for s in table if s != closed]
        assert all(closed in table[s] for s in opens)  # closing from any open state
        assert all(s not in targets for s, targets in table.items())  # no status to itself
        assert all(first not in targets for targets in table.values())  # nothing goes back to "received"
        assert table[closed] and closed not in table[closed]  # reopening leads to a working state


@pytest.mark.parametrize(("kind", "current", "target"), [
    ("incident", "RECU", "RESOLU"),
    ("incident", "CLOS", "QUALIFIE"),
    ("incident", "CLOS", "RESOLU"),
    ("incident", "RESOLU", "RECU"),
    ("incident", "RECU", "CLOSE"),
    ("alert", "CLOSE", "DIFFUSEE"),
    ("alert", "DIFFUSEE", "A_DIFFUSER"),
    ("alert", "RECUE", "CLOS"),
    ("incident", "inconnu", "CLOS"),
])
def test_the_transitions_the_issue_named_are_refused(kind: str, current: str, target: str) -> None:
    assert not allowed(kind, current, target)


def test_an_unknown_kind_follows_the_incident_table() -> None:
    assert allowed("declaration", "RECU", "PRIS_EN_COMPTE")
    assert not allowed("declaration", "RECUE", "A_DIFFUSER")
    assert statuses_for("declaration") == INCIDENT_STATUSES
    assert initial_status("declaration") == "RECU"


@pytest.mark.parametrize("status", EVERY_STATUS)
def test_is_open(status: str) -> None:
    assert is_open(status) is (status not in {"CLOS", "CLOSE"})
