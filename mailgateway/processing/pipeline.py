"""The whole routing of an accepted message, in one place, by direct imports.

``PREHANDLERS`` run first, in order, on every message; the first that returns an ``Outcome``
claims it (an establishment acknowledging a bulletin before its reply reaches a case, staff
authoring a bulletin by mail). Otherwise the ``HANDLERS`` entry for the message's kind handles
it; a kind missing from the table is quarantined by the runner.
"""

from __future__ import annotations

from sqlalchemy.orm import Session

from mailgateway.bulletins import by_mail, tracking
from mailgateway.commands import digest_reply, handling
from mailgateway.mail.facts import MessageFacts
from mailgateway.processing import handlers, regional
from mailgateway.processing.context import Env, Handler, Outcome, Prehandler
from mailgateway.store.models import InboundMessage

PREHANDLERS: tuple[Prehandler, ...] = (
    regional.copy_prehandler,  # a reply/command copied to a second regional mailbox: attached once
    digest_reply.digest_reply_prehandler,  # staff answering a wave's digest: no case, a receipt says how
    tracking.acknowledgement_prehandler,
    by_mail.bulletin_prehandler,
    handlers.relay_declaration_prehandler,  # a reply to a relayed alert/bulletin that declares: a linked case
    handlers.new_incident_in_reply_prehandler,  # « un NOUVEL incident » in reply to a case: its own case, linked
    handlers.courtesy_prehandler,  # « Merci, bonne journée » on a closed case: attached, not reopened
    handling.unrecognised_staff_prehandler,  # staff mail with no reference and no command: answered
    handling.body_reference_prehandler,  # « Concernant le dossier SSI-… » from the case's own people: a reply
)


def handle_declaration(env: Env, session: Session, inbound: InboundMessage, facts: MessageFacts) -> Outcome:
    """A declaration; then, on the case it opened, the commands an agent wrote above it when
    forwarding it (« TR: » + « #qualifier grave »: mail/analyse.py), with their receipt."""
    outcome = handlers.handle_declaration(env, session, inbound, facts)
    if outcome.case is None or outcome.status != "processed":
        return outcome
    if outcome.reason == handlers.FORWARDED_RECEIVED_BEFORE:  # the agent hears where it went, commands or not
        handling.handle_command(env, session, inbound, facts, opened=outcome.case, received_before=True)
    elif facts.commands and outcome.reason is None:
        handling.handle_command(env, session, inbound, facts, opened=outcome.case)
    return outcome


HANDLERS: dict[str, Handler] = {
    "declaration": handle_declaration,
    "alert": handlers.handle_alert,
    "reply": handling.handle_reply,
    "command": handling.handle_command,
    "bounce": tracking.handle_bounce,
    "auto_reply": handlers.handle_silently,
    "loop": handlers.handle_silently,
    "unknown": handlers.handle_unknown,
}
