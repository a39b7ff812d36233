"""Read receipts: RFC 8098 message disposition notifications and Outlook's « Lu : » receipts.

A receipt is an automatic message (RFC 8098 §2.1: never answered) saying that a message of ours
was displayed, deleted, dispatched or processed. It is never a reply to read: staff get no
« Réponse reçue » for it. Only a ``displayed`` disposition (or an Outlook « a été lu » receipt)
says the message was read, which a bulletin or relayed alert may count (bulletins/tracking.py).

Outlook, when it sends a receipt as plain text rather than a ``multipart/report``, writes a
subject « Lu : <objet> » / « Read: <subject> » (« Non lu : » / « Not read: » when deleted unread)
and a body « Votre message … a été lu le … » / « Your message … was read on … ».
"""

from __future__ import annotations

from dataclasses import dataclass

from mailgateway.mail.parse import ParsedMessage
from mailgateway.mail.text import match_form

# RFC 8098 §3.2.6: disposition-type.
_TYPES = ("displayed", "deleted", "dispatched", "processed")
# Outlook/Exchange and other clients' receipt subjects (match form, then a space or the end).
_READ_SUBJECTS = ("lu", "read", "gelesen", "letto", "leido", "gelezen", "return receipt displayed",
                  "accuse de lecture", "confirmation de lecture", "read receipt", "read notification")
_UNREAD_SUBJECTS = ("non lu", "not read", "nicht gelesen", "return receipt deleted")
# Body sentences of such receipts (match form).
_READ_BODY = ("a ete lu", "was read on", "was read at", "was displayed", "wurde am", "a ete affiche")
_UNREAD_BODY = ("supprime sans avoir ete lu", "deleted without being read", "was deleted", "a ete supprime")


@dataclass(frozen=True)
class Receipt:
    how: str  # "mdn" (RFC 8098 report) or "subject" (a client's plain-text receipt)
    disposition: str  # displayed | deleted | dispatched | processed
    read: bool  # the message was displayed to its reader

    def to_json(self) -> dict[str, object]:
        return {"how": self.how, "disposition": self.disposition, "read": self.read}


def _disposition_type(report: str) -> str | None:
    """The disposition-type of the ``Disposition:`` field (``action/sending; type/modifier``)."""
    for line in report.splitlines()[:200]:
        name, colon, value = line.partition(":")
        if colon and name.strip().lower() == "disposition":
            _modes, _semi, rest = value.partition(";")
            kind = rest.strip().partition("/")[0].strip().lower()
            return kind if kind in _TYPES else None
    return None


def _report_type(pm: ParsedMessage) -> str:
    try:
        value = pm.msg.get_param("report-type")
    except Exception:
        return ""
    return str(value).strip().lower() if isinstance(value, str) else ""


def read_receipt(pm: ParsedMessage) -> Receipt | None:
    """The receipt this message is, or None. Linear in the message's text."""
    try:
        ctype = pm.msg.get_content_type()
    except Exception:
        ctype = ""
    is_report = ctype == "multipart/report" and _report_type(pm) in (
        "disposition-notification", "global-disposition-notification")
    if is_report or pm.dispositions:
        kind = None
        for report in pm.dispositions:
            kind = _disposition_type(report)
            if kind:
                break
        kind = kind or "displayed"
        return Receipt("mdn", kind, kind == "displayed")
    subject = match_form(pm.header("Subject")[:300])
    if not subject:
        return None
    unread = any(subject == s or subject.startswith(s + " ") for s in _UNREAD_SUBJECTS)
    if not unread and not any(subject == s or subject.startswith(s + " ") for s in _READ_SUBJECTS):
        return None  # the body is read only under a receipt's subject (most mail stops here)
    body = match_form(pm.text()[:3000])
    if unread:
        return Receipt("subject", "deleted", False) if any(b in body for b in _UNREAD_BODY) else None
    if any(b in body for b in _READ_BODY):
        return Receipt("subject", "displayed", True)
    return None
