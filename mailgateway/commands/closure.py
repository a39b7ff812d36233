"""The declarant is told when staff close or merge its case (``[cases] notify_declarant_on_close``).

Called by ``handling.handle_command`` once the commands of a staff mail have run: a case closed
(``#clore``, or its ``#confirmer``) or merged into another (``#fusionner``) in that mail gets one
French mail to its declarant. The mail goes through ``Mailer.send`` like every other, so the
case's TLP, the no-reply and loop rules apply; a portal's no-reply sender is never written to.

What it says depends on whether the declarant's address is *verified*, that is whether a message
of the case came authenticated (DKIM/DMARC) from that very address. A verified declarant is told
the structure, the closing motif staff wrote after ``#clore`` (written for the establishment) and,
for a merge, the reference of the case that continues. An unverified address came from headers or
form text anyone could write and may be a victim of a forgery: it gets the reference, the date and
the final qualification (a label of ours), and quotes nothing (docs/guarantees.md, as the
acknowledgement does).

When a case closes, the declarants of the cases merged into it (``#fusionner``) are told too: they
were told their declaration goes on in that case, and would otherwise never hear the end of it.

The mail is threaded (In-Reply-To) under the declarant's own last message of the case, else the
message that opened it, verified or not: a portal's notification comes from a no-reply robot, so
the declarant it names is never verified, and the mail must still sit in the thread of that
notification. Threading headers are Message-IDs, they quote no text; the case's whole References
chain goes to a verified declarant only, as for the acknowledgement.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from mailgateway.cases import lifecycle, service
from mailgateway.clock import aware, french_datetime
from mailgateway.dispatch import wording
from mailgateway.dispatch.compose import MailSpec
from mailgateway.dispatch.contexts import case_context, region_context
from mailgateway.mail.autoreply import is_no_reply
from mailgateway.processing.context import Env
from mailgateway.store.models import Case, CaseEvent, OutboundMessage

TEMPLATE = KIND = "cloture_declarant"
MAX_MOTIF = 2000  # characters of the closing motif quoted to the declarant
MAX_MERGED = 50  # cases merged into a closing one whose declarants are told (a bound, not a rule)


def declarant_verified(session: Session, case: Case) -> bool:
    """A message of the case was authenticated as coming from the declarant's own address."""
    declarant = (case.declarant or "").lower()
    for actor, data in session.execute(
        select(CaseEvent.actor, CaseEvent.data)
        .where(CaseEvent.case_id == case.id, CaseEvent.type == "message_recu").order_by(CaseEvent.seq).limit(200)
    ):
        auth = (data or {}).get("authentification") or {}
        if str(actor).lower() == declarant and isinstance(auth, dict) and auth.get("authentifie") is True:
            return True
    return False


def _ending(session: Session, case: Case, actor: str, at: datetime) -> CaseEvent | None:
    """The event of this staff mail that ended ``case``: its merge, else its closure."""
    # The latest events of the case, compared in Python: instants read back from SQLite are naive.
    latest = session.scalars(select(CaseEvent).where(CaseEvent.case_id == case.id)
                             .order_by(CaseEvent.seq.desc()).limit(50))
    events = [e for e in reversed(list(latest))
              if e.type in ("statut", "fusion", "transfert") and e.actor == actor and aware(e.at) == aware(at)]
    if any(e.type == "transfert" for e in events):
        return None  # a transfer closes the case too, and tells the declarant itself (commands/transfer.py)
    merged = [e for e in events if e.type == "fusion" and (e.data or {}).get("fusionne_dans")]
    if merged:
        return merged[-1]
    closed = [e for e in events if e.type == "statut" and (e.data or {}).get("vers") in lifecycle.CLOSED]
    return closed[-1] if closed else None


def declarant_to_tell(env: Env, case: Case) -> str | None:
    """The address ``notify_declarants`` would write to when ``case`` closes (None: nobody), so a
    closing that waits for confirmation can say beforehand who will be told."""
    if not env.settings.cases.notify_declarant_on_close or case.kind != "incident":
        return None
    if not case.declarant or is_no_reply(case.declarant):
        return None
    return case.declarant


def notify_declarants(env: Env, session: Session, cases: list[Case | None], *, actor: str,
                      at: datetime) -> list[OutboundMessage]:
    """One mail per case that this staff mail (``actor`` at ``at``) closed or merged."""
    if not env.settings.cases.notify_declarant_on_close:
        return []
    sent = []
    seen: set[int] = set()
    for case in cases:
        if case is None or case.id in seen or case.kind != "incident":
            continue
        seen.add(case.id)
        if lifecycle.is_open(case.status) and case.merged_into_id is None:
            continue
        if not case.declarant or is_no_reply(case.declarant):
            continue
        event = _ending(session, case, actor, at)
        if event is not None and (row := _send(env, session, case, event)) is not None:
            sent.append(row)
        if event is not None and event.type == "statut":
            sent.extend(_tell_merged(env, session, case, event))
    return sent


def _merged_into(session: Session, case: Case) -> list[Case]:
    """The cases merged into ``case``, directly or through another merged case, oldest first."""
    found: list[Case] = []
    frontier = [case.id]
    seen = {case.id}
    while frontier and len(found) < MAX_MERGED:
        rows = list(session.scalars(select(Case).where(Case.merged_into_id.in_(frontier))
                                    .order_by(Case.id).limit(MAX_MERGED)))
        frontier = [c.id for c in rows if c.id not in seen]
        seen.update(frontier)
        found.extend(c for c in rows if c.id in frontier)
    return found[:MAX_MERGED]


def _tell_merged(env: Env, session: Session, survivor: Case, event: CaseEvent) -> list[OutboundMessage]:
    """The declarants of cases merged into ``survivor``, now closed: one mail per address, none to
    an address the survivor's own mail already went to."""
    told = {(survivor.declarant or "").lower()}
    sent = []
    for merged in _merged_into(session, survivor):
        address = (merged.declarant or "").lower()
        if merged.kind != "incident" or not address or address in told or is_no_reply(address):
            continue
        told.add(address)
        row = _send(env, session, merged, event, survivor=survivor)
        if row is not None:
            sent.append(row)
    return sent


def _closing_motif(event: CaseEvent) -> str | None:
    """What staff wrote after ``#clore`` (the status event's motif), for the declarant."""
    motif = (event.data or {}).get("motif") if event.type == "statut" else None
    if not isinstance(motif, str) or not motif.strip():
        return None
    # The template signs the letter: the agent's own sign-off (Outlook adds none of « -- ») goes.
    motif = wording.without_closing(motif.strip())
    if not motif:
        return None
    return motif if len(motif) <= MAX_MOTIF else motif[:MAX_MOTIF].rstrip() + " […]"


def _send(env: Env, session: Session, case: Case, event: CaseEvent,
          survivor: Case | None = None) -> OutboundMessage | None:
    """The mail to ``case``'s declarant about ``event``: its own closure or merge, or (``survivor``)
    the closure of the case it was merged into. The idempotency key names the event's case."""
    assert case.declarant is not None
    verified = declarant_verified(session, case)
    closing = survivor or case
    merged_into = (event.data or {}).get("fusionne_dans") if event.type == "fusion" else None
    if verified:
        shown: dict[str, Any] = case_context(case)
    else:
        # Only what the gateway itself wrote: no structure name, title or text from the mail.
        shown = dict.fromkeys(case_context(case))
        shown.update(reference=case.reference, kind=case.kind, status=case.status)
    from_address, from_name = env.mailer.from_identity(case.region)
    parent = service.last_message_from(session, case, [case.declarant])
    key = (f"{KIND}:{case.id}:{event.seq}" if survivor is None
           else f"{KIND}:{case.id}:via:{survivor.id}:{event.seq}")
    spec = MailSpec(
        template=TEMPLATE,
        context={**region_context(env.settings, case.region), "case": shown, "verified": verified,
                 "merged": event.type == "fusion", "merged_into": merged_into if verified else None,
                 "closed_fr": french_datetime(event.at),
                 # Staff wrote the motif for the establishment; an unverified address gets nothing quoted.
                 "motif": _closing_motif(event) if verified else None,
                 "qualification": closing.severity if event.type == "statut" else None,
                 "via_merge": survivor is not None,
                 "survivor": survivor.reference if survivor is not None and verified else None},
        to=case.declarant, from_address=from_address, from_name=from_name, reply_to=from_address,
        idempotency_key=key,
        in_reply_to=parent,
        references=service.thread_ids(session, case, correspondent=case.declarant) if verified else (),
        auto_submitted="auto-generated",
    )
    return env.mailer.send(session, spec, kind=KIND, case=case, actor=event.actor)
