"""Bulletins requested and approved by mail (staff never need another interface, README).

1. Staff mail the SSI address with the subject ``#bulletin <titre>``, one or more target lines
   ``#cible categorie=LBM,ESMS departement=69`` (clauses joined with "and", values with "or";
   each line is one set of establishments and several lines are a union:
   ``directory.targets.parse_cible``), optionally ``#tlp AMBER``, and the text of the bulletin:
   every line of the new text that is not a command line, paragraphs and line breaks kept
   (format=flowed unwrapped, Outlook HTML paragraphs read as lines: mail/flowed.py,
   mail/htmltext.py). Only authenticated staff of the region count (docs/guarantees.md); anyone
   else gets a refusal and nothing is created.
2. A draft is created and a preview goes back to the author: recipient count, a sample of
   recipients, and how to approve.
3. In answer to the preview, ``#diffuser`` asks for a one-time token (broadcasts are confirmed,
   like other destructive commands), ``#confirmer <jeton>`` queues the bulletin, ``#annuler``
   cancels it. ``#confirmer <jeton>`` and ``#annuler <jeton>`` are also understood outside the thread.

A token that belongs to a case (``Confirmation.case_id``) is never a bulletin's: such a mail goes to
the case commands (commands/table.py), whatever its subject or thread.

Replies threaded to a preview are handled here (a prehandler runs before the command handler),
so the staff command module never sees them.
"""

from __future__ import annotations

import re
import secrets
import unicodedata
from dataclasses import replace
from datetime import datetime, timedelta
from itertools import islice
from typing import Any

from sqlalchemy.orm import Session

from mailgateway.bulletins.fanout import (
    BulletinError,
    _stream,
    approve_bulletin,
    cancel_bulletin,
    create_bulletin,
    out_of_use_context,
)
from mailgateway.bulletins.tracking import bulletin_message
from mailgateway.clock import aware, french_datetime
from mailgateway.directory import Target, count_establishments, count_recipients, parse_target
from mailgateway.directory.staff import all_staff, staff_addresses
from mailgateway.directory.targets import TARGET_KEYS, parse_cible, union
from mailgateway.dispatch.compose import MailSpec
from mailgateway.dispatch.contexts import region_context
from mailgateway.dispatch.wording import nombre
from mailgateway.errors import InputError
from mailgateway.mail.analyse import coverage_reason
from mailgateway.mail.autoreply import is_no_reply
from mailgateway.mail.commands import REASON_UNKNOWN, nearest_command
from mailgateway.mail.facts import Command, MessageFacts
from mailgateway.mail.labels import load_labels
from mailgateway.mail.refs import strip_prefixes
from mailgateway.mail.text import fold
from mailgateway.processing import replay
from mailgateway.processing.context import Env, Outcome
from mailgateway.processing.routing import AUTHORISING_REGION
from mailgateway.statuses import BULLETIN_STATUS_FR
from mailgateway.store.models import Bulletin, Confirmation, InboundMessage

KIND_PREVIEW = "bulletin_apercu"
_COMMAND_LINE = re.compile(r"^\s*#\s?\w")


def bulletin_prehandler(env: Env, session: Session, inbound: InboundMessage, facts: MessageFacts) -> Outcome | None:
    if facts.kind not in ("command", "reply"):
        return None
    if facts.is_bulletin_request and facts.case_ref is None:
        return _request(env, session, inbound, facts)
    tokens = _named_tokens(session, facts)
    if any(t.case_id is not None for t in tokens):
        # "#confirmer/#annuler <jeton d'un dossier>": the case commands' (command_table.confirmer /
        # annuler), never a bulletin's, whatever the subject mentions or the thread answers.
        return None
    preview = bulletin_message(session, facts.in_reply_to, kinds=(KIND_PREVIEW,)) if facts.in_reply_to else None
    if preview is not None and preview.bulletin_id is not None and facts.commands:
        return _decide(env, session, inbound, facts, preview.bulletin_id, threaded=True)
    token = next((t for t in tokens if t.bulletin_id is not None), None)
    if token is not None and token.bulletin_id is not None:
        # The token, not the (unsigned) thread, names the bulletin: nothing was steered by it.
        return _decide(env, session, inbound, _threading_waived(facts), token.bulletin_id, threaded=False)
    by_subject = _bulletin_from_subject(facts)
    if by_subject is not None and session.get(Bulletin, by_subject) is not None:
        return _decide(env, session, inbound, _threading_waived(facts), by_subject, threaded=False)
    return None


# The openings of the Subjects of bulletin_apercu.subject.j2, one per stage: "[Bulletin 12] Aperçu du
# bulletin : …". Only these, right after the reply prefixes ("RE:", "TR:", "AW:") and the "[TLP:X]"
# that compose.py prepends, select a bulletin: a free-text mention ("le bulletin 1") never does.
SUBJECT_MARKER = "[bulletin "
SUBJECT_STAGES = ("aperçu du bulletin", "confirmation demandée", "bulletin diffusé", "bulletin annulé",
                  "commande refusée", "bulletin refusé")  # (the last: what earlier versions wrote)
_THREADING = ("In-Reply-To", "References")


def subject_bulletin(subject: str) -> int | None:
    """The bulletin named by one of our own bulletin Subjects (as a reply keeps it), else None.

    String operations only (no regex on untrusted text): the marker must open the Subject, the
    number be 1 to 9 ASCII digits without a leading zero, and one of ``SUBJECT_STAGES`` follow.
    """
    text = unicodedata.normalize("NFC", " ".join(strip_prefixes(subject).split())).casefold()
    if text.startswith("[tlp:"):
        _, closed, text = text.partition("] ")
        if not closed:
            return None
    if not text.startswith(SUBJECT_MARKER):
        return None
    number, closed, rest = text[len(SUBJECT_MARKER):].partition("] ")
    if not closed or not (0 < len(number) <= 9 and number.isascii() and number.isdigit()) or number[0] == "0":
        return None
    stage, colon, _ = rest.partition(" : ")
    return int(number) if colon and stage in SUBJECT_STAGES else None


def _bulletin_from_subject(facts: MessageFacts) -> int | None:
    """The bulletin a reply names in its *signed* Subject, when its threading headers cannot be used.

    Some signers (Microsoft 365 setups among them) do not cover In-Reply-To / References, so
    analysis ignores them (RFC 6376 §8.15) and the reply reaches no preview. A Subject covered by
    the signature, in the exact form our own bulletin mails carry (``subject_bulletin``), still
    names the bulletin of the mail it answers: the sender's authority, the replay and date checks
    (``_refusal``) and the tokens of ``#confirmer`` / ``#annuler`` hold as for a threaded reply.
    """
    if facts.case_ref is not None or not facts.commands or not facts.sender.authenticated:
        return None
    if "subject" not in facts.sender.signed_headers:
        return None
    return subject_bulletin(facts.subject)


def _threading_waived(facts: MessageFacts) -> MessageFacts:
    """Commands refused by analysis only because unsigned threading headers might have steered
    them: the bulletin is now named by the signed Subject, so they count (``_authority`` re-checks
    the sender against the bulletin's own region)."""
    waived = {coverage_reason(list(names)) for names in (_THREADING, _THREADING[:1], _THREADING[1:])}
    commands = tuple(Command(c.name, c.args, accepted=True, reason=None, line=c.line) if c.reason in waived else c
                     for c in facts.commands)
    return replace(facts, commands=commands)


def _named_tokens(session: Session, facts: MessageFacts) -> list[Confirmation]:
    """The known confirmation tokens that "#confirmer <jeton>" / "#annuler <jeton>" lines name."""
    found: list[Confirmation] = []
    for cmd in facts.commands:
        if cmd.name in ("confirmer", "annuler") and cmd.args:
            token = session.get(Confirmation, cmd.args[0].lower())
            if token is not None:
                found.append(token)
    return found


def _authority(env: Env, session: Session, facts: MessageFacts, region: str) -> str | None:
    """Why the sender may not request or approve a bulletin of ``region``; None when they may.

    The analysis accepts commands of staff of *any* region when the mail names no
    regional mailbox, and knows only the To/Cc region. A bulletin belongs to its own region:
    only authenticated staff of that region count, and only in a mail delivered or addressed to
    a regional SSI mailbox (``routing.named_region``)."""
    sender = (facts.sender.address or "").strip().lower()
    if not facts.sender.authenticated:
        return "message non authentifié : commande ignorée"
    if facts.extra.get(AUTHORISING_REGION) is None:
        return "message adressé à aucune boîte SSI régionale : commande ignorée"
    if sender not in staff_addresses(env.settings, session, region):
        return f"{sender} ne fait pas partie des agents SSI de la région {region} : commande ignorée"
    return None


def _refusal(env: Env, session: Session, inbound: InboundMessage, facts: MessageFacts, region: str) -> str | None:
    authority = _authority(env, session, facts, region)
    if authority is not None:
        return authority
    # Once only, and never from an old mail (docs/guarantees.md): a bulletin request or approval replayed
    # with an extra Received: line, or resent weeks later, acts on nothing. The keys are recorded
    # in this transaction, the one that acts, scoped by the bulletin's region (processing/replay.py).
    stale = replay.command_date_refusal(inbound.raw, facts, aware(inbound.received_at),
                                        env.settings.authentication.max_command_age_days)
    if stale is not None:
        return stale
    first = replay.claim(session, facts, inbound.id, env.clock.now(), region=region)
    if first is not None:
        return replay.already_applied(first)
    refused = [c for c in facts.commands if not c.accepted]
    accepted = [c for c in facts.commands if c.accepted]
    if refused and not accepted:
        return _suggested(refused[0]) or refused[0].reason or "commande refusée"
    return None


def _suggested(cmd: Command) -> str | None:
    """A misspelt command of authenticated staff ("#difuser"), with the nearest one (issue 17)."""
    if cmd.reason != REASON_UNKNOWN:
        return None
    words = cmd.line.strip().lstrip("#").split(None, 1)
    name = nearest_command(words[0], load_labels()) if words else None
    shown = cmd.line.strip()[:80]
    return f"commande inconnue « {shown} »" + (f" ; vouliez-vous écrire « #{name} » ?" if name else "")


def _staff_like(env: Env, session: Session, address: str) -> bool:
    """Claims to be staff (listed, or an address of the agency's domains): a From proves nothing."""
    domains = {r.address.rpartition("@")[2].lower() for r in env.settings.regions}
    return address in all_staff(env.settings, session) or address.rpartition("@")[2] in domains


def _tlp_line(line: str) -> str | None:
    """The value of a "#tlp X" / "TLP : X" line, as written ("" for a bare "#tlp"), or None.

    String operations (the former regex backtracked on blanks). The value is checked by
    bulletins.check_tlp, which refuses what it does not know instead of sending as CLEAR.
    """
    text = line.strip()
    text = text[1:].lstrip() if text.startswith("#") else text
    if text[:3].lower() != "tlp" or text[3:4].isalnum():
        return None
    return text[3:].lstrip(" \t:=").strip()


def _wrapped_cible(facts: MessageFacts) -> tuple[dict[str, list[str]], set[int]]:
    """Each « #cible » line with the lines a mail client wrapped off its end (Outlook wraps plain
    text at 76 columns: « departement=44,49 » alone on the next line), and the indexes of those
    lines in the new text. Found by an outside tester: the wrapped clause became the first line of
    the bulletin and the audience grew to the whole region. A continuation is a line that starts
    with a targeting key (« departement=… », « categorie : … »), or values after a trailing comma or « = »."""
    cibles = {c.line for c in facts.commands if c.name == "cible"}
    lines = facts.new_text.splitlines()
    found: dict[str, list[str]] = {}
    taken: set[int] = set()
    i = 0
    while i < len(lines):
        line = lines[i].strip()
        i += 1
        if line not in cibles or not _COMMAND_LINE.match(line):
            continue
        more = found.setdefault(line, [])
        previous = line
        while i < len(lines) and _continues(previous, lines[i].strip()):
            previous = lines[i].strip()
            more.append(previous)
            taken.add(i)
            i += 1
    return found, taken


_CLAUSE_KEY = re.compile(r"([^\s=:]{1,30})\s*[=:]")
_VALUES = re.compile(r"[\w\-|,; ]{1,300}")


def _continues(previous: str, line: str) -> bool:
    if not line or line.startswith("#"):
        return False
    key = _CLAUSE_KEY.match(line)
    if key is not None and fold(key.group(1)) in TARGET_KEYS:
        return True
    return previous.endswith((",", "|", "=", ":")) and _VALUES.fullmatch(line) is not None


def _body(facts: MessageFacts, wrapped: set[int]) -> tuple[str, str | None]:
    """The bulletin text (command lines removed) and the TLP written in it, if any.

    Only the lines analysis read as commands are removed ("#cible", "#tlp", …, and ``wrapped``: the
    lines a mail client wrapped off a « #cible » line): a "# Titre" or "#1 priorité" line of the text
    stays in it."""
    commands = {c.line for c in facts.commands}
    tlp: str | None = None
    lines: list[str] = []
    for index, line in enumerate(facts.new_text.splitlines()):
        if index in wrapped:
            continue
        written = _tlp_line(line)
        if written is not None and tlp is None:
            tlp = written
            continue
        if line.strip() in commands and _COMMAND_LINE.match(line):
            continue
        lines.append(line.rstrip())
    return "\n".join(lines).strip() + "\n", tlp


def _title(facts: MessageFacts) -> str:
    for cmd in facts.commands:
        if cmd.name == "bulletin" and cmd.args:
            return cmd.args[0]
    return strip_prefixes(facts.subject).lstrip("#").removeprefix("bulletin").strip()


def _target(facts: MessageFacts, wrapped: dict[str, list[str]]) -> Target:
    """The union of the "#cible" lines, each with what was ``wrapped`` off it, each one set of
    establishments (InputError naming the line)."""
    sets: list[Target] = []
    for cmd in facts.commands:
        if cmd.name != "cible":
            continue
        try:
            sets.append(parse_cible(" ".join([*cmd.args, *wrapped.get(cmd.line, [])])))
        except InputError as exc:
            raise BulletinError(f"ligne « {cmd.line[:120]} » : {exc}") from exc
    if not sets:
        raise BulletinError("aucune ligne « #cible » : indiquez par exemple « #cible categorie=LBM,ESMS "
                            "departement=69 » (une ligne par ensemble de destinataires) ou « #cible tous »")
    return union(sets)


def _reply(env: Env, session: Session, inbound: InboundMessage, facts: MessageFacts, region: str,
           stage: str, bulletin: Bulletin | None, *, trusted: bool = True, **extra: Any) -> None:
    """Answer the sender. ``trusted``: authenticated staff of the region. Anyone else gets at most
    a bare refusal, and only if the address looks like the agency's: the From of an
    unauthenticated mail may be a victim's, so nothing of the message (subject, commands) nor of
    the bulletin is echoed, and the refusal counts against the automatic-reply caps (docs/guarantees.md)."""
    to = (facts.sender.address or "").lower()
    if not to or is_no_reply(to) or (not trusted and not _staff_like(env, session, to)):
        return
    shown = bulletin if trusted else None
    from_address, from_name = env.mailer.from_identity(region)
    context = {**region_context(env.settings, region), "stage": stage, "bulletin": _bulletin_json(shown),
               "reason": None, "recipients": 0, "establishments": 0, "sample": [], "token": None,
               "expires_fr": None, "subject": " ".join(facts.subject.split())[:200] if trusted else "", **extra}
    spec = MailSpec(template=KIND_PREVIEW, context=context, to=to, from_address=from_address, from_name=from_name,
                    idempotency_key=f"{KIND_PREVIEW}:{inbound.id}:{stage}", auto_submitted="auto-replied",
                    in_reply_to=facts.message_id, references=facts.answer_references() if trusted else [],
                    tlp=shown.tlp if shown is not None else None)
    # A refusal to anyone but the region's authenticated staff is an automatic reply: capped
    # (RFC 3834 §2, storms), the global budget included.
    env.mailer.send(session, spec, kind=KIND_PREVIEW, bulletin_id=shown.id if shown is not None else None,
                    auto_reply=not trusted or shown is None)


def _bulletin_json(bulletin: Bulletin | None) -> dict[str, Any] | None:
    if bulletin is None:
        return None
    try:
        target_fr = parse_target(bulletin.target).describe()
    except InputError:  # a target stored before its grammar changed: shown as stored
        target_fr = bulletin.target
    return {"id": bulletin.id, "subject": bulletin.subject, "body": bulletin.body, "tlp": bulletin.tlp,
            "target": bulletin.target, "target_fr": target_fr, "status": bulletin.status,
            "author": bulletin.author}


def _request(env: Env, session: Session, inbound: InboundMessage, facts: MessageFacts) -> Outcome:
    # The region the mail was delivered to (docs/guarantees.md), else the one analysis found.
    named = facts.extra.get(AUTHORISING_REGION)
    region = named if isinstance(named, str) else facts.region
    region = region if region and env.settings.region(region) else None
    if region is None:
        return Outcome("quarantined", "demande de bulletin sans région identifiable")
    refusal = _refusal(env, session, inbound, facts, region)
    if refusal is not None:
        _reply(env, session, inbound, facts, region, "refus", None, reason=refusal,
               trusted=_authority(env, session, facts, region) is None)
        return Outcome("processed", reason=f"demande de bulletin refusée : {refusal}")
    continuations, wrapped_lines = _wrapped_cible(facts)
    body, tlp = _body(facts, wrapped_lines)
    try:
        bulletin = create_bulletin(session, env.settings, region=region, target=_target(facts, continuations),
                                   subject=_title(facts), body=body, tlp=tlp,
                                   author=(facts.sender.address or "inconnu").lower(), now=env.clock.now())
    except InputError as exc:
        _reply(env, session, inbound, facts, region, "refus", None, reason=str(exc))
        return Outcome("processed", reason=f"demande de bulletin refusée : {exc}")
    target = parse_target(bulletin.target)
    size = env.settings.bulletins.preview_sample
    sample = [{"name": r.name, "finess": r.finess, "address": r.address, "role": r.role,
               "departement": r.departement, "category": r.category}
              for r in islice(_stream(session, bulletin), size)]
    _reply(env, session, inbound, facts, region, "apercu", bulletin, sample=sample,
           recipients=count_recipients(session, region, target),
           establishments=count_establishments(session, region, target), **out_of_use_context(
               session, region, target))
    return Outcome("processed", reason=f"bulletin {bulletin.id} en attente d'approbation")


def _decide(env: Env, session: Session, inbound: InboundMessage, facts: MessageFacts, bulletin_id: int, *,
            threaded: bool) -> Outcome:
    """Apply the reply's bulletin command. ``threaded``: the reply answers one of our bulletin mails by
    its (trusted) threading headers; otherwise the bulletin was named by a token or by the signed
    Subject only, and ``#annuler`` needs the bulletin's pending token too."""
    bulletin = session.get(Bulletin, bulletin_id)
    if bulletin is None:
        return Outcome("processed", reason=f"bulletin inconnu : {bulletin_id}")
    refusal = _refusal(env, session, inbound, facts, bulletin.region)
    if refusal is not None:
        _reply(env, session, inbound, facts, bulletin.region, "refus", bulletin, reason=refusal,
               trusted=_authority(env, session, facts, bulletin.region) is None)
        return Outcome("processed", reason=f"commande refusée : {refusal}")
    actor = (facts.sender.address or "inconnu").lower()
    now = env.clock.now()
    for cmd in facts.commands:
        if not cmd.accepted:
            continue
        try:
            if cmd.name == "annuler":
                if cmd.args or not threaded:
                    _pending_token(session, bulletin, cmd, now, verb="annuler").used_by = f"annulé par {actor}"
                withdrawn = cancel_bulletin(env, session, bulletin.id, actor)
                _reply(env, session, inbound, facts, bulletin.region, "annule", bulletin, recipients=withdrawn)
                return Outcome("processed", reason=f"bulletin {bulletin.id} annulé")
            if cmd.name == "diffuser":
                if bulletin.status not in ("draft", "approved"):
                    raise BulletinError(f"le bulletin {bulletin.id} n'est plus en attente "
                                        f"({BULLETIN_STATUS_FR.get(bulletin.status, bulletin.status)})")
                hours = env.settings.bulletins.confirmation_hours
                token = Confirmation(token=secrets.token_hex(6), bulletin_id=bulletin.id, command="diffuser",
                                     args=[], requested_by=actor, created_at=now,
                                     expires_at=now + timedelta(hours=hours))
                session.add(token)
                _reply(env, session, inbound, facts, bulletin.region, "confirmation", bulletin, token=token.token,
                       expires_fr=french_datetime(token.expires_at),
                       recipients=count_recipients(session, bulletin.region, parse_target(bulletin.target)))
                return Outcome("processed", reason=f"bulletin {bulletin.id} : confirmation demandée")
            if cmd.name == "confirmer":
                _pending_token(session, bulletin, cmd, now, verb="confirmer").used_by = actor
                queued = approve_bulletin(env, session, bulletin.id, actor)
                _reply(env, session, inbound, facts, bulletin.region, "diffuse", bulletin, recipients=queued)
                return Outcome("processed",
                               reason=f"bulletin {bulletin.id} diffusé à {nombre(queued, 'établissement')}")
        except InputError as exc:
            _reply(env, session, inbound, facts, bulletin.region, "refus", bulletin, reason=str(exc))
            return Outcome("processed", reason=f"commande refusée : {exc}")
    _reply(env, session, inbound, facts, bulletin.region, "refus", bulletin,
           reason="commande attendue : #diffuser, #confirmer <jeton> ou #annuler")
    return Outcome("processed", reason="aucune commande de bulletin")


def _pending_token(session: Session, bulletin: Bulletin, cmd: Command, now: datetime, *, verb: str) -> Confirmation:
    """The unused, unexpired token of ``bulletin`` that ``cmd`` names, now spent (the caller sets used_by)."""
    if not cmd.args:
        raise BulletinError(f"jeton manquant : répondez « #{verb} <jeton> » avec le jeton reçu"
                            + ("" if verb == "confirmer" else " (« #diffuser » en demande un)"))
    token = session.get(Confirmation, cmd.args[0].lower())
    if token is None or token.bulletin_id != bulletin.id:
        raise BulletinError(f"jeton inconnu pour le bulletin {bulletin.id} : {cmd.args[0]} ; le bon jeton est "
                            "dans le message « Confirmation demandée » de ce bulletin (la ligne « #confirmer … » à "
                            "recopier telle quelle) ; le bulletin reste en attente")
    if token.used_at is not None:
        raise BulletinError("jeton déjà utilisé")
    if aware(token.expires_at) < now:
        raise BulletinError("jeton expiré : répondez de nouveau « #diffuser »")
    token.used_at = now
    return token


__all__ = ["KIND_PREVIEW", "SUBJECT_STAGES", "bulletin_prehandler", "subject_bulletin"]
