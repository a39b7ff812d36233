"""Incident declarations: labelled "Champ : valeur" mail (portal notifications, forms) and free text.

The portal's exact mail format is not published, so labelled
lines are matched against the configurable label tables and everything else falls back to
keyword search in the free text. Enumeration ids are those of enumerations.md.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime

from mailgateway.mail.context import AnalysisContext
from mailgateway.mail.dates import parse_detection
from mailgateway.mail.facts import Declaration
from mailgateway.mail.headers import parse_addresses
from mailgateway.mail.indicators import is_closing, without_signatures, writer_card
from mailgateway.mail.labels import Labels, Table
from mailgateway.mail.text import fold, is_mobile_sign_off, label_line, labelled_lines, match_form, quote_start
from mailgateway.statuses import Severity

# FINESS: 9 characters, the first two the département (2A/2B for Corsica), the last a check key.
# Written in groups too: « 440 012 342 » (a no-break space when pasted from Word or a
# spreadsheet), « 44.001.234.2 », « 44-0012342 » (an outside tester, an RSSI: read as no FINESS).
# One kind of separator per number, and never inside a longer run of groups (a phone number
# « 02 40 08 33 33 », a SIRET): no digit group right before or after. Each optional separator is
# followed by a digit: one way to match from each start, linear.
_SEPARATORS = " .-\u00a0\u202f\u2009\u2007"
_SEP = f"[{re.escape(_SEPARATORS)}]"  # escaped: « .- » in a class is a range
_FINESS = re.compile(
    rf"(?<![\w.])(?<!\d{_SEP})((?:\d{{2}}|2[AaBb])(?:{_SEP}?\d){{7}})(?!\w)(?!{_SEP}\d)")
_NOT_DIGIT = str.maketrans("", "", _SEPARATORS)
_NOREPLY = re.compile(
    r"^(no[-_.]?reply|ne[-_.]?pas[-_.]?repondre|ne[-_.]?pas[-_.]?r[ée]pondre|donotreply|"
    r"do[-_.]not[-_.]reply|nepasrepondre|noreponse|no[-_.]?response|mailer[-_.]?daemon|postmaster|"
    r"notification|notifications|automate|robot)(\+.*)?@",
    re.I,
)
_NEGATIVE = re.compile(r"^\s*(non|aucun|aucune|neant|néant|nul|nulle|pas d|sans|no|n/a|-|0)\b", re.I)
# A form's tick boxes (« ☐ Oui ☒ Non », « [ ] Oui [X] Non »: the .docx form, read as text): the answer
# is the word after the ticked box; boxes with none ticked answer nothing. Read as « Oui » for the
# first word before (outside tester: « ☐ Oui ☒ Non » gave an impact on care). Linear.
_TICKED = re.compile(r"(?:[☒☑✔✓✗✘■]|\[[xX]\]|\([xX]\))[ \t]{0,10}(\w{1,20})")
_BOX = re.compile(r"[☐□]|\[ ?\]|\( ?\)")
# The local part is bounded (RFC 5321 §4.5.3.1.1: 64 octets): tried from every character of a long
# run without '@', an unbounded "[\w.+\-]+" rescanned the rest of the run each time (quadratic).
_EMAIL = re.compile(r"[\w.+\-]{1,64}@[\w\-]+(?:\.[\w\-]+)+")
MIN_LABELS = 3
_BLANK_RUN = re.compile(r"\s+")
# A structure named in free text: "la Clinique du Parc", "au CH de Vienne", "l'EHPAD Les Tilleuls".
_STRUCTURE = re.compile(
    r"\b((?:Polyclinique|Clinique|Centre [Hh]ospitalier(?: [Uu]niversitaire| [Rr][ée]gional)?|CHU|CHR|CHS|CH|"
    r"H[ôo]pital|EHPAD|Laboratoire|GHT|Groupe [Hh]ospitalier|Institut|Centre de [a-zé]+|"
    r"Groupement [Hh]ospitalier)"
    r"(?:[ \t]+(?:de la|de l'|de l’|du|des|de|d'|d’|et|sur|en|les?|la|[A-ZÉÈÎ][\w\-'’]*|\d{1,3})){0,6})"
)


# Incident types that say only that something happened, not what: a more precise one wins.
_GENERIC_TYPES = frozenset({"COMPROMISSION_SI", "AUTRE"})

def luhn_ok(digits: str) -> bool:
    """Luhn check over a digit string whose last digit is the key."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        n = int(ch)
        if i % 2 == 1:
            n *= 2
            if n > 9:
                n -= 9
        total += n
    return total % 10 == 0


def valid_finess(value: str) -> bool:
    """FINESS format, and its key: Luhn over the first 8 characters (verified on real numbers).

    Corsican numbers (2A/2B) are checked for format only: how the letters enter the key was not
    found documented.
    """
    value = value.upper()
    if len(value) != 9:
        return False
    if value[:2] in ("2A", "2B"):
        return value[2:].isdigit()
    return value.isdigit() and luhn_ok(value)


def find_finess(text: str) -> str | None:
    found = _all_finess(text, 1)
    return found[0] if found else None


def _all_finess(text: str, most: int = 10) -> list[str]:
    """The valid FINESS numbers of ``text``, in order, as 9 characters (separators dropped)."""
    return [number for number, _at in itertools.islice(_finess_at(text), most)]


def _finess_at(text: str) -> Iterator[tuple[str, int]]:
    """(number, where it starts) for each valid FINESS number of ``text``."""
    for match in _FINESS.finditer(text[:100_000]):
        written = match.group(1)
        separators = {c for c in written if c in _SEPARATORS}
        if len(separators) > 1:
            continue  # « 12 345-678.9 »: no one writes a number so
        if separators and "finess" not in text[max(0, match.start() - 40):match.start()].lower():
            # Grouped, only where the text says it is one (« FINESS : 44 001 234 2 »): a ticket
            # « n° 44.001.234.2 », a file « 44-0012342.log » were read as the structure (an outside
            # attacker). Labelled values are joined before (``_labelled_finess``).
            continue
        number = written.translate(_NOT_DIGIT).upper()
        if valid_finess(number):
            yield number, match.start()


def is_noreply(address: str | None) -> bool:
    return bool(address) and bool(_NOREPLY.match(address or ""))


@dataclass
class Fields:
    """Labelled values found in a text, by field name (first occurrence wins)."""

    values: dict[str, str]
    count: int


# Fields of free text: their whole paragraph is theirs (mail/text.py labelled_lines).
_FREE_TEXT_FIELDS = frozenset({"summary", "measures", "scope"})
# The fields a label one typing error away may fill (« Gravitée », « Etablisement »): never who to
# answer nor how to reach them — « Contacté : le prestataire Orange » is one letter from « Contact »
# (the declarant) and is a sentence of the description (outside tester).
_NEAR_FIELDS = frozenset({"severity", "structure", "summary", "measures", "scope", "detected_at", "incident_type",
                          "nature", "category", "impacts", "finess", "finess_et", "finess_ej"})


def labelled_fields(text: str, labels: Labels) -> Fields:
    """The labelled values of ``text``. Remembered for the last two texts: a declaration's text is
    read three times (is it one, what it says, the declarant's phones; issue 19)."""
    for seen_text, seen_labels, seen in _RECENT_FIELDS:
        if seen_labels is labels and seen_text == text:
            return Fields(dict(seen.values), seen.count)
    found = _labelled_fields(text, labels)
    _RECENT_FIELDS[:] = [(text, labels, found), *_RECENT_FIELDS[:1]]
    return Fields(dict(found.values), found.count)


_RECENT_FIELDS: list[tuple[str, Labels, Fields]] = []


def _labelled_fields(text: str, labels: Labels) -> Fields:
    values: dict[str, str] = {}
    count = 0
    known: dict[str, str | None] = {}  # each label is asked about up to three times: looked up once

    def field_of(name: str) -> str | None:
        if name not in known:
            field = labels.fields.lookup(name)
            if field is None:
                near = labels.fields.lookup_near(name)
                field = near if near in _NEAR_FIELDS else None
            known[name] = field
        return known[name]

    def is_long(name: str) -> bool:
        return field_of(name) in _FREE_TEXT_FIELDS

    for label, value, _i in labelled_lines(text, is_field=lambda name: field_of(name) is not None,
                                           is_long=is_long):
        field = field_of(label)
        if field is None:
            continue
        count += 1
        if field not in values or (not values[field] and value):
            values[field] = value
    for field, value in _table_cells(text, labels):
        if not values.get(field):
            values[field] = value
    return Fields(values, count)


_MAX_CELL = 200


def _is_field_line(line: str, labels: Labels) -> bool:
    found = label_line(line)
    return found is not None and labels.fields.lookup(match_form(found[0])) is not None


def _table_cells(text: str, labels: Labels) -> list[tuple[str, str]]:
    """A form written as a table, without colons (found by an outside tester: an Outlook table
    and a tab-separated form lost their « Gravité | Grave »): a known field label alone in its
    cell, its value in the next one — « Gravité<TAB>Grave » on one line, or the label alone on a
    line (a table converted from HTML: one cell a line) and the value on the next non-blank line,
    when that line is no label itself. Only fills fields the « Label : valeur » lines left empty,
    and counts for nothing (a table alone does not make a labelled form). Linear."""
    def field_of(cell: str) -> str | None:
        cell = cell.strip().rstrip(":").strip()
        return labels.fields.lookup(match_form(cell)) if 0 < len(cell) <= 80 else None

    raw = text.splitlines()[:2000]
    lines = [line.strip() for line in raw]
    found: list[tuple[int, str, str]] = []
    for i, line in enumerate(lines):
        if "\t" in line:
            left, _, right = line.partition("\t")
            field, value = field_of(left), right.strip()
            if field and value and len(value) <= _MAX_CELL:
                found.append((i, field, value))
            continue
        if not line or len(line) > 80 or ":" in line:
            continue  # a label alone in its cell is short; « Label : valeur » lines are read above
        field = field_of(line)
        if field is None:
            continue
        after = next((other for other in lines[i + 1:i + 3] if other), "")
        if after and len(after) <= _MAX_CELL and field_of(after) is None and not _is_field_line(after, labels):
            found.append((i, field, after))
    if not found:
        return []
    # The writer's own text only: a forwarded or quoted table is someone else's (found by an outside
    # tester: « Gravité<TAB>Critique » in a forwarded phishing mail made the declaration GRAVE).
    # Looked for only when a cell was found: most mail has none, and quote_start tries ten patterns a line.
    own = quote_start(raw)
    return [(field, value) for i, field, value in found if own is None or i < own]


def _impacts(fields: dict[str, str], free_text: str, labels: Labels, writer: Sequence[str] = ()) -> tuple[str, ...]:
    found: list[str] = []
    for key, ident in (
        ("impact_soins", "SOINS"),
        ("impact_donnees", "DONNEES"),
        ("impact_fonctionnement", "FONCTIONNEMENT"),
        ("impact_organisation", "ORGANISATION"),
        ("impact_propagation", "PROPAGATION"),
    ):
        value = _ticked(fields.get(key))
        if value and not _NEGATIVE.match(value):
            found.append(ident)
    if "impacts" in fields:
        # The clauses that deny nothing: « Impacts : pas d'impact sur les soins » names no impact
        # (outside tester), « soins (pas de données) » names one.
        affirmed = _affirmed(fields["impacts"])
        found.extend(labels.impacts.all(affirmed))
        # The impacts named by their word (« Impacts : soins, données »): compared in match_form,
        # where « soins » is « soin » (only « fonctionnement » was found before).
        words = set(affirmed.split())
        found.extend(i for i in ("SOINS", "DONNEES", "FONCTIONNEMENT") if match_form(i) in words)
    # Free text: only the impact keywords, and never a negated "pas d'impact sur les soins"; never
    # in a signature (« RSSI du GHT », « correspondant SSI » read as impacts: outside tester); never
    # on an impact's own labelled line, read above with its value: « Impact sur les soins : Non »
    # was read as an impact on care by its label (the portal's Oui/Non layout; outside tester).
    free_text = without_signatures(free_text[:30_000], writer)
    if any(key in fields for key in _IMPACT_FIELDS):
        free_text = "\n".join(line for line in free_text.splitlines() if not _is_impact_line(line, labels))
    form = match_form(free_text)
    named = labels.impacts.kept(_sentences_marked(free_text), _not_denied)
    for ident in named:
        if ident == "SOINS" and re.search(
            r"\b(pas|aucun|sans) (d )?impact (sur|pour) (la prise en charge|les soin|le patient)", form
        ):
            continue
        found.append(ident)
    order = ("SOINS", "DONNEES", "FONCTIONNEMENT", "ORGANISATION", "PROPAGATION")
    return tuple(i for i in order if i in found)


def _ticked(value: str | None) -> str | None:
    """``value``, or the answer its tick boxes give (``_TICKED``): « ☐ Oui ☒ Non » is « Non »."""
    if not value:
        return value
    ticked = _TICKED.search(value)
    if ticked is not None:
        return ticked.group(1)
    return "" if _BOX.search(value) else value


_IMPACT_FIELDS = frozenset({"impact_soins", "impact_donnees", "impact_fonctionnement", "impact_organisation",
                            "impact_propagation", "impacts"})


def _is_impact_line(line: str, labels: Labels) -> bool:
    """« Impact sur les soins : … », « Impacts : … »: a line labelled with an impact field."""
    if ":" not in line:
        return False
    found = label_line(line)
    return found is not None and labels.fields.lookup(match_form(found[0])) in _IMPACT_FIELDS


# A seriousness the declarant denies (« non grave », « pas du tout grave », « pas très très grave »,
# « guère grave », « sans gravité »): never read as the word it negates (found by outside testers:
# « Gravité : non grave » reached staff as « Gravité déclarée : grave »). A value is read clause by
# clause (« faible (pas du tout grave) », « grave mais pas critique », « élevée - pas de données
# touchées »): a clause holding a negation says nothing. On ``match_form`` text; linear.
# Clauses are cut on the text as written (``match_form`` drops punctuation).
# A cause or a circumstance is a clause of its own (« grave car pas de sauvegarde », « grave sans
# impact patient »: the negation is about the cause; found by an outside tester).
_CLAUSES = re.compile(r"[,;:()\[\]/.!?\n]| - | – | (?:mais|but|car|parce qu|puisque|because|sans|avec|donc|vu qu)\b",
                      re.I)
_NEGATION_WORDS = ("non", "pas", "peu", "guere", "nullement", "aucunement", "aucun", "aucune", "sans", "ni",
                   "rien", "loin", "jamais", "not", "no", "never", "hardly")
# As written and in match form, the form clauses are compared in (« sans » is « san » there).
_NEGATION = frozenset(_NEGATION_WORDS) | frozenset(match_form(w) for w in _NEGATION_WORDS)
# Free text: no negation before « incident grave » in its clause (« il ne s'agit en aucun cas d'un
# incident grave », « nous sommes loin d'un incident grave », « rien qui ressemble à un incident grave »).
_GRAVE_IN_TEXT = re.compile(r"\b(incident|evenement|situation|attaque) (tres? |particulierement )?grave\b")


# A negation denies a name only when it governs it: right before it, or with at most four of
# these between them (« pas de fuite », « aucune trace de rançongiciel », « no data exfiltration »,
# « ce n'était pas un rançongiciel »). A negation of something else in the sentence denies nothing:
# « n'ont pas été chiffrées par le rançongiciel », « nous n'avons pas pu stopper le rançongiciel »,
# « sans aucun doute d'un rançongiciel », « we could not stop the ransomware » (an outside attacker,
# against the first, clause-wide reading).
_BETWEEN_WORDS = ("de", "d", "du", "des", "un", "une", "le", "la", "les", "l", "a", "an", "the", "any", "data",
                  "donnee", "donnees", "trace", "traces", "signe", "signes", "indice", "indices", "preuve",
                  "preuves", "veritable", "vrai", "reel", "real", "actual", "evidence", "sign", "of",
                  # « pas d'indication d'une exfiltration » (an outside tester, an RSSI).
                  "indication", "indications", "element", "elements")
_BETWEEN = frozenset(_BETWEEN_WORDS) | frozenset(match_form(w) for w in _BETWEEN_WORDS)
# « pas de trace d'une exfiltration »: four (« d'une » is two words in match form).
_MOST_BETWEEN = 4


# Where a sentence or a field ends (« Impact sur les soins : aucun. Un rançongiciel a chiffré… »:
# « aucun » governs nothing after its full stop; an outside attacker). A word match form keeps
# (no negation, no word between): the reading of a name stops there.
# One punctuation mark followed by a blank, not a run of them: « [.:;!?]+(?=\s|$) » retried a long
# run of dots from each dot when a letter ended it (quadratic; tests/mail/test_regex_budget.py).
_STOP = " zzstopzz "
_SENTENCE_END = re.compile(r"[.:;!?](?=\s|$)")


def _sentences_marked(text: str) -> str:
    return _SENTENCE_END.sub(_STOP, text) if any(c in text for c in ".:;!?") else text


def _not_denied(form: str, start: int) -> bool:
    """Whether the name at ``start`` of ``form`` (match form) is not governed by a negation."""
    before = form[max(0, start - 160):start].split()
    k = len(before) - 1
    while k >= 0 and len(before) - 1 - k < _MOST_BETWEEN and before[k] in _BETWEEN:
        k -= 1
    return not (k >= 0 and before[k] in _NEGATION)


def _affirmed_first(table: Table, text: str) -> str | None:
    """The first id (table order) that ``text`` names without a negation governing the name:
    « Aucune exfiltration de données constatée », « ce n'était finalement pas un rançongiciel »,
    « No data exfiltration found » name no incident type (an outside tester, an RSSI: each gave
    its type, told to the declarant in the acknowledgement)."""
    marked = _sentences_marked(text)
    found = table.kept(marked, _not_denied)
    if len(found) > 1:
        # A name the writer only fears (« on ne peut pas exclure une fuite de données », « une
        # éventuelle exfiltration ») gives way to one they state (« un lien de phishing … le compte
        # a été utilisé »): an outside tester, an RSSI, was told « fuite de données » for a phishing.
        stated = table.kept(marked, lambda form, start: _not_denied(form, start) and not _hedged(form, start))
        found = stated or found
    return found[0] if found else None


# Words before a name that make it a fear, not a fact (match forms).
_HEDGES = frozenset(match_form(word) for word in (
    "exclure", "exclut", "excluons", "possible", "possibles", "eventuel", "eventuelle", "eventuels", "potentiel",
    "potentielle", "potentiels", "risque", "risques", "hypothese", "craignons", "redoutons", "craint", "crainte"))


_STOP_WORD = _STOP.strip()


def _words_before(form: str, start: int, most: int) -> list[str]:
    """The ``most`` words before ``start`` in ``form`` (match form), within their sentence."""
    before = form[max(0, start - 80):start].split()[-most:]
    if _STOP_WORD in before:
        before = before[len(before) - before[::-1].index(_STOP_WORD):]
    return before


def _hedged(form: str, start: int) -> bool:
    """Whether one of the five words before the name at ``start`` (its sentence) hedges it."""
    return any(word in _HEDGES for word in _words_before(form, start, 5))


def _affirmed(value: str) -> str:
    """The clauses of ``value`` that deny nothing, in ``match_form``, joined."""
    clauses = (match_form(c) for c in _CLAUSES.split(value))
    return " ; ".join(c for c in clauses if c and _NEGATION.isdisjoint(c.split()))


def _grave_in(text: str) -> bool:
    for clause in _CLAUSES.split(text):
        if "grave" not in clause.lower():
            continue  # most clauses: no match_form at all
        form = match_form(clause)
        for match in _GRAVE_IN_TEXT.finditer(form):
            if _NEGATION.isdisjoint(form[:match.start()].split()):
                return True
    return False


def _severity(fields: dict[str, str], text: str, labels: Labels) -> str:
    if fields.get("severity"):
        # What the value says once its denying clauses are taken out: « grave mais pas critique »
        # is GRAVE, « non grave » says nothing (NON_QUALIFIE: staff qualify it).
        found = labels.severities.first(_affirmed(fields["severity"]))
        if found:
            return found
    written = _severity_in_sentence(text[:30_000], labels)
    if written is not None:
        return written
    if _grave_in(text[:30_000]):
        return Severity.GRAVE
    if re.search(r"\bincident (tres? )?significatif\b", match_form(text[:30_000])):
        return Severity.SIGNIFICATIF
    return Severity.NON_QUALIFIE


def _severity_in_sentence(text: str, labels: Labels) -> str | None:
    """« …, gravité : grave, … », « la gravité de l'incident est élevée »: the severity a sentence
    gives, in the few words after « gravité » (an outside tester, an RSSI: a « Gravité : grave »
    inside a sentence was never read, and the acknowledgement said it had not been found)."""
    lowered = text.lower()
    if "gravit" not in lowered and "criticit" not in lowered:
        return None
    lines = text.splitlines()[:5000]
    own = quote_start(lines)  # the writer's words: a quoted « > Gravité : critique » is someone else's
    folded = fold("\n".join(line for line in lines[:own] if not line.lstrip().startswith(">")))
    for word in ("gravite", "criticite"):
        at = folded.find(word)
        for _ in range(10):
            if at < 0:
                break
            after = folded[at + len(word):at + len(word) + 40]
            for end in ".;!?\n":  # its sentence (« : » introduces the value)
                after = after.split(end, 1)[0]
            found = labels.severities.first(_affirmed(after))
            if found:
                return found
            at = folded.find(word, at + 1)
    return None


# Words of the national portal's notifications (matched on ``match_form`` text).
PORTAL_WORDS = ("portail de signalement", "signalement social sante", "signalement sante gouv")


def says_portal(text: str) -> bool:
    """Whether a text presents itself as a notification of the national portal."""
    head = text[:2300]
    # Every phrase holds « signalement », whose letters stay together in the match form: a text
    # without it in its folded form is not one (issue 19: the match form of 2,300 characters is
    # ≈ 50 µs, for every declaration's acknowledgement).
    if "signalement" not in fold(head):
        return False
    # Sentence by sentence: one that names the portal and says it is down does not count.
    for sentence in _PORTAL_SENTENCE.split(head):
        form = match_form(sentence)
        if any(words in form for words in PORTAL_WORDS) and not any(down in form for down in _PORTAL_DOWN):
            return True
    return False


# « Le portail de signalement étant inaccessible, je vous transmets notre déclaration par courriel »
# is no notification of the portal: it is the case where the declarant must still declare there
# once it is back (an outside tester, an RSSI: the acknowledgement said « reçue par l'intermédiaire
# du portail » and dropped that reminder). Match forms (mail/text.py).
_PORTAL_DOWN = tuple(match_form(words) for words in (
    "inaccessible", "indisponible", "injoignable", "en panne", "hors service", "hors ligne", "ne fonctionne pas",
    "ne fonctionnant pas", "pas accessible", "plus accessible", "impossible", "dysfonctionnement", "en maintenance",
    "ne marche pas", "n'arrive pas", "n'arrivons pas", "sans succès", "échec", "erreur", "bloqué", "planté"))
_PORTAL_SENTENCE = re.compile(r"[.!?;\n]")


def _declarant(
    fields: dict[str, str], from_address: str | None, reply_to: str | None, robot_hint: bool = False
) -> tuple[str | None, str | None]:
    """(address, name) of the person who wrote to the agency: when From is a no-reply robot (a
    portal's notification), the labelled « Courriel du déclarant » of the message's own text, then
    Reply-To; then From, then Reply-To.

    The author of a forwarded message is never a candidate, nor are labels of the forwarded text
    (``fields`` holds only the outer text's): the acknowledgement once went to the phisher of a
    forwarded phishing mail.
    """
    name = fields.get("declarant") or None
    candidates: list[str] = []
    # The labelled address counts only in a robot's notification (a portal, a ticketing tool, whose
    # From is a no-reply): from a person, « Courriel du déclarant : victime@… » would let anyone
    # have the agency write to, and file a case under, an address of their choosing (outside attack).
    robot = is_noreply(from_address) or robot_hint
    for key in ("declarant_email", "declarant") if robot else ():
        if fields.get(key):
            candidates.extend(m.group(0).lower() for m in _EMAIL.finditer(fields[key]))
    if robot and reply_to:
        candidates.append(reply_to)
    candidates.append(from_address or "")
    if reply_to:
        candidates.append(reply_to)
    for cand in candidates:
        if cand and "@" in cand and not is_noreply(cand):
            if name and "@" in name:
                name = None
            return cand.strip(".").lower(), name
    return None, name


# The national portal's domains (https://signalement.social-sante.gouv.fr): its notifications come
# from there, for the declarant they name.
_PORTAL_DOMAINS = ("signalement.social-sante.gouv.fr", "social-sante.gouv.fr", "signalement.sante.gouv.fr")


def _portal_address(address: str | None) -> bool:
    domain = (address or "").rpartition("@")[2].lower()
    return any(domain == d or domain.endswith("." + d) for d in _PORTAL_DOMAINS)


def addresses_in(text: str) -> list[str]:
    """Every e-mail address written in ``text`` (lower case)."""
    return [m.group(0).strip(".").lower() for m in _EMAIL.finditer(text)]


def plausible_declarant(address: str | None, agency_domains: Sequence[str]) -> bool:
    """An address an establishment could declare from: not a robot's, not the agency's own."""
    if not address or "@" not in address or is_noreply(address):
        return False
    domain = address.rpartition("@")[2].lower()
    return not any(domain == d or domain.endswith("." + d) for d in agency_domains if d)


def _forward_declarant(fields: dict[str, str], author: str | None, agency_domains: Sequence[str]) -> str | None:
    """The declarant of a declaration an agency colleague forwarded: the forwarded form's
    « Courriel du déclarant », else the forwarded message's author — an establishment's address,
    never the agency's own nor a robot's; none otherwise (nobody is acknowledged)."""
    candidates: list[str] = []
    for key in ("declarant_email", "declarant"):
        if fields.get(key):
            candidates.extend(addresses_in(fields[key]))
    if author:
        candidates.append(author)
    return next((c for c in candidates if plausible_declarant(c, agency_domains)), None)


def forwarded_author_address(forwarded_from: str | None) -> str | None:
    """The address of a forwarded message's From line ("Nom <x@y>", "Nom [mailto:x@y]", "x@y")."""
    if not forwarded_from:
        return None
    for _name, address in parse_addresses(forwarded_from):
        if "@" in address:
            return address.strip(".").lower()[:320]
    found = _EMAIL.search(forwarded_from)
    return found.group(0).strip(".").lower() if found else None


def _finess_numbers(
    fields: dict[str, str], text: str, ctx: AnalysisContext, subject: str = ""
) -> tuple[str | None, str | None, tuple[str, ...]]:
    """(FINESS ET, FINESS EJ, other numbers) of a declaration.

    The establishment's géographique number (ET) is what a case is about; the legal entity's
    juridique one (EJ) groups several establishments. A label that says which wins ("FINESS ET",
    "FINESS juridique"); otherwise the directory, keyed by ET, tells: a number it knows is an ET.
    """
    def labelled(key: str) -> str | None:
        value = fields.get(key)
        return _labelled_finess(value) if value else None

    et, ej, generic = labelled("finess_et"), labelled("finess_ej"), labelled("finess")
    # In prose too, the words before a number say which it is (« notre FINESS juridique est le … »,
    # « FINESS géographique : … (juridique : …) »): an outside tester, an RSSI, saw the legal
    # entity's number taken for the establishment's and the site's number dropped.
    said = _said_kinds(text)
    ej = ej or next((n for n, kind in said if kind == "ej" and n != et), None)
    et = et or next((n for n, kind in said if kind == "et" and n != ej), None)
    seen: list[str] = []
    # The subject last (« Incident SSI - FINESS 440012342 » with nothing in the text: an outside
    # tester, an RSSI).
    for number in (et, generic, *_all_finess(text), *_all_finess(subject)):
        if number and number not in seen and len(seen) < 10:
            seen.append(number)
    chosen = et
    if chosen is None:
        unlabelled = [n for n in seen if n != ej]
        known = [n for n in unlabelled if _known(ctx, n)]
        chosen = known[0] if known else (unlabelled[0] if unlabelled else ej)
    # Only an EJ given: it stays the case's FINESS (processing maps it to its ET when the
    # directory has exactly one).
    others = tuple(n for n in seen if n not in (chosen, ej))
    return chosen, (ej if ej != chosen else None), others


_EJ_WORDS = re.compile(r"juridique|\bEJ\b", re.I)
_ET_WORDS = re.compile(r"g[ée]ographique|\bET\b|\bFINESS[ \t]+(?:du[ \t]+)?site\b", re.I)


def _said_kinds(text: str) -> list[tuple[str, str]]:
    """(number, "ej" | "et") for the FINESS numbers of ``text`` whose 30 characters before say
    which they are, the nearest word deciding (« géographique : 350030029 (juridique : 350005179) »).
    Linear: each window is searched once."""
    found: list[tuple[str, str]] = []
    for number, at in itertools.islice(_finess_at(text), 20):
        window = text[max(0, at - 30):at]
        ej = [m.end() for m in _EJ_WORDS.finditer(window)]
        et = [m.end() for m in _ET_WORDS.finditer(window)]
        if ej or et:
            found.append((number, "ej" if (ej[-1] if ej else -1) > (et[-1] if et else -1) else "et"))
    return found


def _labelled_finess(value: str) -> str | None:
    """The FINESS of a labelled value: as written (« 440012342 (site 2), tél. 02 40 … »), else with
    its separators dropped — the label says what the digits are (« N° FINESS : 44 001 234-2 »)."""
    return find_finess(value) or find_finess(value.translate(_NOT_DIGIT))


def _known(ctx: AnalysisContext, finess: str) -> bool:
    if not finess:
        return False
    try:
        return ctx.establishment_lookup(finess) is not None
    except Exception:
        return False


def _structure_in_text(text: str) -> str | None:
    for match in _STRUCTURE.finditer(text):
        name = re.sub(r"(?:[ \t]+(?:de la|de l'|de l’|du|des|de|d'|d’|et|sur|en|les?|la))+$", "", match.group(1))
        if " " in name or name.isupper():
            return name.strip()
    return None


def _first_sentences(text: str, limit: int = 600, writer: Sequence[str] = ()) -> str | None:
    # The writer's text, not their sign-off: « … Cordialement, Dr Paul Henry, Biologiste
    # responsable » ended the résumé staff and the ACSS read (outside tester); so did a card
    # without a closing formula (« Dr Paul Durand / Biologiste responsable / 06 12 34 56 78 »).
    text = without_signatures(text[:20_000], writer)
    lines = text.splitlines()
    # The writer's card without a phone (« Nathalie Perrin / DSI – CH Annecy Genevois ») ended
    # most résumés (an outside tester); a phone is what the indicators' rule needs, not this one.
    card = writer_card(lines, writer, width=80, whole_name=True, fewest=1) if writer else None
    if card is not None and card.start > 0:
        lines = lines[:card.start]
        text = "\n".join(lines)
    for i, line in enumerate(lines[:2000]):
        if i and (is_closing(line) or is_mobile_sign_off(line)):
            text = "\n".join(lines[:i])
            break
    cleaned = re.sub(r"[ \t]+", " ", text).strip()
    cleaned = re.sub(r"^(bonjour|madame|monsieur|cher|chère)[^\n]{0,60}\n+", "", cleaned, flags=re.I)
    # A run of blanks holding a line break becomes one space. One "\s+" per run: "\s*\n\s*" retried
    # every start inside a long run of other blanks (no-break spaces), quadratic.
    cleaned = _BLANK_RUN.sub(lambda m: " " if "\n" in m.group(0) else m.group(0), cleaned).strip()
    if not cleaned:
        return None
    return cleaned[:limit].rstrip() + ("…" if len(cleaned) > limit else "")


# In match form, spaced: whole words only.
_NEW_INCIDENT = tuple(f" {match_form(phrase)} " for phrase in (
    "nouvel incident", "nouveau incident", "autre incident", "incident distinct", "distinct de celui",
    "distinct du dossier", "new incident", "another incident", "separate incident"))


def says_new_incident(text: str) -> bool:
    """The writer says this is another incident than the one of the case they write about
    (« c'est un NOUVEL incident », « distinct de celui du dossier … »), not denying it: « aucun
    autre incident n'a été constaté », « il ne s'agit pas d'un nouvel incident » are news of the
    same one (an outside tester: each opened a case of its own)."""
    form = f" {match_form(_sentences_marked(text[:3000]))} "
    for phrase in _NEW_INCIDENT:
        at = form.find(phrase)
        while at >= 0:
            if _not_denied(form, at + 1) and not _supposed(form, at + 1):
                return True
            at = form.find(phrase, at + 1)
    return False


# Words before « nouvel incident » in its sentence that make it a supposition, a fear or a
# prevention, not a statement (« afin d'éviter tout nouvel incident », « en cas de nouvel incident »,
# « s'il s'agissait d'un nouvel incident », « nous ne pensons pas qu'il s'agisse… »: an outside tester).
# Beside the hedges (``_hedged``: « risque », « éventuel », « possible »…).
_SUPPOSING = frozenset(match_form(word) for word in (
    "eviter", "prevenir", "cas", "si", "s", "pensons", "pense", "semble", "savoir", "question", "tout"))


def _supposed(form: str, start: int) -> bool:
    return any(word in _SUPPOSING for word in _words_before(form, start, 6)) or _hedged(form, start)


def _without_finess(name: str) -> str:
    """A structure's name without the FINESS written after it (« Clinique du Val de Saône – FINESS
    690001235 » titled the case, the notifications and `cases list`: an outside tester, an agent)."""
    at = name.lower().find("finess")
    if at <= 0:
        return name.strip()
    head = name[:at].rstrip(" \t,;:–—-(/")
    if head.lower().endswith(("n°", "no", "nº")) and not head[-3:-2].isalnum():
        head = head[:-2]
    return head.rstrip(" \t,;:–—-(/").strip()


def _without_cover(text: str, outer_text: str | None) -> str:
    """``text`` without command lines and, for a forward, without its cover note and the
    forwarded message's header block (« De : … / Envoyé : … / Objet : … »): what it says is below."""
    lines = [line for line in text.splitlines()[:5000] if not line.lstrip().startswith("#")]
    if outer_text is None:
        return "\n".join(lines)
    cover = {line.strip() for line in outer_text.splitlines() if line.strip()}
    lines = [line for line in lines if line.strip() not in cover]
    start = quote_start(lines)
    if start is not None:
        end = start
        while end < len(lines) and (not lines[end].strip() or _FORWARD_HEADER.match(lines[end])
                                    or lines[end].lstrip().startswith(("---", "___"))):
            end += 1
        lines = lines[:start] + lines[end:]
    return "\n".join(lines)


# A line of a forwarded message's header block, as mail clients write it.
_FORWARD_HEADER = re.compile(r"[ \t>]*(?:De|Envoy[ée]|[ÀA]|Cc|Objet|Date|From|Sent|To|Subject)[ \t]*:", re.I)


def _narrative(text: str, fields: dict[str, str], labels: Labels) -> str:
    """What a labelled form's writer says beside its fields, when no field holds a description: the
    lines that are no « Label : valeur », no label alone (a table's cell), no field's value. An
    outside tester (an agent): « Les urgences fonctionnent en mode dégradé papier », « un virement
    de 18 500 € a été émis » were in no résumé — the staff notification and the ACSS transmission
    showed the fields alone."""
    values = {line.strip() for value in fields.values() for line in value.splitlines() if line.strip()}
    lines = text[:20_000].splitlines()[:2000]
    end = quote_start(lines)  # a quoted or forwarded message under it is not the writer's account
    kept = []
    for line in lines[:end]:
        stripped = line.strip()
        if stripped in values or _is_field_line(line, labels):
            continue
        if len(stripped) <= 80 and labels.fields.lookup(match_form(stripped.rstrip(" :"))) is not None:
            continue
        kept.append(line)
    return "\n".join(kept)


# « un prestataire a envoyé par erreur un export patients »: a data leak, not an attack (outside
# tester: read as « malveillant » from the incident type alone).
_ACCIDENTAL = (" par erreur ", " par inadvertance ", " erreur humaine ", " accidentellement ", " par megarde ",
               " involontairement ", " mauvais destinataire ", " erreur de manipulation ", " erreur d envoi ")


def _accidental(text: str) -> bool:
    form = f" {match_form(text[:30_000])} "
    return any(phrase in form for phrase in _ACCIDENTAL)


def extract_declaration(
    text: str,
    subject: str,
    ctx: AnalysisContext,
    labels: Labels,
    from_address: str | None,
    reply_to: str | None,
    sent_at: datetime | None,
    forwarded_from: str | None = None,
    outer_text: str | None = None,
    agency_forward: Sequence[str] | None = None,
    writer: Sequence[str] = (),
    from_verified: bool = False,
) -> Declaration:
    """Everything that can be read from a declaration's text (labelled first, then free text).

    ``outer_text``: for a forwarded declaration, the text of the message itself (the cover note),
    the only place the declarant's address is read from; ``forwarded_from`` the forwarded
    message's From, recorded as ``forwarded_author``.

    ``agency_forward`` (the agency's own domains), for a declaration forwarded by an authenticated
    colleague of the agency: the declarant is the establishment that wrote the forwarded
    declaration (``_forward_declarant``), not the colleague.
    """
    found = labelled_fields(text, labels)
    fields = found.values
    labelled = found.count >= MIN_LABELS
    finess, finess_ej, finess_others = _finess_numbers(fields, text, ctx, subject)
    info = None
    if finess:
        try:
            info = ctx.establishment_lookup(finess)
        except Exception:
            info = None
    structure = _without_finess(fields.get("structure", "")) or (info.name if info else None)
    if structure is None and not labelled:
        structure = _structure_in_text(subject + "\n" + text[:5000])
    category = None
    if info and info.category:
        category = labels.finess_categories.get(info.category, info.category)
    if finess and finess in ctx.radiotherapy_finess:
        category = "CENTRE_RADIOTHERAPIE"
    if category is None and fields.get("category"):
        category = labels.categories.first(fields["category"])
    if category is None and structure:
        category = labels.categories.first(structure)
    if category is None and not labelled:
        category = labels.categories.first(subject + "\n" + text[:2000])
        if category == "AUTRE":
            category = None
    incident_type = labels.incident_types.first(fields["incident_type"]) if fields.get("incident_type") else None
    if incident_type is None:
        # The subject is read first, but a generic word there (« Attaque informatique cette nuit »)
        # gives way to the precise type the body names (« serveurs chiffrés… rançon »).
        in_subject = _affirmed_first(labels.incident_types, subject)
        in_body = _affirmed_first(labels.incident_types, text[:30_000])
        incident_type = in_subject or in_body
        if in_subject in _GENERIC_TYPES and in_body is not None and in_body not in _GENERIC_TYPES:
            incident_type = in_body
    nature = labels.natures.first(fields["nature"]) if fields.get("nature") else None
    if nature is None:
        if incident_type in labels.malicious and not _accidental(subject + "\n" + text):
            nature = "MALVEILLANT"
        elif incident_type and incident_type != "AUTRE":
            nature = "NON_MALVEILLANT"
        else:
            nature = "INDETERMINE"
    detected_at, detected_as_written = None, None
    if fields.get("detected_at"):
        detected_at, detected_as_written = parse_detection(fields["detected_at"], sent_at)
    if detected_at is None:
        detected_at, detected_as_written = parse_detection(text, sent_at)
    summary_parts = [fields[k] for k in ("summary", "scope") if fields.get(k)]
    summary = " — ".join(summary_parts) if summary_parts else None
    if summary is None:
        # The declaration's own words: not the cover note of the colleague who forwards it, nor
        # their commands (« #assigner moi … Marc Lefèvre, chargé de mission » was the résumé sent to
        # the ACSS: an outside tester).
        told = _without_cover(text, outer_text)
        summary = _first_sentences(_narrative(told, fields, labels) if labelled else told, writer=writer)
    own_fields = fields if outer_text is None else labelled_fields(outer_text, labels).values
    if agency_forward is not None:
        address = _forward_declarant(fields, forwarded_author_address(forwarded_from), agency_forward)
        name = None
    else:
        # The portal's own address, authenticated, not words about it: a person's mail (or a document
        # attached to it) saying « portail de signalement », or a spoofed portal From, chose who the
        # agency acknowledged (an outside attacker).
        address, name = _declarant(own_fields, from_address, reply_to,
                                   from_verified and _portal_address(from_address))
    departement = info.departement if info and info.departement else None
    if departement is None and finess:
        departement = finess[:2]
    return Declaration(
        finess=finess,
        structure=(structure or None) and structure[:300],
        category=category,
        incident_type=incident_type,
        nature=nature,
        severity=_severity(fields, subject + "\n" + text, labels),
        detected_at=detected_at,
        detected_at_as_written=detected_as_written,
        impacts=_impacts(fields, subject + "\n" + text, labels, writer),
        summary=summary and summary[:4000],
        measures=(fields.get("measures") or None) and fields["measures"][:4000],
        declarant=address,
        declarant_name=name and name[:200],
        departement=departement,
        forwarded_author=forwarded_author_address(forwarded_from),
        finess_ej=finess_ej,
        finess_others=finess_others,
    )


_INCIDENT_FIELDS = frozenset({"incident_type", "detected_at", "nature", "severity", "impact_soins", "impact_donnees",
                              "measures"})


def looks_like_declaration(text: str, subject: str, labels: Labels) -> tuple[bool, str]:
    """(is a declaration, why): labelled form, or incident keywords in free text."""
    found = labelled_fields(text, labels)
    strong = {
        "finess",
        "finess_et",
        "finess_ej",
        "incident_type",
        "detected_at",
        "nature",
        "severity",
        "impact_soins",
        "impact_donnees",
        "measures",
        "declarant",
        "declarant_email",
        "structure",
    }
    if found.count >= MIN_LABELS and len(strong & found.values.keys()) >= 2:
        return True, "labelled"
    # A short hand-made form: a valid FINESS and one incident field (« N° FINESS : … / Gravité :
    # grave » under « Nous vous signalons un incident : »).
    numbers = [found.values.get(k, "") for k in ("finess", "finess_et", "finess_ej")]
    if _INCIDENT_FIELDS & found.values.keys() and any(_labelled_finess(n) for n in numbers if n):
        return True, "labelled"
    probe = subject + "\n" + text[:20_000]
    if labels.declaration_keywords.first(probe):
        return True, "keywords"
    kind = labels.incident_types.first(probe)
    if kind and kind not in labels.weak_types and kind != "COMPROMISSION_SI":
        return True, "incident type"
    return False, ""
