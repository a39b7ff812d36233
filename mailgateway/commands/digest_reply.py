"""An agent's reply to a wave's digest (« Afflux de déclarations », processing/wave.py).

A digest lists up to 100 cases and names none in its subject: a reply to it concerns no case.
Thunderbird quotes it with « > », and what it quotes reads as a declaration (FINESS, type of
incident, severity): an outside tester's reply « Je prends les dossiers de Grenoble et
d'Annecy » opened a case with the agent as its declarant, acknowledged to the agent and notified
to the whole team, and « SSI-ARA-2026-0008 #fusionner SSI-ARA-2026-0007 » merged nothing, in
silence. So authenticated staff replying to a digest (In-Reply-To or References naming it, no
case reference in the subject) get a receipt saying that nothing was opened nor changed, and how
to act on a case; the mail is filed. A reply that names a case in its subject is that case's, as
any staff mail. Anyone else's reply goes on as before (unauthenticated mail authorises nothing).
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from mailgateway.commands import receipts
from mailgateway.commands.table import COMMANDS
from mailgateway.directory.staff import staff_addresses
from mailgateway.mail.commands import is_command_line
from mailgateway.mail.facts import MessageFacts
from mailgateway.mail.headers import id_forms
from mailgateway.processing import wave
from mailgateway.processing.context import Env, Outcome
from mailgateway.store.models import InboundMessage, OutboundMessage

REASON = "réponse d'un agent à un récapitulatif d'afflux : aucun dossier concerné"
UNPROVEN = ("réponse à un récapitulatif d'afflux (réservé aux agents) d'un expéditeur non authentifié ou qui "
            "n'est pas agent de la région : aucun dossier ouvert")
# Command-looking lines of the reply repeated in its receipt.
LINES_SHOWN = 20


def digest_reply_prehandler(env: Env, session: Session, inbound: InboundMessage,
                            facts: MessageFacts) -> Outcome | None:
    if facts.case_ref is not None or facts.kind in ("bounce", "auto_reply", "loop"):
        return None
    if not _answers_a_digest(session, facts):
        return None
    sender = (facts.sender.address or "").strip().lower()
    region = facts.region
    if (not facts.sender.authenticated or not sender or region is None
            or sender not in staff_addresses(env.settings, session, region)):
        # Digests go to staff alone: an agent's reply that arrived unsigned (an outside tester:
        # it opened a case with the agent as declarant, quoted digest as its summary) or anyone
        # else's. Quarantined, with its reason, for staff to look at: no receipt to an address
        # nothing proves.
        return Outcome("quarantined", UNPROVEN)
    if facts.kind == "command" and facts.commands and all(_case_free(cmd.name) for cmd in facts.commands):
        # « #original SSI-… », « #ouverts », « #aide »: commands that name their case or need none,
        # which the digest itself offers (an outside tester's « #original » was refused here).
        return None
    example = facts.extra.get("body_ref")
    example = example if isinstance(example, str) else "SSI-RÉGION-ANNÉE-NUMÉRO"
    lines = [line.strip() for line in (facts.new_text or "").splitlines() if _looks_like_command(line)]
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


def _case_free(name: str) -> bool:
    spec = COMMANDS.get(name)
    return spec is not None and not spec.needs_case


def _looks_like_command(line: str) -> bool:
    """« #fusionner X », and « SSI-ARA-2026-0008 #fusionner X » (a reference written before it)."""
    return is_command_line(line) or is_command_line(line[line.find("#"):])
