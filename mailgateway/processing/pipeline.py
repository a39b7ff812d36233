"""The whole routing of an accepted message, in one place, by direct imports.

``PREHANDLERS`` run first, in order, on every message; the first that returns an ``Outcome``
claims it (an establishment acknowledging a bulletin before its reply reaches a case, staff
authoring a bulletin by mail). Otherwise the ``HANDLERS`` entry for the message's kind handles
it; a kind missing from the table is quarantined by the runner.
"""

from __future__ import annotations

from mailgateway.bulletins import by_mail, tracking
from mailgateway.commands import handling
from mailgateway.processing import handlers
from mailgateway.processing.context import Handler, Prehandler

PREHANDLERS: tuple[Prehandler, ...] = (
    tracking.acknowledgement_prehandler,
    by_mail.bulletin_prehandler,
)

HANDLERS: dict[str, Handler] = {
    "declaration": handlers.handle_declaration,
    "alert": handlers.handle_alert,
    "reply": handling.handle_reply,
    "command": handling.handle_command,
    "bounce": tracking.handle_bounce,
    "auto_reply": handlers.handle_silently,
    "loop": handlers.handle_silently,
    "unknown": handlers.handle_unknown,
}
