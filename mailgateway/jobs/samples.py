"""Sample contexts of the scheduled mail templates, rendered by ``check-config``."""

from __future__ import annotations

from typing import Any

_ROW = {"reference": "SSI-ARA-2026-0001", "title": "Centre hospitalier — RANCONGICIEL", "status": "RECU",
        "severity": "NON_QUALIFIE", "kind": "incident", "establishment": "Centre hospitalier",
        "assignee": None, "opened_fr": "27/11/2026 à 08:30"}
_WEEK = {"label": "S48", "monday": "23/11", "count": 2, "ack": 0.5, "qualify": None}
_DELAY = {"count": 2, "median": 0.5, "p90": 1.0}
_BULLETIN = {"id": 1, "subject": "Campagne d'hameçonnage", "date": "2026-11-24", "recipients": 10,
             "delivered": 9, "acknowledged": 4, "delivered_pct": 90.0, "acknowledged_pct": 40.0}

SAMPLES: dict[str, dict[str, Any]] = {
    "rappel": {"since_fr": "27/11/2026 à 08:30", "due_fr": "27/11/2026 à 09:30", "late": "1 h 05 min",
               "allowed": "1 h", "business_hours": True, "step": 2, "steps": 2, "escalation": True},
    "digest": {"date_fr": "28/11/2026", "new_cases": [_ROW], "overdue": [{**_ROW, "due_fr": "27/11/2026 à 09:30",
                                                                         "step": 1}],
               "open_cases": [_ROW], "open_count": 1, "alerts": [{**_ROW, "kind": "alert", "status": "A_DIFFUSER"}],
               "bulletins": [{"id": 1, "subject": "Campagne d'hameçonnage", "status": "sending", "recipients": 10,
                              "created_fr": "27/11/2026 à 08:30"}],
               "bouncing": [{"address": "ssi@labo.example", "establishment": "Laboratoire", "finess": "690000001",
                             "role": "ssi"}], "limit": 50,
               "staff_failures": [{"id": 7, "recipient": "agent@ars.example", "kind": "notification_equipe",
                                   "failed_fr": "27/11/2026 à 08:31", "case_ref": "SSI-ARA-2026-0001",
                                   "answer": "552 5.3.4 Message size exceeds fixed limit", "status": "failed"}]},
    "rapport_hebdo": {"weeks": 12, "from_fr": "07/09/2026", "to_fr": "29/11/2026", "week_label": "S48", "total": 2,
                      "last_week": 2, "rows": [_WEEK], "by_type": {"RANCONGICIEL": 2},
                      "by_severity": {"GRAVE": 1, "NON_QUALIFIE": 1}, "ack": _DELAY,
                      "qualify": {"count": 0, "median": None, "p90": None}, "bulletins": [_BULLETIN],
                      "figures": [{"cid": "declarations_par_type@mailgateway",
                                   "title": "Déclarations par semaine et par type"}]},
    "quarantaine": {"since_fr": "27/11/2026 à 08:05", "count": 1, "limit": 100,
                    "messages": [{"id": 12, "received_fr": "27/11/2026 à 10:00", "sender": "x@exemple.test",
                                  "source": "smtp", "reason": "message non reconnu",
                                  "subject": "RE: [SSI-ARA-2026-9999] Compléments"}], "notice": True},
}
