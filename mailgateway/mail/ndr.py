"""Non-delivery reports that are not (only) RFC 3464: the human-readable text MTAs write.

Most MTAs still explain a failure in prose before (or instead of) a ``message/delivery-status``
part: qmail ("I wasn't able to deliver your message to the following addresses"), Exim ("This
message was created automatically by mail delivery software"), Sendmail ("----- The following
addresses had permanent fatal errors -----"), Postfix ("This is the mail system at host ..."),
Exchange / Office 365 ("Delivery has failed to these recipients or groups", in French "La remise
à ces destinataires ou groupes a échoué", "Remise impossible"), Lotus Notes / Domino ("was not
delivered to"), GroupWise ("user not found"). This module reads that text:

* ``report_text``: the NDR's own words, cut where the returned message starts (its markers, or
  the first header line of a returned message whose MIME structure was lost). Addresses are
  never taken from the returned message: its To: names whom the author wrote to, not whom we
  sent this copy to (a recipient read there was once "invented" by the old detector).
* ``failed_recipients``: the addresses the report says it could not deliver to, minus the
  addresses that are the bounce's own envelope, the sender's, quoted header lines (To:, From:,
  Message-ID: ...) and the text after ``MAIL FROM:``.
* ``diagnostic``: the explanation lines that follow the recipient (kept for staff, in the
  language the remote server wrote them in).
* ``is_challenge`` / ``is_vacation``: challenge/response and whitelist confirmations, and
  auto-replies, which mention "could not be delivered until you confirm" but are no bounce.

Every pattern here runs on untrusted text: linear only (no nested quantifiers), lines bounded.
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections.abc import Iterable

MAX_REPORT_CHARS = 40_000
MAX_LINE = 1_000
MAX_ADDRESSES = 100

# RFC 5322 dot-atom local part and a dotted domain; bounded repetitions, the dot separates
# domain labels so no two ways of matching exist (linear).
ADDRESS = re.compile(
    r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]{1,64}@[A-Za-z0-9](?:[A-Za-z0-9-]{0,62})(?:\.[A-Za-z0-9-]{1,63}){1,10}"
)
_STATUS_CODE = re.compile(r"(?<![\d.])([245])\.\d{1,3}\.\d{1,3}(?![\d.])")
_SMTP_REPLY = re.compile(r"(?<!\d)([45])\d\d(?:[ -]|$)")

# Where the returned message starts in a plain-text NDR (lower-cased substrings).
_RETURNED_MARKERS = (
    "this is a copy of the message",
    "below this line is a copy",
    "copy of the original message",
    "copy of your message follows",
    "copy of your message is",
    "copy of your message below",
    "copy of your message, including",
    "copy of your message has been",
    "original message follows",
    "original message:",
    "original message -----",
    "returned message",
    "message headers follow",
    "original message headers",
    "headers of the original message",
    "header of the original message",
    "headers of your message",
    "undelivered message headers",
    "unsent message below",
    "unsent message follows",
    "your message reads",
    "text of the message follows",
    "original message was attached",
    "en-têtes du message d'origine",
    "en-tetes du message d'origine",
    "message d'origine",
    "content-type: message/rfc822",
    "content-type: text/rfc822-headers",
)
# A header line at the start of a line, in a report that lost its MIME structure, opens the
# returned message (the NDR's own prose never starts a line with these).
_RETURNED_HEADER_STARTS = (
    "received:", "return-path:", "dkim-signature:", "delivered-to:", "x-original-to:",
    "mime-version:", "authentication-results:", "arc-seal:", "x-mailer:",
)
# Lines whose addresses are never failed recipients: quoted headers and session transcripts.
_NOT_RECIPIENT_LINE = (
    "from:", "to:", "cc:", "bcc:", "reply-to:", "sender:", "message-id:", "message id",
    "references:", "in-reply-to:", "return-path:", "received:", "envelope-from", "x-",
    "de :", "de:", "à :", "a :", "à:", "objet", "subject", "sent:", "envoyé", "date:",
    "reporting-mta", "remote-mta", "arrival-date", "mail from", "original message id",
    "original-envelope-id", "from ", "by ",
)
# Robots that write reports; a postmaster can be a failed recipient, so it is not among them.
_ROBOT_LOCAL_PARTS = frozenset({"mailer-daemon", "mail-daemon", "mailerdaemon", "double-bounce"})
# Lines that point the reader somewhere else ("contact <postmaster@...>", "send an e-mail to").
_ELSEWHERE = ("contact", "assistance", "send mail to", "send an e-mail", "send an email", "e-mail message from",
              "help desk", "helpdesk", "for more information", "administrator at", "contactez", "veuillez ecrire",
              "e.g.", "for example", "try sending", "try emailing", "instead")
# Exim / Sendmail name the address we sent to after the one an alias expanded it to.
_EXPANDED_FROM = ("generated from", "expanded from", "original recipient", "original-recipient", "orcpt")

# Prose of a failed delivery (folded: lower case, no accents).
NDR_PHRASES = (
    "could not be delivered", "couldn't be delivered", "could not deliver", "wasn't able to deliver",
    "was not able to deliver", "unable to deliver", "undeliverable", "undelivered", "not delivered",
    "delivery failed", "delivery has failed", "delivery to the following", "delivery failure",
    "failed to deliver", "permanent error", "permanent fatal", "fatal error", "addresses failed",
    "address(es) failed", "following address", "following recipient", "user unknown", "unknown user",
    "user not found", "no such user", "mailbox unavailable", "mailbox not found", "mailbox is full",
    "mailbox full", "over quota", "quota exceeded", "does not exist", "doesn't exist", "not exist",
    "recipient rejected", "rejected", "not listed", "invalid recipient", "recipient address rejected",
    "unknown recipient", "address not found", "no mailbox", "message delayed", "delivery delayed",
    "has not yet been delivered", "not yet been delivered", "will retry", "giving up", "given up",
    "returned mail", "mail delivery", "failure notice", "non remis", "remise impossible",
    "n'a pas pu etre remis", "a echoue", "introuvable", "n'existe pas", "inconnu", "echec",
    "destinataire", "unzustellbar", "nicht zugestellt", "host unknown", "relay denied", "relaying denied",
    "service unavailable", "no valid recipients", "bad destination", "not accepted", "message rejected",
    "error has occurred while attempting to deliver", "envelope expired", "invalid user", "non-delivery",
    "delivery status notification", "could not be sent", "n'a pas ete remis", "n'a pas pu etre distribue",
    "無法", "无法", "未能",
    # French, German, Spanish, Italian wording of the same
    "n'a pas pu etre delivre", "n'a pu etre delivre", "non delivre", "adresse inconnue", "destinataire inconnu",
    "boite aux lettres pleine", "echec de la remise", "echec de remise", "impossible de remettre",
    "n'a pas pu etre achemine", "konnte nicht zugestellt", "no se pudo entregar", "no entregado",
    "non e stato possibile consegnare", "did not reach", "wasn't delivered", "was not delivered",
)
# Wording that only a non-delivery report uses: with a recipient named in the report, enough to
# recognise one whatever its sender and subject (a report from "admin@", without a From...).
STRONG_PHRASES = (
    "non-delivery", "could not be delivered to", "couldn't be delivered to", "wasn't able to deliver",
    "was not able to deliver", "unable to deliver message to", "delivery has failed to these recipients",
    "address(es) failed", "permanent fatal errors", "delivery to the following recipient",
    "mail delivery software", "remise impossible", "n'a pas pu etre remis", "la remise a ces destinataires",
    "no such user", "user unknown", "unknown user", "invalid user address", "rcpt to:",
    "error has occurred while attempting to deliver", "did not reach the following recipient",
    "was not delivered to", "did not receive a copy of your message", "the following recipients returned",
    "following addresses had", "user not found", "mailbox unavailable", "recipient address rejected",
    "unable to deliver your message", "wasn't delivered to", "did not reach some or all",
    "n'a pas pu etre delivre", "n'a pu etre delivre", "destinataire inconnu", "adresse inconnue",
    "konnte nicht zugestellt", "no se pudo entregar",
)
_FAILURE_CODES = ("5.1.", "5.2.", "5.4.", "5.5.", "5.7.", "4.2.", "4.4.", "550", "551", "552", "553", "554")

# Challenge/response and whitelist confirmations ("prove you are human"), never bounces.
_CHALLENGE_PHRASES = (
    "whitelist", "white list", "white-list", "liste blanche", "challenge", "confirm that you",
    "verify that you", "verify your", "confirm your", "confirm you are", "prove you are",
    "please confirm", "click the link", "click on the link", "cliquez sur le lien", "verification request",
    "sender verification", "authorize your", "authorise your", "spam protection", "anti-spam protection",
    "protected by", "spamarrest", "spam arrest", "boxbe", "mailinblack", "bluebottle", "sendio",
    "approve your", "pending approval", "awaiting your confirmation", "real person", "human sender",
    "confirmer votre", "confirmer que vous", "validez votre", "valider votre", "approuver",
    "verification de l'expediteur", "expediteur non reconnu", "demande d'autorisation",
)
_VACATION_PHRASES = (
    "out of office", "out of the office", "automatic reply", "auto-reply", "autoreply", "auto reply",
    "vacation", "on leave", "away from", "absent", "absence", "reponse automatique", "conges", "i am away",
    "i'm away", "currently away", "will be back", "de retour le", "abwesend", "abwesenheit",
)


_COMBINING = re.compile(r"[\u0300-\u036f]")


def fold(text: str) -> str:
    """Lower case without accents: one form for French and English markers."""
    low = text.lower()
    if low.isascii():
        return low
    return _COMBINING.sub("", unicodedata.normalize("NFKD", low)).replace("\u2019", "'")


def report_text(texts: Iterable[str]) -> str:
    """The report's own words: every text, each cut where a returned message starts."""
    kept: list[str] = []
    total = 0
    for text in texts:
        lines: list[str] = []
        for n, line in enumerate(text.replace("\r\n", "\n").replace("\r", "\n").split("\n")):
            low = line[:MAX_LINE].strip().lower()
            # Every marker holds one of these words: most lines are ruled out at once.
            if ("message" in low or "copy" in low or "content-type" in low) and any(
                m in low for m in _RETURNED_MARKERS
            ):
                break
            # A header line only after some prose: a report that starts with "Received:" lost
            # its own headers into the body, it did not start the returned message there.
            bare = line.lstrip(">").lstrip(" ") if line.startswith(">") else line
            if n > 2 and bare[:1] not in (" ", "\t") and bare.lower().startswith(_RETURNED_HEADER_STARTS):
                break
            lines.append(line[:MAX_LINE])
            total += len(lines[-1]) + 1
            if total > MAX_REPORT_CHARS:
                break
        kept.append("\n".join(lines))
        if total > MAX_REPORT_CHARS:
            break
    return "\n\n".join(kept)


def has_strong_wording(text: str) -> bool:
    folded = fold(text[:MAX_REPORT_CHARS])
    return any(p in folded for p in STRONG_PHRASES)


def has_ndr_wording(text: str) -> bool:
    folded = fold(text[:MAX_REPORT_CHARS])
    return any(p in folded for p in NDR_PHRASES) or any(c in folded for c in _FAILURE_CODES)


def _candidate_lines(report: str) -> Iterable[str]:
    for line in report.split("\n"):
        if "@" not in line:
            continue  # no address on it
        low = line.strip().lower().lstrip(">").strip()
        if low.startswith(_NOT_RECIPIENT_LINE):
            continue
        folded = fold(low)
        if any(p in folded for p in _ELSEWHERE):
            continue
        yield line


def _address_spans(line: str) -> Iterable[str]:
    """Addresses of a line, without those after MAIL FROM (the sender in a transcript)."""
    low = line.lower()
    cut = low.find("mail from")
    if cut < 0:
        cut = low.find("envelope-from")
    for match in ADDRESS.finditer(line):
        if 0 <= cut < match.start():
            break
        # "<id@host>" right after "message-id"/"id" is a Message-ID, not an address.
        before = low[max(0, match.start() - 14) : match.start()]
        if "id" in before and ("message" in before or "id:" in before or "id <" in before or "id=" in before):
            continue
        address = match.group(0).strip(".-'").lower()
        local, _at, domain = address.partition("@")
        # Exchange writes "SMTP=user@host" / "smtp:user@host"; the prefix is no part of the address.
        prefix, eq, rest = local.partition("=")
        if eq and prefix in ("smtp", "rfc822", "internet") and rest:
            address = f"{rest}@{domain}"
        yield address


def failed_recipients(report: str, excluded: Iterable[str], excluded_parts: Iterable[str] = ()) -> list[str]:
    """Addresses the report names as undeliverable (see module docstring for what is excluded).

    When a line says the address before it was expanded from another one ("generated from",
    "expanded from", ORCPT), the other one, the address we sent to, replaces it.
    """
    never = {a.lower() for a in excluded if a}
    parts = [p.lower() for p in excluded_parts if p]
    found: list[str] = []
    expanded: set[str] = set()  # addresses an alias produced: never reported for themselves
    for line in _candidate_lines(report):
        folded = line.lower()
        addresses = list(_address_spans(line))
        marker = min((folded.find(m) for m in _EXPANDED_FROM if m in folded), default=-1)
        if marker >= 0 and addresses:
            # "<final> (expanded from <original>)" on one line, or the original on its own line
            # right after the final address: the original is the address we sent to.
            original = next((a for a in _address_spans(line[marker:])), addresses[-1])
            final = [a for a in addresses if a != original]
            if final:
                expanded.update(final)
            elif found:
                expanded.add(found.pop())
            if original not in found and original not in never:
                found.append(original)
            continue
        for address in addresses:
            local = address.partition("@")[0]
            if address in never or address in expanded or local in _ROBOT_LOCAL_PARTS or address in found:
                continue
            if any(p in address for p in parts):
                continue
            found.append(address)
            if len(found) >= MAX_ADDRESSES:
                return found
    return found


def diagnostic(report: str, recipients: list[str], *, first_lines: bool = True) -> str | None:
    """What the report says went wrong, in its own words (French Exchange text stays French):
    the lines after the first recipient's line, then the remote server's reply or status code
    when those lines do not hold it; else the report's first lines of failure; 500 characters."""
    lines = [ln.strip() for ln in report.split("\n")]
    picked: list[str] = []
    if recipients:
        first = recipients[0]
        for n, line in enumerate(lines):
            low = line.lower()
            if first not in low or any(m in low for m in _EXPANDED_FROM):
                continue
            rest = low.replace(first, "").strip(" <>:.,;()")
            if len(rest) > 12 and not low.startswith(("to:", "from:")):
                picked.append(line)
            for follow in lines[n + 1 : n + 8]:
                if not follow:
                    if picked:
                        break
                    continue
                low_follow = follow.lower()
                if any(m in low_follow for m in _EXPANDED_FROM):
                    continue
                if ADDRESS.search(follow) and not _STATUS_CODE.search(follow) and not _SMTP_REPLY.search(follow):
                    break
                picked.append(follow)
                if len(picked) >= 4:
                    break
            break
    if not any(_STATUS_CODE.search(p) or _SMTP_REPLY.search(p) for p in picked):
        coded = [ln for ln in lines if (_STATUS_CODE.search(ln) or _SMTP_REPLY.match(ln)) and ln not in picked]
        picked.extend(coded[:1] if picked else coded[:3])
    if not picked:
        folded_lines = [(ln, fold(ln)) for ln in lines if ln]
        picked = [ln for ln, f in folded_lines if any(p in f for p in NDR_PHRASES)][:2]
        if not picked and first_lines:
            picked = [ln for ln, _f in folded_lines][:3]
    text = " ".join(" ".join(picked).split())
    return text[:500] or None


def is_challenge(subject: str, text: str) -> bool:
    folded = fold(subject[:300] + "\n" + text[:20_000])
    hits = sum(1 for p in _CHALLENGE_PHRASES if p in folded)
    # One phrase that names the mechanism is enough; otherwise two of the generic ones.
    return hits >= 2 or any(w in folded for w in ("whitelist", "liste blanche", "challenge"))


def is_vacation_subject(subject: str) -> bool:
    folded = fold(subject[:300])
    return any(p in folded for p in _VACATION_PHRASES)


_FOR_CLAUSE = re.compile(r"\bfor[ \t]{1,10}<?(" + ADDRESS.pattern + r")>?", re.I)


def envelope_recipients(returned_text: str, report: str) -> list[str]:
    """Envelope recipients of the returned message (``Received: ... for <addr>``, RFC 5321
    §4.4) that the report itself names by their local part: the address we sent to, when the
    report only gives a mailbox name ("thomas.dtankengine  No matches to nameserver query")."""
    folded = report.lower()
    found: list[str] = []
    for match in _FOR_CLAUSE.finditer(returned_text[:200_000]):
        address = match.group(1).strip(".-'").lower()
        local = address.partition("@")[0]
        if len(local) >= 3 and local in folded and address not in found:
            found.append(address)
        if len(found) >= MAX_ADDRESSES:
            break
    return found


def ses_notification(text: str) -> tuple[str, list[str], bool] | None:
    """(type, bounced recipients, permanent) of an Amazon SES notification relayed by SNS
    (JSON, possibly wrapped as the "Message" string of the SNS envelope), or None."""
    start = text.find("{")
    if start < 0 or "notificationType" not in text[:200_000]:
        return None
    try:
        # strict=False: mail transports fold long JSON lines inside its strings.
        decoder = json.JSONDecoder(strict=False)
        data, _end = decoder.raw_decode(text[start : start + 200_000])
        if isinstance(data, dict) and isinstance(data.get("Message"), str):
            data, _end = decoder.raw_decode(data["Message"][:200_000].strip())
    except (ValueError, RecursionError):
        return None
    if not isinstance(data, dict):
        return None
    kind = str(data.get("notificationType", ""))
    detail = data.get("bounce") if isinstance(data.get("bounce"), dict) else {}
    listed = detail.get("bouncedRecipients") if isinstance(detail, dict) else None
    recipients = [str(r.get("emailAddress", "")).strip().lower() for r in listed[:MAX_ADDRESSES]
                  if isinstance(r, dict)] if isinstance(listed, list) else []
    permanent = isinstance(detail, dict) and detail.get("bounceType") == "Permanent"
    return kind, [r for r in recipients if "@" in r], permanent
