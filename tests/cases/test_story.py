"""« #statut REF » by mail and ``cases show REF`` tell the case's story in French (cases/story.py):
each event with its Paris time, who, and what — never a code or an event type."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest

from mailgateway.cases import views
from mailgateway.cases.story import describe, story
from mailgateway.store.engine import reading
from tests.support import casemail
from tests.support.casegateway import Gateway, make_gateway

LINE = re.compile(r"(\d\d)/(\d\d)/(\d{4}) à (\d\d):(\d\d) — (\S+) — (.+)")
CODES = ("PRIS_EN_COMPTE", "NON_QUALIFIE", "QUALIFIE", "ACCOMPAGNEMENT", "mail_sortant", "message_recu",
         "notification_equipe", "statut —", "+00:00", "T09:")


@pytest.fixture
def gw(sqlite_url: str) -> Iterator[Gateway]:
    yield from make_gateway(sqlite_url)


def _story_of_mail(gw: Gateway, ref: str) -> list[str]:
    gw.feed(casemail.staff_mail(f"#statut {ref}\n", subject=f"#statut {ref}"))
    text = casemail.text_of(gw.last("synthese", "agent@ars.test").raw)
    lines = [line.strip() for line in text.split("Chronologie (derniers événements) :", 1)[1].splitlines()]
    return lines[1:lines.index("", 1)]



def _worked_case(gw: Gateway) -> str:
    ref = gw.declare()
    gw.clock.advance(minutes=20)
    gw.command(ref, "#assigner moi\n#qualifier significatif\n#note Appel au RSSI : sauvegardes hors ligne intactes\n"
                    "#repondre Bonjour, nous prenons contact avec votre RSSI dans l'heure.\n")
    gw.clock.advance(hours=2)
    gw.command(ref, "#statut accompagnement\n")
    return ref


def test_statut_by_mail_tells_who_did_what_and_when_in_french(gw: Gateway) -> None:
    ref = _worked_case(gw)
    lines = _story_of_mail(gw, ref)
    text = "\n".join(lines)
    for code in CODES:
        assert code not in text, (code, text)
    # Paris time (the FixedClock is 09:00 UTC, 10:00 in Paris in November), French format.
    assert lines[0].startswith("27/11/2026 à 10:00 — dsi@chu.test — Message reçu (déclaration)"), lines[0]
    assert "27/11/2026 à 10:00 — passerelle — Statut : reçu → pris en compte (accusé de réception envoyé)" in lines
    assert ("27/11/2026 à 10:00 — passerelle — Notification à l'équipe envoyée à agent@ars.test, referent@ars.test"
            in lines)
    assert "27/11/2026 à 10:20 — agent@ars.test — Dossier assigné à agent@ars.test" in lines
    assert "27/11/2026 à 10:20 — agent@ars.test — Gravité : non qualifiée → significatif" in lines
    assert "27/11/2026 à 10:20 — agent@ars.test — Statut : pris en compte → qualifié (gravité significatif)" in lines
    assert ("27/11/2026 à 10:20 — agent@ars.test — Note : « Appel au RSSI : sauvegardes hors ligne intactes »"
            in lines)
    assert any(line.startswith("27/11/2026 à 10:20 — agent@ars.test — Réponse envoyée à dsi@chu.test : "
                               "« Bonjour, nous prenons contact") for line in lines), text
    assert "27/11/2026 à 12:20 — agent@ars.test — Statut : qualifié → en accompagnement" in lines
    # Every line is « when — who — what », in time order.
    stamps = []
    for line in lines:
        match = LINE.fullmatch(line)
        assert match, line
        day, month, year, hour, minute = (int(g) for g in match.groups()[:5])
        stamps.append((year, month, day, hour, minute))
    assert stamps == sorted(stamps)


def test_cases_show_prints_the_same_story_as_the_mail(gw: Gateway) -> None:
    ref = _worked_case(gw)
    with reading(gw.app.factory) as session:
        detail = views.show_case(session, ref)
    assert detail is not None
    shown = views.format_case(detail)
    assert "statut : en accompagnement   gravité : significatif" in shown
    assert "Centre hospitalier — rançongiciel" in shown
    by_mail = _story_of_mail(gw, ref)
    # The mail's story has one more line: the « #statut » mail itself, received after ``show``.
    assert [f"    {line}" for line in by_mail[:-1]] == shown.split("  chronologie :\n", 1)[1].splitlines()
    assert detail["story"] == by_mail[:-1]


class _Event:
    def __init__(self, seq: int, at: datetime, type_: str, data: dict[str, object], actor: str = "passerelle"):
        self.seq, self.at, self.type, self.data, self.actor = seq, at, type_, data, actor


def test_events_are_told_in_time_order_and_unknown_types_stay_readable() -> None:
    later = _Event(1, datetime(2026, 11, 27, 15, 0, tzinfo=UTC), "statut", {"de": "SUIVI", "vers": "RESOLU"})
    earlier = _Event(2, datetime(2026, 11, 27, 8, 0, tzinfo=UTC), "quarantaine_liberee",
                     {"motif": "référence inconnue"}, actor="agent@ars.test")
    lines = story([later, earlier])
    assert lines == [
        "27/11/2026 à 09:00 — agent@ars.test — Quarantaine liberee (référence inconnue)",
        "27/11/2026 à 16:00 — passerelle — Statut : en suivi → résolu",
    ]


SAMPLES: list[tuple[str, dict[str, object]]] = [
    ("statut", {"de": "PRIS_EN_COMPTE", "vers": "CLOS", "motif": "gravité SANS_SUITE"}),
    ("qualification", {"de": "NON_QUALIFIE", "vers": "GRAVE"}),
    ("envoi_refuse", {"destinataire": "x@y.test", "type": "reponse", "motif": "TLP:RED interdit l'envoi"}),
    ("rebond", {"destinataire": "x@y.test", "permanent": True, "diagnostic": "550 5.1.1 unknown"}),
    ("fusion", {"fusionne_dans": "SSI-ARA-2026-0002"}),
    ("fusion", {"doublon_absorbe": "SSI-ARA-2026-0003"}),
    ("rappel", {"statut": "PRIS_EN_COMPTE", "echeance": "2026-11-27T10:00:00+00:00", "etape": 1, "escalade": False,
                "destinataires": ["agent@ars.test"]}),
    ("confirmation_demandee", {"commande": "clore", "expire": "2026-11-29T09:10:00+00:00"}),
    ("transfert_recu", {"dossier_origine": "SSI-ARA-2026-0001", "region_origine": "ARA", "statut": "QUALIFIE",
                        "gravite": "GRAVE"}),
    ("etat", {"champs": ["status", "assignee"]}),
    ("message_automatique", {"type": "auto_reply", "objet": "Absence"}),
]


@pytest.mark.parametrize(("type_", "data"), SAMPLES)
def test_no_code_no_iso_instant_in_any_story_line(type_: str, data: dict[str, object]) -> None:
    (line,) = story([_Event(1, datetime(2026, 11, 27, 9, 0, tzinfo=UTC), type_, data)])
    what = line.split(" — ", 2)[2]
    assert "_" not in what and not re.search(r"\d{4}-\d\d-\d\dT", what), what
    assert not re.search(r"\b(PRIS|QUALIFIE|CLOS|GRAVE|SANS|NON)\b", what), what


def test_a_possible_duplicate_reads_the_same_on_both_cases() -> None:
    # Outside tester: the older case said « Doublon possible du dossier <newer> », the wrong way round.
    at = datetime(2026, 11, 27, 8, 0, tzinfo=UTC)
    event = _Event(1, at, "doublon_possible", {"dossier_lie": "SSI-ARA-2026-0003"})
    assert story([event]) == ["27/11/2026 à 09:00 — passerelle — Doublon possible : dossier SSI-ARA-2026-0003 "
                              "(dossiers liés)"]


def test_an_assignment_to_the_assignee_says_nothing_changed() -> None:
    # « #assigner moi » by the agent already assigned (an outside tester read « Dossier assigné à
    # agent@ars.test (auparavant agent@ars.test) »).
    assert describe("assignation", {"de": "agent@ars.test", "vers": "agent@ars.test"}) == (
        "Assignation confirmée : agent@ars.test (déjà assigné)")
    assert describe("assignation", {"de": "chef@ars.test", "vers": "agent@ars.test"}) == (
        "Dossier assigné à agent@ars.test (auparavant chef@ars.test)")
    assert describe("assignation", {"de": None, "vers": "agent@ars.test"}) == "Dossier assigné à agent@ars.test"


@pytest.mark.parametrize(("type_", "motif"), [("declaration_rejouee", "déclaration déjà reçue : message rejoué"),
                                               ("alerte_rejouee", "alerte déjà reçue : message rejoué")])
def test_a_replay_is_said_once(type_: str, motif: str) -> None:
    """An outside tester read « Déclaration déjà reçue (rejouée ou renvoyée par un relais)
    (déclaration déjà reçue : message rejoué) »."""
    line = describe(type_, {"motif": motif})
    assert line.count("déjà reçue") == 1 and line.startswith(("Déclaration déjà reçue", "Alerte déjà reçue"))
