"""French wording rules shared by the templates and the mail of staff commands.

- Elision (« de Établissement 1 » is wrong: « d'Établissement 1 »): the preposition « de » loses its
  vowel before a word that starts with a vowel or a mute h (Grevisse, Le Bon Usage, §44-45).
- A letter opens and closes once: the agent's text that already greets (« Bonjour Monsieur Martin, »)
  or signs off (« Cordialement, ») gets no second greeting nor closing formula from the template.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterator

# A mute h elides (« l'hôpital », « d'Hauteville »); an aspirated h does not (« de Haguenau »,
# « le Havre »): the names of structures met in the directory that start with an aspirated h.
_ASPIRATED_H = ("haguenau", "hazebrouck", "hautepierre", "havre", "hendaye", "hérault", "haute-", "hauts-",
                "hautes-", "haut-")


def _base_letter(char: str) -> str:
    return unicodedata.normalize("NFD", char)[:1].lower()


def de_elide(name: object) -> str:
    """« de X » or « d'X » for a name: « d'Établissement 1 », « d'Oyonnax », « de Lyon »,
    « de Haguenau » (aspirated h). Only the first letter is read: linear, for any text."""
    text = str(name or "").strip()
    if not text:
        return "de"
    first = _base_letter(text[0])
    if first in "aeiouy" or (first == "h" and not text.lower().startswith(_ASPIRATED_H)):
        return f"d'{text}"
    return f"de {text}"


# The head nouns of structure names, with the article French puts before them after « de »:
# « du CHU de Nantes », « de la Clinique du Parc », « de l'Hôpital Nord » (outside tester:
# « correspondant SSI de CHU de Nantes »). Other names (a town, a proper name) take « de »/« d' ».
_DU = frozenset({
    "chu", "chr", "chru", "ch", "chi", "chs", "chd", "chg", "ght", "ghu", "gh", "gcs", "gip", "centre", "groupe",
    "groupement", "laboratoire", "lbm", "pôle", "pole", "service", "cabinet", "réseau", "reseau", "site", "foyer",
    "sih", "sdis", "département", "departement", "cmp", "cmpp", "ssiad"})
_DE_LA = frozenset({
    "clinique", "polyclinique", "maison", "fondation", "résidence", "residence", "mutuelle", "direction", "cité",
    "cite", "communauté", "communaute", "société", "societe"})
_DE_L = frozenset({
    "hôpital", "hopital", "institut", "établissement", "etablissement", "ehpad", "unité", "unite", "association",
    "hospitalisation", "esms", "imagerie", "ifsi", "office"})


def du_nom(name: object) -> str:
    """« de » and the article a structure's name takes after it: « du CHU de Nantes », « de la
    Clinique du Parc », « de l'Hôpital Nord »; a name without a known head noun: ``de_elide``.
    Only the first word is read: linear, for any text."""
    text = str(name or "").strip()
    head = text.split(None, 1)[0].strip(",.;:()").lower() if text else ""
    if head in _DU:
        return f"du {text}"
    if head in _DE_LA:
        return f"de la {text}"
    if head in _DE_L:
        return f"de l'{text}"
    return de_elide(text)


def nombre(count: object, singular: str, plural: str | None = None) -> str:
    """« 1 établissement », « 3 établissements », « 0 établissement » (French: 0 and 1 are
    singular), instead of « 3 établissement(s) ». ``plural``: each word of ``singular`` with an
    « s » unless given."""
    try:
        n = int(count)  # type: ignore[call-overload]
    except (TypeError, ValueError):
        return f"{count} {plural or singular}"
    words = singular if n <= 1 else (plural or " ".join(w if w.endswith(("s", "x")) else w + "s"
                                                         for w in singular.split()))
    return f"{n} {words}"


_GREETINGS = ("bonjour", "bonsoir", "madame", "monsieur", "mesdames", "messieurs", "cher ", "chère ", "chers ",
              "chères ", "salut")
_CLOSINGS = ("cordialement", "bien à vous", "bien cordialement", "sincères salutations", "salutations",
             "bonne journée", "bonne soirée", "merci d'avance", "avec mes remerciements", "respectueusement",
             "je vous prie d'agréer", "veuillez agréer", "à votre disposition", "très cordialement")


def has_greeting(text: object) -> bool:
    """The text opens with a greeting (« Bonjour Monsieur Dupont, »)."""
    # Only the first written line counts: read up to it, not the whole text (a template asks
    # this of a bulletin's body for each of its messages).
    first = next(_written_lines(str(text or "")), None)
    if first is None:
        return False
    return first.startswith(_GREETINGS) or first in {g.strip() for g in _GREETINGS}


def _written_lines(text: str) -> Iterator[str]:
    """The text's written lines lazily, stripped and lower-cased, from the top: neither blank
    lines nor the staff's directives (« #cible … », « #tlp … ») written above a bulletin."""
    start = 0
    while start <= len(text):
        end = text.find("\n", start)
        end = len(text) if end < 0 else end
        line = text[start:end].strip()
        if line and not line.startswith("#"):
            yield line.lower()
        start = end + 1


def without_closing(text: str) -> str:
    """``text`` without the writer's own sign-off (« Cordialement, » and the lines under it —
    a name, a title — among its last four lines), for a text a template closes itself: the
    motif of a closure, found by an outside tester as « Cordialement, Collègue SSI » followed by
    the template's own « Cordialement, »."""
    lines = text.rstrip().split("\n")
    written = [i for i, line in enumerate(lines) if line.strip()]
    for i in written[-4:]:
        if lines[i].strip().lower().startswith(_CLOSINGS):
            return "\n".join(lines[:i]).rstrip()
    return text


def has_closing(text: object) -> bool:
    """One of the text's last lines (a signature may follow) is a closing formula."""
    value = str(text or "")
    # Its last four written lines: taken from the end of the text, not after reading it all.
    tail: list[str] = []
    end = len(value)
    while end >= 0 and len(tail) < 4:
        start = value.rfind("\n", 0, end) + 1
        line = value[start:end].strip()
        if line and not line.startswith("#"):
            tail.append(line.lower())
        end = start - 1
    return any(line.startswith(_CLOSINGS) for line in tail)
