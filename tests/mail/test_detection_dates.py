"""A declaration's detection time as staff and the ACSS read it (mail/dates.py): an instant the
gateway estimated from the declarant's words (« cette nuit », a date without a time) is shown with
those words, never as if the declarant had given it to the minute; a detection later than the
declaration is flagged (both found by outside testers)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from mailgateway.mail.dates import detection_fr, parse_detection

SENT = datetime(2026, 12, 6, 9, 15, tzinfo=UTC)  # 10:15 in Paris


@pytest.mark.parametrize(
    ("text", "iso", "written"),
    [
        ("Détecté cette nuit, serveurs chiffrés", "2026-12-06T02:00:00+01:00", "cette nuit"),
        ("hier soir vers 23h", "2026-12-05T23:00:00+01:00", "hier soir vers 23h"),
        ("le 27 novembre 2026", "2026-11-27T00:00:00+01:00", "27 novembre 2026"),
        ("27/11/2026", "2026-11-27T00:00:00+01:00", "27/11/2026"),
        ("2026-11-27", "2026-11-27T00:00:00+01:00", "2026-11-27"),
        # Given to the minute: nothing was estimated.
        ("27/11/2026 à 08h30", "2026-11-27T08:30:00+01:00", None),
        ("2026-11-27T08:30:00+01:00", "2026-11-27T08:30:00+01:00", None),
        ("pas de date ici", None, None),
    ],
)
def test_an_estimated_detection_keeps_the_declarants_words(text: str, iso: str | None, written: str | None) -> None:
    assert parse_detection(text, SENT) == (iso, written)


def test_a_relative_detection_is_shown_with_its_words() -> None:
    shown = detection_fr("2026-12-06T02:00:00+01:00", "cette nuit", SENT)
    assert shown == "« cette nuit » (compris comme le 06/12/2026 vers 02:00)"


def test_a_date_without_time_is_not_shown_as_midnight() -> None:
    shown = detection_fr("2026-11-27T00:00:00+01:00", "27/11/2026", SENT)
    assert shown == "27/11/2026 (heure non précisée)"
    assert "00:00" not in (shown or "")


def test_an_exact_detection_is_shown_as_given() -> None:
    assert detection_fr("2026-11-27T08:30:00+01:00", None, SENT) == "27/11/2026 à 08:30"


def test_a_detection_after_the_declaration_is_flagged() -> None:
    shown = detection_fr("2027-12-05T08:30:00+01:00", None, SENT) or ""
    assert shown.startswith("05/12/2027 à 08:30") and "à vérifier" in shown
    # Clock skew between mail servers is no typing error: within the hour, nothing is said.
    assert "vérifier" not in (detection_fr("2026-12-06T10:40:00+01:00", None, SENT) or "")


def test_no_detection_says_nothing() -> None:
    assert detection_fr(None, None, SENT) is None
    assert detection_fr("", "cette nuit", SENT) is None


def test_a_default_hour_never_lies_after_the_mail() -> None:
    early = datetime(2026, 12, 6, 4, 5, tzinfo=UTC)  # 05:05 in Paris: « ce matin » is not 08:00
    assert parse_detection("Date de détection : ce matin", early) == ("2026-12-06T05:05:00+01:00", "ce matin")


@pytest.mark.parametrize(
    ("text", "iso"),
    [
        ("lundi dernier vers 14h30", "2026-11-30T14:30:00+01:00"),  # SENT is a Sunday
        ("dimanche dernier", "2026-11-29T00:00:00+01:00"),  # the one before today, not today
        ("samedi dernier à 9h", "2026-12-05T09:00:00+01:00"),
    ],
)
def test_last_weekday_is_read(text: str, iso: str) -> None:
    assert parse_detection(text, SENT) == (iso, " ".join(text.split()))


def test_a_relative_day_without_a_time_shows_no_time() -> None:
    shown = detection_fr("2026-11-29T00:00:00+01:00", "dimanche dernier", SENT)
    assert shown == "« dimanche dernier » (compris comme le 29/11/2026, heure non précisée)"


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("hier", "« hier » (compris comme le 05/12/2026, heure non précisée)"),
        ("avant-hier", "« avant-hier » (compris comme le 04/12/2026, heure non précisée)"),
        ("aujourd'hui", "« aujourd'hui » (compris comme le 06/12/2026, heure non précisée)"),
        ("samedi soir", "« samedi soir » (compris comme le 05/12/2026 vers 20:00)"),
        ("le 5 décembre vers 14h", "05/12/2026 à 14:00"),
        ("5 décembre", "05/12/2026 (heure non précisée)"),
        ("hier vers 25h", "« hier » (compris comme le 05/12/2026, heure non précisée)"),
    ],
)
def test_more_words_of_a_day_are_read_and_shown_as_written(text: str, shown: str) -> None:
    # Outside tester: « Date de détection : hier » (and the others) reached staff and the ACSS as
    # « non précisée »; « hier vers 25h » as « vers 00:00 ».
    iso, written = parse_detection(text, SENT)
    assert detection_fr(iso, written, SENT) == shown


@pytest.mark.parametrize(
    ("text", "iso", "written"),
    [
        # An outside tester (an RSSI): none of these was read, or not as written.
        ("détecté le 3/12 vers 7h45", "2026-12-03T07:45:00+01:00", None),
        ("le 3/12", "2026-12-03T00:00:00+01:00", "le 3/12"),
        ("4/12 à minuit", "2026-12-04T00:00:00+01:00", None),
        ("hier à midi", "2026-12-05T12:00:00+01:00", "hier à midi"),
        ("dans la nuit de jeudi à vendredi", "2026-12-04T02:00:00+01:00", "nuit de jeudi à vendredi"),
        ("le 31/12", "2025-12-31T00:00:00+01:00", "le 31/12"),  # after the mail: last year's
        # Fractions and versions are no dates.
        ("3/4 des postes sont touchés", None, None),
        ("version 3.12 du logiciel", None, None),
        ("le 13/13", None, None),
        # Round 3 (an outside tester): a weekday naming the date after it, an hour before the day's
        # part, « ce midi ».
        ("Lundi 30/11 à 10h30, le serveur a été chiffré", "2026-11-30T10:30:00+01:00", None),
        ("détecté à 5h ce matin", "2026-12-06T05:00:00+01:00", "ce matin"),
        ("ce midi vers 12h30", "2026-12-06T12:30:00+01:00", "ce midi vers 12h30"),
    ],
)
def test_a_day_and_month_by_numbers_and_spoken_times(text: str, iso: str | None, written: str | None) -> None:
    assert parse_detection(text, SENT) == (iso, written)
