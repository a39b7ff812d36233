"""A wave of declarations told to staff in digests (« Afflux de déclarations », issue 19).

A staff notification is one signed mail with the original attached, ≈ 3 ms of CPU from composing
to the relay's 250 on a 2-CPU machine: half again a declaration's own cost. In a wave — a
software vendor's compromise declared by every hospital of a region, a flood — that is also what
staff can read least: hundreds of look-alike mails in the shared mailbox. So once
``[processing] staff_notice_digest_from`` notifications (100) wait behind a backlog
(processing/later.py), the new declarations among them are told in digests of up to
``DIGEST_CASES`` cases, one mail to the region's staff for each — as alerting tools group a storm
of alerts into one — and a burst of 20,000 costs staff 200 mails rather than 20,000, and the
declarants' acknowledgements no longer wait behind them.

A digest row keeps what a notification says first: the reference, when it came, the structure
and its FINESS as the directory knows it, the type, the declared severity, the declarant and
whether the sender is authenticated, and every warning that asks for action (a possible
duplicate, another region's establishment, an acknowledgement not sent, what was done since).
The original is not attached (« #original REF » sends it); commands go in a mail whose subject
carries the reference. Only new declarations are digested: alerts (to be approved one by one),
replies to an assignee and every other notice keep their own mail."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy.orm import Session

from mailgateway.clock import Clock, french_datetime
from mailgateway.dispatch.contexts import region_context
from mailgateway.dispatch.mailer import Mailer
from mailgateway.settings import Settings
from mailgateway.statuses import Severity
from mailgateway.store.models import Case

TEMPLATE = "afflux"
KIND = "notification_afflux"
# Cases a digest lists: a mail staff can still scroll (≈ 7 lines a case).
DIGEST_CASES = 100
# Case numbers named per line of the overview.
OVERVIEW_NUMBERS = 15
# Characters of a declaration's summary shown on one line of a digest.
SUMMARY_CHARS = 240
# Lines of « done since » shown under a case of a digest (the notification shows 12).
SINCE_LINES = 3


@dataclass(frozen=True)
class Item:
    """A deferred notification to be told in a digest: its case as it is now, the notice's
    context as it was decided, what people did since, and the message's id."""

    case: Case
    context: dict[str, Any]
    since: list[str]
    inbound_id: int | None
    notice_id: int = 0


def digestible(call: dict[str, Any]) -> bool:
    """A new declaration's notification to the whole staff (not an alert's, not an assignee's)."""
    context = call.get("context")
    return (call.get("template") == "staff_notification" and call.get("kind") == "notification_equipe"
            and not call.get("recipients") and isinstance(context, dict) and not context.get("alert")
            and context.get("case", {}).get("kind") != "alert")


def send_digests(mailer: Mailer, session: Session, clock: Clock, region: str, items: Sequence[Item], *,
                 priority: int = 0) -> list[Item]:
    """Queue ``items`` (one region's, oldest first) as digests of ``DIGEST_CASES``, one per TLP
    marking (a digest goes only where each of its cases may: the mailer's TLP rule); each case's
    timeline says which digest told staff. Returns the items left alone — a case that would be a
    digest's only one keeps its own notification (its reference in the subject, the original
    attached, the commands as a reply): the caller sends it."""
    by_tlp: dict[str | None, list[Item]] = {}
    for item in items:
        by_tlp.setdefault(item.case.tlp, []).append(item)
    alone: list[Item] = []
    for tlp, group in by_tlp.items():
        for first in range(0, len(group), DIGEST_CASES):
            chunk = group[first:first + DIGEST_CASES]
            if len(chunk) < 2:
                alone += chunk
                continue
            _send(mailer, session, clock, region, tlp, chunk, priority)
    return alone


def _send(mailer: Mailer, session: Session, clock: Clock, region: str, tlp: str | None,
          items: Sequence[Item], priority: int) -> int:
    context = digest_context(mailer.settings, region, items, composed=clock.now())
    return mailer.send_to_staff(session, region, template=TEMPLATE, context=context, kind=KIND,
                                key=_key(region, items), priority=priority, tlp=tlp, on_cases=[i.case for i in items])


def digest_context(settings: Settings, region: str, items: Sequence[Item], *, composed: datetime) -> dict[str, Any]:
    """What templates/afflux.*.j2 are given for ``items``."""
    rows = [_row(item) for item in items]
    return {
        **region_context(settings, region),
        "cases": rows,
        "overview": overview(rows),
        # Numbers, not references: a reply's subject naming a case is that case's (mail/refs.py
        # reads a reference anywhere in it, brackets or not), and « Re: … SSI-ARA-2026-0004 à … »
        # assigned, qualified and transferred the digest's first case (two outside testers).
        "first_number": _number(rows[0]["case"].get("reference")) if rows else None,
        "last_number": _number(rows[-1]["case"].get("reference")) if rows else None,
        "period_fr": period_fr([str(item.context.get("received_at_fr") or "") for item in items]),
        "composed_fr": french_datetime(composed),
        "digest_from": settings.processing.staff_notice_digest_from,
    }


def _number(reference: object) -> str | None:
    """« 0004 » of « SSI-ARA-2026-0004 »."""
    return reference.rsplit("-", 1)[-1] if isinstance(reference, str) else None


def overview(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """What to triage first: each kind of row that asks for action, counted, with the references
    (an outside tester counted 46 graves and 82 duplicates by hand in a digest of 99, then searched
    1,573 lines for the one case of another region). Kinds with no row are left out."""
    kinds: tuple[tuple[str, Callable[[dict[str, Any]], bool]], ...] = (
        ("graves (déclarés ou retenus)",
         lambda r: Severity.GRAVE in (r["declaration"].get("severity"), r["case"].get("severity"))),
        ("accusés de réception non envoyés", lambda r: bool(r["ack_capped"] or r["ack_refused"])),
        ("hors région", lambda r: bool(r["out_of_region"])),
        ("doublons possibles", lambda r: bool(r["duplicate_of"] or r["duplicate_candidates"])),
        ("expéditeurs non authentifiés", lambda r: not r["sender"]["authenticated"]),
    )
    out = []
    for label, applies in kinds:
        numbers = [_number(r["case"].get("reference")) or "?" for r in rows if applies(r)]
        if numbers:
            out.append({"label": label, "count": len(numbers), "numbers": numbers[:OVERVIEW_NUMBERS],
                        "more": max(0, len(numbers) - OVERVIEW_NUMBERS)})
    return out


def period_fr(received: Sequence[str]) -> str:
    """« le 08/12/2026 entre 10:01 et 10:03 », « entre le 07/12/2026 à 23:59 et le 08/12/2026 à
    00:01 », « le 08/12/2026 à 10:01 »: from the notices' « 08/12/2026 à 10:01 »."""
    times = sorted({r for r in received if r}, key=_instant_key)
    if not times:
        return ""
    first, last = times[0], times[-1]
    if first == last:
        return f"le {first}"
    (day1, _, hour1), (day2, _, hour2) = first.partition(" à "), last.partition(" à ")
    if day1 == day2 and hour1 and hour2:
        return f"le {day1} entre {hour1} et {hour2}"
    return f"entre le {first} et le {last}"


def _instant_key(text: str) -> tuple[str, str]:
    day, _, hour = text.partition(" à ")
    return "-".join(reversed(day.split("/"))), hour


def _key(region: str, items: Sequence[Item]) -> str:
    """The digest's idempotency key: its messages (a digest composed again after a crash is
    the same mail; notices' own ids are reused by SQLite once deleted, messages' are not)."""
    told = ",".join(f"{item.case.id}:{item.inbound_id}" for item in items)
    return f"afflux:{region}:{hashlib.sha256(told.encode()).hexdigest()[:32]}"


def _row(item: Item) -> dict[str, Any]:
    """What the digest says of one case (templates/afflux.txt.j2). Every text from mail on one
    line: a structure name or a summary carrying a line break would otherwise write a row of its
    own (« == 7. SSI-… ») into the list staff act on."""
    context = item.context
    declaration = context.get("declaration") or {}
    case = context.get("case") or {}
    sender = context.get("sender") or {}
    since = [_flat(line) for line in item.since]
    return {
        "case": {**case, "title": _flat(case.get("title")), "establishment": _flat(case.get("establishment"))},
        "received_fr": context.get("received_at_fr"),
        "declaration": {"structure": _flat(declaration.get("structure")), "finess": _flat(declaration.get("finess")),
                        "incident_type": declaration.get("incident_type"), "severity": declaration.get("severity"),
                        "impacts": declaration.get("impacts") or []},
        "establishment": context.get("establishment"),
        "declarant": _flat(context.get("declarant")),
        "sender": {"address": _flat(sender.get("address")), "authenticated": bool(sender.get("authenticated")),
                   "domain": _flat(sender.get("domain"))},
        "detected_at_fr": _flat(context.get("detected_at_fr")),
        "summary": _one_line(declaration.get("summary")),
        "duplicate_of": _flat(context.get("duplicate_of")),
        "duplicate_candidates": [_flat(c.get("reference")) for c in context.get("duplicate_candidates") or ()
                                 if isinstance(c, dict)],
        "out_of_region": context.get("out_of_region"),
        "ej_sites": bool(context.get("ej_sites")),
        # Held back by a cap (« #repondre » reaches the declarant) or refused (no address to
        # answer: « #repondre » would fail too; an outside tester), as the notification says.
        "ack_capped": _flat(context.get("ack_capped")),
        "ack_refused": _flat(context.get("ack_refused")),
        "from_header": _flat(context.get("from_header")),
        "envelope_from": _flat(context.get("envelope_from")),
        "unsigned_reply_to": _flat(context.get("unsigned_reply_to")),
        "forwarded_author": _flat(declaration.get("forwarded_author")),
        "original_files": context.get("original_file_names"),
        "indicators": len(context.get("indicators") or ()),
        # The latest: a colleague's note or assignment, not the first automatic status change
        # (an outside tester, an agent).
        "since": since[-SINCE_LINES:],
        "since_more": max(0, len(since) - SINCE_LINES),
    }


# What a reader cannot tell from a blank, or does not see: Unicode white space and line breaks
# (``\s``), controls, format characters (zero-width, bidirectional, tags, variation selectors),
# and the fillers that render blank (braille blank U+2800, Hangul fillers): an outside tester
# padded a structure name with U+2800 so that a mail reader's wrapping started a forged row.
_BLANKS = re.compile(
    r"[\s\x00-\x1f\x7f-\x9f\u00ad\u034f\u061c\u115f\u1160\u17b4\u17b5\u180b-\u180f\u200b-\u200f\u202a-\u202e"
    r"\u2060-\u206f\u2800\u3164\ufe00-\ufe0f\ufeff\uffa0\ufff9-\ufffb\U000e0000-\U000e007f\U000e0100-\U000e01ef]+")
# Characters of a text from mail kept in a row (the case itself has the whole: « #original »).
FIELD_CHARS = 160


def _flat(value: Any, limit: int = FIELD_CHARS) -> Any:
    """A text on one line, each run of blanks one space (``_BLANKS``: one pass, no backtracking),
    cut at ``limit``; other values as they are."""
    if not isinstance(value, str):
        return value
    line = _BLANKS.sub(" ", value).strip()
    return line if len(line) <= limit else line[:limit - 1].rstrip() + "…"


def _one_line(text: object) -> str | None:
    """A summary on one line, cut at ``SUMMARY_CHARS`` (the declaration itself: « #original »)."""
    line = _flat(text, SUMMARY_CHARS)
    return line if isinstance(line, str) and line else None
