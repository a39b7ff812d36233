"""French dates as people write them, to ISO 8601 with the Europe/Paris offset.

"27/11/2026 à 08h30", "le 27 novembre 2026 vers 8h30", "2026-11-27T08:30", "27.11.26 8:30",
"ce matin à 8h15" (relative to the message's Date header). Times without a zone are local
time in Europe/Paris (the agencies' time; overseas regions state their own offset in ISO form).
"""

from __future__ import annotations

import re
from datetime import date, datetime, time, timedelta
from zoneinfo import ZoneInfo

PARIS = ZoneInfo("Europe/Paris")
_MONTHS = {
    "janvier": 1, "janv": 1, "jan": 1, "fevrier": 2, "fevr": 2, "fev": 2, "mars": 3, "avril": 4,
    "avr": 4, "mai": 5, "juin": 6, "juillet": 7, "juil": 7, "aout": 8, "septembre": 9, "sept": 9,
    "sep": 9, "octobre": 10, "oct": 10, "novembre": 11, "nov": 11, "decembre": 12, "dec": 12,
}  # fmt: skip
# Each optional word carries its own trailing blanks ("(?:a\s*)?", not "\s*a?\s*"): two "\s*" around
# an optional part share a run of blanks, which made every date followed by many blanks quadratic.
_TIME = (
    r"(?:\s*(?:(?:,|a|à|vers|aux alentours de|autour de|-|@|;)\s*)?(?:environ\s*)?"
    r"(\d{1,2})\s*(?:h|:|heures?)(?:\s*(\d{2}))?(?:\s*(?::|min)\s*\d{2})?)?"
)
_ISO = re.compile(r"\b(\d{4})-(\d{2})-(\d{2})(?:[T ](\d{2}):(\d{2})(?::(\d{2}))?(?:\.\d+)?(Z|[+-]\d{2}:?\d{2})?)?\b")
_NUMERIC = re.compile(r"\b(\d{1,2})[/.\-](\d{1,2})[/.\-](\d{4}|\d{2})\b" + _TIME, re.I)
_WORDS = re.compile(
    r"\b(?:(?:lundi|mardi|mercredi|jeudi|vendredi|samedi|dimanche)\s+)?(\d{1,2})(?:er)?\s+"
    r"(janvier|janv|f[ée]vrier|f[ée]vr|f[ée]v|mars|avril|avr|mai|juin|juillet|juil|ao[ûu]t|septembre|sept|"
    r"octobre|oct|novembre|nov|d[ée]cembre|d[ée]c)\.?\s+(\d{4})" + _TIME,
    re.I,
)
_RELATIVE = re.compile(
    r"\b(ce matin|cette nuit|cet apr[èe]s-midi|ce soir|ce midi|aujourd'hui|hier soir|hier matin|hier midi|hier|"
    r"avant-hier|cette semaine|(?:lundi|mardi|mercredi|jeudi|vendredi|samedi|dimanche)"
    r"(?: dernier| soir| matin| apr[èe]s-midi)?)\b" + _TIME,
    re.I,
)
# « le 5 décembre vers 14h »: a day and a month, the year of the message (the year before when
# that date would be after it).
_WORDS_NO_YEAR = re.compile(
    r"\b(\d{1,2})(?:er)?\s+(janvier|janv|f[ée]vrier|f[ée]vr|f[ée]v|mars|avril|avr|mai|juin|juillet|juil|"
    r"ao[ûu]t|septembre|sept|octobre|oct|novembre|nov|d[ée]cembre|d[ée]c)\b(?!\.?\s+\d{4})" + _TIME,
    re.I,
)
# « le 3/12 », « (le 07/12) », « 4/12 à 7h45 »: a day and a month by numbers, the year of the
# message. Only after « le », « du », « depuis le »… or with a time: « 3/4 des postes » is no date.
_NUMERIC_NO_YEAR = re.compile(
    r"(?:\b(le|du|au|depuis le|d[èe]s le)\s+)?\b(\d{1,2})/(\d{1,2})(?![/\d])" + _TIME, re.I)
# « à midi », « vers minuit » after a day: its time, which _TIME (digits) does not read.
_NOON_OR_MIDNIGHT = re.compile(r"\s*(?:(?:à|a|vers|aux alentours de)\s+)?(midi|minuit)\b", re.I)
# Hours a part of the day stands for when no time is written.
_DEFAULT_HOURS = {"ce matin": 8, "hier matin": 8, "cette nuit": 2, "ce soir": 20, "hier soir": 20, "soir": 20,
                  "matin": 8, "ce midi": 12, "hier midi": 12, "midi": 12}
# « à 5h ce matin »: the hour written before the day's part (an outside tester: read as 08:00).
_TIME_BEFORE = re.compile(r"(?:\b(?:à|a|vers|dès|des|depuis)\s+)(\d{1,2})\s*h(?:\s*(\d{2}))?\s*$", re.I)


_WEEKDAYS = ("lundi", "mardi", "mercredi", "jeudi", "vendredi", "samedi", "dimanche")


def _fold_month(name: str) -> int | None:
    key = name.lower().replace("é", "e").replace("û", "u").rstrip(".")
    return _MONTHS.get(key)


# Years written with four digits before this are placeholders (« 01/01/0001 », « 00/00/0000 »),
# not a detection: never read as a plausible date (« 0001 » became 2001: outside tester).
_FIRST_YEAR = 1900


def _make(y: int | str, mo: int, d: int, h: str | None, mi: str | None) -> datetime | None:
    """``y`` as written (a string: « 26 » is 2026, « 0026 » is no year) or as a number."""
    if isinstance(y, str):
        y = int(y) + 2000 if len(y) <= 2 else int(y)
    if y < _FIRST_YEAR:
        return None
    try:
        hour = int(h) if h else 0
        minute = int(mi) if mi else 0
        if hour > 23 or minute > 59:
            hour, minute = 0, 0
        return datetime(y, mo, d, hour, minute, tzinfo=PARIS)
    except ValueError:
        return None


def _iso(dt: datetime) -> str:
    return dt.isoformat(timespec="seconds")


def parse_french_datetime(text: str, reference: datetime | None = None) -> str | None:
    """The first date (with its time) in ``text`` as ISO 8601 with offset, or None."""
    return parse_detection(text, reference)[0]


def parse_detection(text: str, reference: datetime | None = None) -> tuple[str | None, str | None]:
    """The first date of ``text`` (``parse_french_datetime``) and, when that instant is an
    estimate, the words it was read from: a day named relative to ``reference`` (« cette nuit »,
    « hier soir vers 23h ») or a date without a time (midnight is then no more than a placeholder).
    Mail to staff and to the ACSS shows those words beside the instant (``detection_fr``): an
    incident « de cette nuit » must not reach the national cell as « 06/12/2026 à 02:00 »."""
    text = text[:20_000]
    candidates: list[tuple[int, datetime, str | None]] = []
    rel: re.Match[str] | None = None
    for m in _ISO.finditer(text):
        y, mo, d, h, mi, s, tz = m.groups()
        try:
            if tz:
                tzs = "+00:00" if tz == "Z" else (tz if ":" in tz else tz[:3] + ":" + tz[3:])
                dt = datetime.fromisoformat(f"{y}-{mo}-{d}T{h}:{mi}:{s or '00'}{tzs}")
            else:
                dt = datetime(int(y), int(mo), int(d), int(h or 0), int(mi or 0), int(s or 0), tzinfo=PARIS)
        except ValueError:
            continue
        if dt.year < _FIRST_YEAR:
            continue
        candidates.append((m.start(), dt, None if h else m.group(0)))
        break
    for m in _NUMERIC.finditer(text):
        d, mo, y, h, mi = m.groups()
        numeric = _make(y, int(mo), int(d), h, mi)
        if numeric is not None:
            candidates.append((m.start(), numeric, None if h else m.group(0).strip()))
            break
    for m in _WORDS.finditer(text):
        d, month, y, h, mi = m.groups()
        month_number = _fold_month(month)
        worded = _make(y, month_number, int(d), h, mi) if month_number else None
        if worded is not None:
            candidates.append((m.start(), worded, None if h else m.group(0).strip()))
            break
    if reference is not None:
        for m in _WORDS_NO_YEAR.finditer(text):
            d, month, h, mi = m.groups()
            month_number = _fold_month(month)
            here = reference.astimezone(PARIS)
            worded = _make(here.year, month_number, int(d), h, mi) if month_number else None
            if worded is not None and worded.date() > here.date():
                worded = _make(here.year - 1, month_number or 1, int(d), h, mi)
            if worded is not None:
                candidates.append((m.start(), worded, None if h else " ".join(m.group(0).split())[:80]))
                break
        for m in _NUMERIC_NO_YEAR.finditer(text):
            before, d, mo, h, mi = m.groups()
            h, mi, extra = _spoken_time(text, m.end(), h, mi)
            if not before and not h:
                continue
            here = reference.astimezone(PARIS)
            if not (1 <= int(mo) <= 12):
                continue
            numeric = _make(here.year, int(mo), int(d), h, mi)
            if numeric is not None and numeric.date() > here.date():
                numeric = _make(here.year - 1, int(mo), int(d), h, mi)
            if numeric is not None:
                shown = " ".join((m.group(0) + extra).split())[:80]
                candidates.append((m.start(), numeric, None if h else shown))
                break
        rel = _RELATIVE.search(text)
        if rel:
            m = rel
            word, h, mi = m.group(1).lower(), m.group(2), m.group(3)
            h, mi, extra = _spoken_time(text, m.end(), h, mi)
            if not h and (before := _TIME_BEFORE.search(text, max(0, m.start() - 20), m.start())):
                h, mi = before.group(1), before.group(2)
            written: str | None = " ".join((m.group(0) + extra).split())[:80]
            if h and int(h) > 23:
                h = mi = None  # « hier vers 25h »: no time, not midnight
                written = word
            day: date = reference.astimezone(PARIS).date()
            night = _night_of(text, m.start(), m.end())
            weekday, _, part = word.partition(" ")
            if word.startswith("hier"):
                day -= timedelta(days=1)
            elif word == "avant-hier":
                day -= timedelta(days=2)
            elif weekday in _WEEKDAYS:
                # « lundi dernier »: the last such day before this one; « samedi (soir) »: the last
                # such day, this one included.
                back = (day.weekday() - _WEEKDAYS.index(weekday)) % 7
                day -= timedelta(days=back or (7 if part == "dernier" else 0))
                if night is not None and not h:
                    # « la nuit de samedi à dimanche »: after Saturday's midnight, not before it.
                    day += timedelta(days=1)
                    h, written = "2", night
            if h or word != "cette semaine":
                hour = int(h) if h else _DEFAULT_HOURS.get(word, _DEFAULT_HOURS.get(part, 0))
                minute = int(mi) if h and mi and int(mi) < 60 else 0
                at = datetime.combine(day, time(hour, minute), tzinfo=PARIS)
                if not h and at > reference:
                    # « ce matin » written at 05:05: not 08:00, three hours after the mail.
                    at = reference.astimezone(PARIS).replace(second=0, microsecond=0)
                candidates.append((m.start(), at, written))
    if not candidates:
        return None, None
    if rel is not None and rel.group(1).lower().split()[0] in _WEEKDAYS:
        # « Lundi 30/11 à 10h30 »: the weekday names the date that follows it, not a day relative
        # to the message (an outside tester: read as the Monday of the message, a week off).
        dated = [c for c in candidates if rel.end() <= c[0] <= rel.end() + 3]
        if dated:
            candidates = [c for c in candidates if c[0] != rel.start()]
    _position, found, written = min(candidates, key=lambda c: c[0])
    return _iso(found), written


def _spoken_time(text: str, end: int, h: str | None, mi: str | None) -> tuple[str | None, str | None, str]:
    """(hour, minutes, the words read) with « à midi », « vers minuit » after a day when no hour
    was written in digits (« hier à midi » was read as midnight: an outside tester, an RSSI)."""
    if h:
        return h, mi, ""
    spoken = _NOON_OR_MIDNIGHT.match(text, end, min(len(text), end + 40))
    if spoken is None:
        return h, mi, ""
    return ("12" if spoken.group(1).lower() == "midi" else "0"), "0", spoken.group(0)


_NIGHT = re.compile(r"nuit\s+(?:de|du)\s+$", re.I)
_NIGHT_END = re.compile(r"\s+(?:au|à|a)\s+(lundi|mardi|mercredi|jeudi|vendredi|samedi|dimanche)\b", re.I)


def _night_of(text: str, start: int, end: int) -> str | None:
    """« la nuit de samedi à dimanche » around a weekday at ``start``..``end``: the words, else None."""
    if _NIGHT.search(text, max(0, start - 12), start) is None:
        return None
    after = _NIGHT_END.match(text, end, min(len(text), end + 20))
    return " ".join(("nuit de " + text[start:after.end() if after else end]).split())[:80]


# A detection this long after the message was sent is a typing error (a wrong month or year), not
# clock skew between the establishment's mail server and ours.
FUTURE_MARGIN = timedelta(hours=1)


def detection_fr(detected_at: object, as_written: object = None, sent_at: datetime | None = None) -> str | None:
    """A declaration's detection time as staff and the ACSS read it: « 27/11/2026 à 08:30 »; the
    declarant's words first when the instant was estimated from them; « à vérifier » when it is
    later than the message that declares it (``parse_detection``)."""
    if not isinstance(detected_at, str) or not detected_at.strip():
        return None
    try:
        parsed: datetime | None = datetime.fromisoformat(detected_at.strip())
    except ValueError:
        parsed = None
    if parsed is None:
        return detected_at
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=PARIS)
    local = parsed.astimezone(PARIS)
    if isinstance(as_written, str) and as_written.strip():
        words = " ".join(as_written.split())
        if words[:1].isdigit():  # a date without a time
            shown = f"{local:%d/%m/%Y} (heure non précisée)"
        elif local.hour == local.minute == 0 and not any(c.isdigit() for c in words):
            shown = f"« {words} » (compris comme le {local:%d/%m/%Y}, heure non précisée)"
        else:
            shown = f"« {words} » (compris comme le {local:%d/%m/%Y} vers {local:%H:%M})"
    else:
        shown = f"{local:%d/%m/%Y à %H:%M}"
    if sent_at is not None and parsed > sent_at + FUTURE_MARGIN:
        shown += " — postérieure à l'envoi de la déclaration : à vérifier auprès du déclarant"
    return shown
