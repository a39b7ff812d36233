"""An agent's reply to a wave's digest (« Afflux de déclarations », processing/wave.py).

A digest lists up to 100 cases and names none in its subject: a reply to it concerns no case.
Thunderbird quotes it with « > », and what it quotes reads as a declaration (FINESS, type of
incident, severity): an outside tester's reply « Je prends les dossiers de Grenoble et
d'Annecy » opened a case with the agent as its declarant, acknowledged to the agent and notified
to the whole team, and « SSI-ARA-2026-0008 #fusionner SSI-ARA-2026-0007 » merged nothing, in
silence. So authenticated staff replying to a digest (In-Reply-To or References naming it, no
case reference in the subject) get a receipt saying that nothing was opened nor changed, and how
to act on a case; the mail is filed. Commands that name their case or need none (« #original
SSI-… », which the digest offers) run. A reply that names a case in its subject is that case's,
as any staff mail. An agent's reply that arrived unsigned, and another sender's declaration that
quotes a digest's rows, are quarantined (released by staff, processed as they are); anyone else's
mail naming a digest — an alert, a hospital's follow-up after an agent's reply-all — goes on as
any mail.
"""

from __future__ import annotations

import re

from sqlalchemy import select
from sqlalchemy.orm import Session

from mailgateway.commands import receipts
from mailgateway.commands.handling import written_to_the_gateway
from mailgateway.commands.table import COMMANDS
from mailgateway.directory.staff import staff_addresses
from mailgateway.mail.commands import is_command_line
from mailgateway.mail.facts import MessageFacts
from mailgateway.mail.headers import id_forms
from mailgateway.processing import wave
from mailgateway.processing.context import Env, Outcome
from mailgateway.processing.quarantine import released_by_staff
from mailgateway.store.models import InboundMessage, OutboundMessage

REASON = "réponse d'un agent à un récapitulatif d'afflux : aucun dossier concerné"
UNPROVEN = ("réponse non authentifiée à un récapitulatif d'afflux, à l'adresse d'un agent : aucun dossier ouvert "
            "(libérée, elle est traitée comme un message ordinaire)")
QUOTED = ("déclaration en réponse à un récapitulatif d'afflux (réservé aux agents) : elle peut n'en être que la "
          "citation, aucun dossier ouvert (libérée, elle est traitée comme une déclaration)")
FILED = "échange d'agents sur un récapitulatif d'afflux, la boîte en copie : classé, aucun dossier concerné"
# Command-looking lines of the reply repeated in its receipt.
LINES_SHOWN = 20


def digest_reply_prehandler(env: Env, session: Session, inbound: InboundMessage,
                            facts: MessageFacts) -> Outcome | None:
    if facts.case_ref is not None or facts.kind in ("bounce", "auto_reply", "loop", "alert"):
        return None
    answers = _answers_a_digest(session, facts)
    quoted = (answers or facts.sender.authenticated) and quotes_a_digest(facts.body_text)
    # Or an agent's forward of a digest to a colleague with the mailbox in copy, or a « RE: »
    # that lost its In-Reply-To: it quotes the digest's rows (an outside tester: quarantined as a
    # forward of a gateway mail, the team told of the agents' own exchange).
    if not answers and not (facts.sender.authenticated and quoted):
        return None
    sender = (facts.sender.address or "").strip().lower()
    region = facts.region
    staff = bool(sender) and region is not None and sender in staff_addresses(env.settings, session, region)
    if not answers and not staff:
        return None
    if not staff or region is None:
        # An establishment, the ACSS, anyone: a mail naming a digest (an agent's reply-all kept it
        # in References) goes on as any mail — an alert, a follow-up « Concernant le dossier … »
        # (an outside tester: both were quarantined) — but a declaration that quotes the digest's
        # rows, which may be all it declares: quarantined with its reason; released by staff,
        # processed as it is.
        if facts.kind != "declaration" or not quoted:
            return None
        if released_by_staff(session, inbound.id):
            return None
        return Outcome("quarantined", QUOTED)
    if not facts.sender.authenticated:
        # An agent's reply that arrived unsigned opened a case with the agent as declarant, the
        # quoted digest as its summary (an outside tester). Nothing proves who wrote it: no
        # receipt to that address; quarantined, and processed as it is once released by staff.
        return None if released_by_staff(session, inbound.id) else Outcome("quarantined", UNPROVEN)
    if facts.kind == "command" and facts.commands and all(_case_free(cmd.name) for cmd in facts.commands):
        # « #original SSI-… », « #ouverts », « #aide »: commands that name their case or need none,
        # which the digest itself offers (an outside tester's « #original » was refused here).
        return None
    lines = [line.strip() for line in (facts.new_text or "").splitlines() if _looks_like_command(line)]
    if not answers and not lines and not written_to_the_gateway(env, facts, sender):
        # Agents writing to each other about a digest, the mailbox in copy: filed, as their other
        # exchanges in copy are (commands/handling.py), no receipt.
        return Outcome("processed", reason=FILED)
    example = facts.extra.get("body_ref")
    example = example if isinstance(example, str) else "SSI-RÉGION-ANNÉE-NUMÉRO"
    refusal = ("votre message répond à un récapitulatif d'afflux, qui concerne plusieurs dossiers : aucun "
               "dossier n'a été ouvert ni modifié. Pour agir sur un dossier, écrivez à la boîte SSI un "
               f"courriel dont l'objet porte sa référence entre crochets (par exemple « [{example}] »), "
               "avec les commandes dans le corps, une par ligne.")
    if lines:
        shown = "\n".join(f"  {line}" for line in lines[:LINES_SHOWN])
        refusal += f"\nLignes de commande reçues (non appliquées) :\n{shown}"
    receipts.send_receipt(env, session, inbound, facts, to=sender, region=region, case=None, results=[],
                          refused_all=refusal, capped=True)
    return Outcome("processed", reason=REASON)


def _answers_a_digest(session: Session, facts: MessageFacts) -> bool:
    """Whether the mail's In-Reply-To or References (signed or not: this only keeps a case from
    being opened) name one of our digests. Their Message-IDs are unguessable (dispatch/compose.py)."""
    named = id_forms(facts.named_ids or facts.in_reply_to, 20)
    if not named:
        return False
    with session.no_autoflush:
        return session.scalar(select(OutboundMessage.id).where(
            OutboundMessage.message_id.in_(named), OutboundMessage.kind == wave.KIND).limit(1)) is not None


# A digest's row heading as a reply quotes it (« > == 12. SSI-ARA-2026-0042 — … »): from a line's
# start, blanks and quote marks of that line only (never a line break: each start scans its own
# line, linear in the text), then literals.
_ROW = re.compile(r"^[> \t]*== \d{1,3}\. SSI-[A-Z]{2,4}-\d{4}-\d{1,6} ", re.MULTILINE)


def quotes_a_digest(text: str) -> bool:
    return _ROW.search(text[:200_000]) is not None


def _case_free(name: str) -> bool:
    spec = COMMANDS.get(name)
    return spec is not None and not spec.needs_case


def _looks_like_command(line: str) -> bool:
    """« #fusionner X », and « SSI-ARA-2026-0008 #fusionner X » (a reference written before it)."""
    return is_command_line(line) or is_command_line(line[line.find("#"):])
