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
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy.orm import Session

from mailgateway.clock import Clock, french_datetime
from mailgateway.dispatch.contexts import region_context
from mailgateway.dispatch.mailer import Mailer
from mailgateway.store.models import Case

TEMPLATE = "afflux"
KIND = "notification_afflux"
# Cases a digest lists: a mail staff can still scroll (≈ 7 lines a case).
DIGEST_CASES = 100
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


def digestible(call: dict[str, Any]) -> bool:
    """A new declaration's notification to the whole staff (not an alert's, not an assignee's)."""
    context = call.get("context")
    return (call.get("template") == "staff_notification" and call.get("kind") == "notification_equipe"
            and not call.get("recipients") and isinstance(context, dict) and not context.get("alert")
            and context.get("case", {}).get("kind") != "alert")


def send_digests(mailer: Mailer, session: Session, clock: Clock, region: str, items: Sequence[Item], *,
                 priority: int = 0) -> int:
    """Queue ``items`` (one region's, oldest first) as digests of ``DIGEST_CASES``, one per TLP
    marking (a digest goes only where each of its cases may: the mailer's TLP rule); each case's
    timeline says which digest told staff. Returns how many mails were queued (a row each)."""
    by_tlp: dict[str | None, list[Item]] = {}
    for item in items:
        by_tlp.setdefault(item.case.tlp, []).append(item)
    queued = 0
    for tlp, group in by_tlp.items():
        for first in range(0, len(group), DIGEST_CASES):
            queued += _send(mailer, session, clock, region, tlp, group[first:first + DIGEST_CASES], priority)
    return queued


def _send(mailer: Mailer, session: Session, clock: Clock, region: str, tlp: str | None,
          items: Sequence[Item], priority: int) -> int:
    context = {
        **region_context(mailer.settings, region),
        "cases": [_row(item) for item in items],
        "period_fr": period_fr([str(item.context.get("received_at_fr") or "") for item in items]),
        "composed_fr": french_datetime(clock.now()),
        "digest_from": mailer.settings.processing.staff_notice_digest_from,
    }
    return mailer.send_to_staff(session, region, template=TEMPLATE, context=context, kind=KIND,
                                key=_key(region, items), priority=priority, tlp=tlp, on_cases=[i.case for i in items])


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
        "sender": {"address": _flat(sender.get("address")), "authenticated": bool(sender.get("authenticated"))},
        "detected_at_fr": _flat(context.get("detected_at_fr")),
        "summary": _one_line(declaration.get("summary")),
        "duplicate_of": _flat(context.get("duplicate_of")),
        "duplicate_candidates": [_flat(c.get("reference")) for c in context.get("duplicate_candidates") or ()
                                 if isinstance(c, dict)],
        "out_of_region": context.get("out_of_region"),
        "ej_sites": bool(context.get("ej_sites")),
        "ack_not_sent": _flat(context.get("ack_capped") or context.get("ack_refused")),
        "unsigned_reply_to": _flat(context.get("unsigned_reply_to")),
        "forwarded_author": _flat(declaration.get("forwarded_author")),
        "original_files": context.get("original_file_names"),
        "indicators": len(context.get("indicators") or ()),
        "since": since[:SINCE_LINES],
        "since_more": max(0, len(since) - SINCE_LINES),
    }


def _flat(value: Any) -> Any:
    """A text on one line (every Unicode line break and run of blanks a space); others as they are."""
    return " ".join(value.split()) if isinstance(value, str) else value


def _one_line(text: object) -> str | None:
    """A summary on one line, cut at ``SUMMARY_CHARS`` (the declaration itself: « #original »)."""
    if not isinstance(text, str) or not text.strip():
        return None
    line = " ".join(text.split())
    return line if len(line) <= SUMMARY_CHARS else line[:SUMMARY_CHARS - 1].rstrip() + "…"
