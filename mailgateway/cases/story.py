"""The story of a case, in French, for people: one line per event of its timeline.

``#statut REF`` (by mail) and ``mailgateway cases show REF`` both print these lines, so staff read
the same story wherever they ask. Each line says when (Paris time, ``clock.french_datetime``), who
(the actor) and what: a status change with French labels (``data/libelles.toml``), the recipients
of a mail, an excerpt of a note or an answer. Codes never reach the reader; an event type this
module does not know is still told, with its name made readable and its reason.

The timeline's stored data and its hashes are untouched: this is a view (``cases/timeline.py``).
"""

from __future__ import annotations

import tomllib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from functools import cache
from importlib import resources
from typing import Any

from mailgateway.clock import aware, french_datetime

EXCERPT = 160  # characters of a note or an answer shown in a story line
RECIPIENTS_SHOWN = 5  # addresses named on a line; the count of the others follows

# Kinds of mail (``OutboundMessage.kind`` as journaled by the Mailer), as staff say them.
MAIL_KINDS = {
    "accuse_reception": "accusé de réception",
    "notification_equipe": "notification à l'équipe",
    "notification_afflux": "notification groupée à l'équipe (afflux de déclarations)",
    "notification_reponse": "notification de réponse",
    "reponse": "réponse",
    "demande_info": "demande d'informations",
    "transmission_acss": "transmission à l'ACSS pour qualification",
    "recu_commandes": "compte rendu de commandes",
    "rappel": "rappel d'échéance",
    "synthese": "synthèse",
    "alerte_relais": "alerte relayée",
    "bulletin": "bulletin",
    "bulletin_rapport": "rapport de diffusion",
    "contact_a_corriger": "contact à corriger",
    "avertissement_plafond": "avertissement",
    "cloture_declarant": "information de clôture au déclarant",
    "transfert": "information de transfert au déclarant",
    "notification_transfert": "notification de transfert à l'équipe",
    "suivi_declarant": "avis de suivi au déclarant",  # commands/reply_notice.py
    "assignation": "avis d'assignation",
}
_FEMININE = frozenset({"notification_equipe", "notification_afflux", "notification_reponse", "reponse", "demande_info",
                       "transmission_acss",
                       "synthese", "alerte_relais", "cloture_declarant", "transfert",
                       "notification_transfert"})
# Audited columns named by the timeline's safety-net event ("etat", cases/timeline.py).
_COLUMNS = {"status": "statut", "severity": "gravité", "nature": "nature", "incident_type": "type d'incident",
            "category": "catégorie", "tlp": "TLP", "title": "intitulé", "finess": "FINESS",
            "establishment": "structure", "declarant": "déclarant", "assignee": "chargé(e)", "fields": "champs",
            "merged_into_id": "fusion", "linked_case_id": "dossier lié", "region": "région",
            "kind": "nature du dossier", "reference": "référence", "origin_message_id": "message d'origine"}
# Kinds of received message (``MessageFacts.kind``).
MESSAGE_KINDS = {
    "declaration": "déclaration",
    "alert": "alerte",
    "reply": "réponse",
    "command": "commandes",
    "bounce": "avis de non-remise",
    "auto_reply": "réponse automatique",
    "loop": "message en boucle",
    "unknown": "message",
}


@cache
def _labels() -> dict[str, str]:
    text = resources.files("mailgateway").joinpath("data/libelles.toml").read_text(encoding="utf-8")
    return dict(tomllib.loads(text)["libelles"])


def label(code: object) -> str:
    """French label of an enumeration code (``QUALIFIE`` -> « qualifié »); other values as they are."""
    if code is None or code == "":
        return "—"
    text = str(code)
    return _labels().get(text, text)


def excerpt(text: object, limit: int = EXCERPT) -> str:
    """One line of at most ``limit`` characters, cut at a word, ellipsis when cut."""
    flat = " ".join(str(text or "").split())
    if len(flat) <= limit:
        return flat
    cut = flat[:limit].rsplit(" ", 1)[0] or flat[:limit]
    return cut + "…"


def french_datetime_of(value: object) -> str:
    """« 27/11/2026 à 10:05 » of a datetime or of its ISO 8601 text; « — » for nothing."""
    if isinstance(value, datetime):
        return french_datetime(aware(value))
    if isinstance(value, str):
        try:
            return french_datetime(aware(datetime.fromisoformat(value)))
        except ValueError:
            return value
    return "—"


def _recipients(addresses: Sequence[str]) -> str:
    shown = ", ".join(addresses[:RECIPIENTS_SHOWN])
    more = len(addresses) - RECIPIENTS_SHOWN
    return shown + (f" et {more} {'autre' if more == 1 else 'autres'}" if more > 0 else "")


def labelled(text: object) -> str:
    """Free text with its enumeration codes in French: « gravité GRAVE » -> « gravité grave »
    (word by word: linear, and a word that is not a code stays as it is)."""
    return " ".join(_labels().get(word, word) for word in str(text or "").split(" "))


_TARGET_KEYS = {"category": "catégorie", "departement": "département", "finess": "FINESS", "region": "région"}


def target_fr(expression: object) -> str:
    """A stored target expression in French (« category=ESMS|LBM,departement=69 » -> « catégorie
    établissement social ou médico-social ou laboratoire de biologie médicale et département 69 »).
    The canonical form is directory/targets.Target.__str__; this layer may not import it."""
    text = str(expression or "").strip()
    if not text:
        return "?"
    if text == "all":
        return "tous les établissements de la région"
    sets = []
    for one in text.split(" ; "):
        parts = []
        for clause in one.split(","):
            key, eq, values = clause.partition("=")
            if not eq:
                parts.append(clause)
                continue
            parts.append(f"{_TARGET_KEYS.get(key.strip(), key.strip())} "
                         + " ou ".join(label(v.strip()) for v in values.split("|")))
        sets.append(" et ".join(parts))
    return " ; ou ".join(sets)


def _with_reason(text: str, data: Mapping[str, Any]) -> str:
    motif = data.get("motif")
    return f"{text} ({labelled(excerpt(motif, 200))})" if motif else text


def _mail(data: Mapping[str, Any], recipients: Sequence[str]) -> str:
    kind = str(data.get("type") or "")
    what = MAIL_KINDS.get(kind, kind.replace("_", " ") or "message")
    ending = "e" if kind in _FEMININE else ""
    line = f"{what[:1].upper()}{what[1:]} envoyé{ending} à {_recipients(recipients)}"
    if data.get("extrait"):
        line += f" : « {excerpt(data['extrait'])} »"
    return line


def describe(type_: str, data: Mapping[str, Any]) -> str:
    """What one event did, in French (one line, no code)."""
    d = data
    if type_ == "statut":
        return _with_reason(f"Statut : {label(d.get('de'))} → {label(d.get('vers'))}", d)
    if type_ == "qualification":
        return f"Gravité : {label(d.get('de'))} → {label(d.get('vers'))}"
    if type_ == "structure":
        return (f"Structure précisée : {d.get('nom') or '?'} (FINESS {d.get('vers') or '?'})"
                + (f", auparavant FINESS {d['de']}" if d.get("de") else ""))
    if type_ == "assignation":
        before = d.get("de")
        if before and before == d.get("vers"):  # « #assigner moi » by the assignee: nothing changed
            return f"Assignation confirmée : {before} (déjà assigné)"
        return f"Dossier assigné à {d.get('vers') or 'personne'}" + (f" (auparavant {before})" if before else "")
    if type_ == "note":
        return f"Note : « {excerpt(d.get('texte'))} »"
    if type_ == "message_recu":
        kind = MESSAGE_KINDS.get(str(d.get("type") or ""), "message")
        auth = d.get("authentification") or {}
        trust = "" if not isinstance(auth, Mapping) or auth.get("authentifie") else " (expéditeur non authentifié)"
        said = f" — « {excerpt(d['extrait'])} »" if d.get("extrait") else ""
        return f"Message reçu ({kind}) : « {excerpt(d.get('objet'), 120)} »{trust}{said}"
    if type_ == "mail_sortant":
        return _mail(d, [str(d.get("destinataire") or "?")])
    if type_ == "envoi_refuse":
        kind = MAIL_KINDS.get(str(d.get("type") or ""), str(d.get("type") or "message").replace("_", " "))
        return _with_reason(f"Envoi refusé ({kind}) à {d.get('destinataire') or '?'}", d)
    if type_ == "rebond":
        nature = "définitif" if d.get("permanent") else "temporaire"
        if d.get("non_attribue"):  # a copy of a message to several agents, forwarded elsewhere
            return (f"Non-remise ({nature}) à {d.get('destinataire') or '?'}, adresse de renvoi d'un des "
                    f"destinataires ({d.get('envoye_a') or '?'}) : {excerpt(d.get('diagnostic'), 120)}")
        return f"Non-remise ({nature}) à {d.get('destinataire') or '?'} : {excerpt(d.get('diagnostic'), 120)}"
    if type_ == "fusion":
        if d.get("fusionne_dans"):
            return f"Fusionné dans le dossier {d['fusionne_dans']}"
        return f"Doublon {d.get('doublon_absorbe') or '?'} fusionné dans ce dossier"
    if type_ == "doublon_possible":
        # Said the same on both cases: « doublon du dossier X » read the wrong way round on the
        # older one, which is no duplicate of the newer (outside tester).
        # Neither « même structure » (a duplicate may be the same authenticated declarant without a
        # FINESS, for another site: an outside tester): what the staff notice says is why.
        return f"Doublon possible : dossier {d.get('dossier_lie') or '?'} (dossiers liés)"
    if type_ == "dossier_lie":
        return f"Lié au dossier {d.get('dossier_lie') or '?'}"
    if type_ == "indicateurs_ajoutes":
        # Their kinds only: the values (links among them) are in the case's indicators, never in a
        # line that mail to staff may print.
        kinds = sorted({str(i).partition(":")[0] for i in d.get("indicateurs") or []})
        return f"Indicateurs ajoutés par une réponse : {len(d.get('indicateurs') or [])} ({', '.join(kinds)})"
    if type_ == "rappel":
        who = d.get("destinataires") or []
        to = f" à {_recipients([str(a) for a in who])}" if who else ""
        step = f" n° {d['etape']}" if d.get("etape") else ""
        escalade = " (escalade au référent)" if d.get("escalade") else ""
        return (f"Rappel{step}{escalade}{to} : statut {label(d.get('statut'))}, "
                f"échéance du {french_datetime_of(d.get('echeance'))}")
    if type_ == "confirmation_demandee":
        return (f"Confirmation demandée pour « #{d.get('commande') or '?'} » "
                f"(valable jusqu'au {french_datetime_of(d.get('expire'))})")
    if type_ == "confirmation":
        return f"Commande « #{d.get('commande') or '?'} » confirmée"
    if type_ == "confirmation_annulee":
        return f"Commande « #{d.get('commande') or '?'} » annulée"
    if type_ in ("commande_refusee", "commande_ignoree"):
        verb = "refusée" if type_ == "commande_refusee" else "ignorée"
        cmd = f" « {excerpt(d.get('commande'), 80)} »" if d.get("commande") else ""
        return _with_reason(f"Commande{cmd} {verb}", d)
    if type_ == "diffusion":
        return (f"Alerte diffusée à {d.get('destinataires', 0)} établissement(s) (cible : {target_fr(d.get('cible'))}"
                + (f", TLP:{d['tlp']}" if d.get("tlp") else "") + ")")
    if type_ == "anonymisation":
        return _with_reason("Données personnelles anonymisées", d)
    if type_ == "transfert":
        return f"Transféré à la région {d.get('region') or '?'} : nouveau dossier {d.get('nouveau_dossier') or '?'}"
    if type_ == "transfert_recu":
        return (f"Reçu par transfert du dossier {d.get('dossier_origine') or '?'} "
                f"(région {d.get('region_origine') or '?'}, statut {label(d.get('statut'))})")
    if type_ == "hors_region":
        return (f"Établissement hors région : relève de la région {d.get('region_etablissement') or '?'}"
                + (f" (département {d['departement']})" if d.get("departement") else ""))
    if type_ == "declaration_transferee":
        return f"Déclaration transférée par un tiers : déclarant retenu {d.get('declarant') or 'aucun'}"
    if type_ == "alerte_nouvelle_version":
        return (f"Nouvelle version de l'alerte {d.get('reference_alerte') or '?'} "
                f"(version précédente : dossier {d.get('dossier_precedent') or '?'})")
    if type_ == "alerte_nouvelle_version_recue":
        return (f"Nouvelle version de l'alerte {d.get('reference_alerte') or '?'} reçue : "
                f"dossier {d.get('nouveau_dossier') or '?'}")
    if type_ == "alerte_autres_regions":
        return (f"Alerte {d.get('reference_alerte') or '?'} reçue aussi par les régions "
                + ", ".join(str(r) for r in d.get("regions") or []))
    if type_ == "alerte_recue_aussi":
        return (f"Alerte {d.get('reference_alerte') or '?'} reçue aussi par la région {d.get('region') or '?'} "
                f"(dossier {d.get('dossier') or '?'})")
    if type_ == "etat":
        return "Modification enregistrée : " + ", ".join(_COLUMNS.get(str(c), str(c)) for c in d.get("champs") or [])
    text = _EVENT_TITLES.get(type_) or type_.replace("_", " ")
    title = f"{text[:1].upper()}{text[1:]}"
    if type_ in _TITLE_SAYS_IT:
        return title  # its motif says the same again (« déclaration déjà reçue : message rejoué »)
    return _with_reason(title, d)


_TITLE_SAYS_IT = frozenset({"declaration_rejouee", "alerte_rejouee"})


# The events told by their title only: the stored type is an identifier without accents
# (« alerte_non_authentifiee »), people read French (« Alerte non authentifiée »).
_EVENT_TITLES = {
    "accuse_reception_impossible": "accusé de réception impossible",
    "alerte_a_verifier": "alerte à vérifier",
    "alerte_non_authentifiee": "alerte non authentifiée",
    "alerte_rejouee": "alerte déjà reçue (rejouée)",
    "declaration_rejouee": "déclaration déjà reçue (rejouée ou renvoyée par un relais)",
    "message_automatique": "message automatique",
    "notification_limitee": "notification limitée",
    "remerciement_recu": "remerciement reçu",
    "reouverture_refusee": "réouverture refusée",
    "stix": "export STIX",
}


@dataclass
class Entry:
    """One line of the story: one event, or one mail sent to several people at once."""

    at: datetime
    seq: int
    actor: str
    type: str
    data: Mapping[str, Any]
    recipients: list[str] = field(default_factory=list)

    @property
    def when(self) -> str:
        return french_datetime(self.at)

    @property
    def what(self) -> str:
        return _mail(self.data, self.recipients) if self.type == "mail_sortant" else describe(self.type, self.data)

    @property
    def line(self) -> str:
        return f"{self.when} — {self.actor} — {self.what}"


def _event_fields(event: Any) -> tuple[int, datetime, str, str, Mapping[str, Any]]:
    """(seq, at, actor, type, data) of a ``CaseEvent`` row or of its JSON form (``cases show --json``)."""
    if isinstance(event, Mapping):
        at = event["at"]
        at = datetime.fromisoformat(at) if isinstance(at, str) else at
        return int(event["seq"]), aware(at), str(event["actor"]), str(event["type"]), event.get("data") or {}
    return int(event.seq), aware(event.at), str(event.actor), str(event.type), event.data or {}


def entries(events: Iterable[Any]) -> list[Entry]:
    """The story's entries, in time order (then timeline order). A mail of one kind sent at the
    same instant by the same actor to several people (the staff notification) is one entry
    naming them all."""
    items = sorted((_event_fields(e) for e in events), key=lambda f: (f[1], f[0]))
    out: list[Entry] = []
    for seq, at, actor, type_, data in items:
        prev = out[-1] if out else None
        if (type_ == "mail_sortant" and prev is not None and prev.type == type_ and prev.at == at
                and prev.actor == actor and prev.data.get("type") == data.get("type")
                and not data.get("extrait") and not prev.data.get("extrait")):
            prev.recipients.append(str(data.get("destinataire") or "?"))
            continue
        entry = Entry(at, seq, actor, type_, data)
        if type_ == "mail_sortant":
            entry.recipients.append(str(data.get("destinataire") or "?"))
        out.append(entry)
    return out


def story(events: Iterable[Any]) -> list[str]:
    """The lines of the story, oldest first: « 27/11/2026 à 10:05 — agent@ars.fr — Statut : … »."""
    return [entry.line for entry in entries(events)]
