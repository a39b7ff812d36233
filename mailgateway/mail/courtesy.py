"""Courtesy replies: « Merci, bonne journée », « Bien reçu, cordialement », « #lu ».

A courtesy carries nothing to act on: on a closed case it is attached to the timeline without
reopening it, and on a bulletin or relayed alert it counts as an acknowledgement without a staff
notification. Anything else is substantive and reaches staff, so the test is conservative: the
new text is short (``[courtesy] max_chars``), has no question mark, no link, no incident term
(labels' incident types and declaration keywords), the message no attachment, and every line is
courtesy — except up to five closing lines of a signature: capitalised words and the particles of
names (« Jean Dupont », « La cellule SSI du CHU de Test »), an address, a phone line
(« Tél. 04 72 00 00 00 »).

A courtesy line is cut into clauses at , . ; : ! and each clause is either made of the phrases of
``[courtesy] phrases`` (« merci bonne journée »), or a general thanks / wish / closing formula: at
most ``max_clause_words`` words, one of ``[courtesy] anchors`` (merci, remercie, bonne, cordialement,
reçu, noté…) and every other word from the closed vocabulary ``[courtesy] words`` (function words
and what thanks are given for: « merci infiniment pour votre aide et votre réactivité », « bonne
fin de journée à vous », « je reste à votre disposition »). No verb of action, negation, digit or
incident term is in that vocabulary: « merci de nous rappeler, le serveur est toujours chiffré »
and « merci, nous avons aussi reçu le fax » are substantive.

Linear: the text is cut to ``max_chars`` before anything else, split with str methods, then each
word is looked up in sets and phrases of at most a few words are compared (no regex on the text).
"""

from __future__ import annotations

import re

from mailgateway.mail.labels import Labels
from mailgateway.mail.text import is_mobile_sign_off, match_form

MAX_SIGNATURE_LINES = 7  # name, title, service, structure, address, phone, mail
MAX_SIGNATURE_CHARS = 80
# Lower-case words a name or a service may hold (« La cellule SSI du CHU de Test »).
_PARTICLES = frozenset({"de", "du", "des", "la", "le", "les", "d", "l", "et", "à", "au", "aux", "en", "sur", "-",
                        "of", "and", "the", "for"})
# A signature line with digits is a phone line: it starts with one of these, or is only a number.
_PHONE_WORDS = frozenset({"tél", "tel", "téléphone", "telephone", "mob", "mobile", "portable", "port", "fax",
                          "standard", "ligne", "poste", "t", "m", "f", "direct", "directe", "phone", "cell", "office",
                          "tél/fax", "tel/fax", "gsm", "pro", "fixe", "secrétariat", "secretariat", "astreinte"})
# A phone number as signatures write it: French (« 02 40 08 33 33 », « 02.40.08.33.33 »), or
# international (« +33 2 40 08 33 33 », « +44 20 7946 0958 »), or a short extension (« (poste 4521) »
# reads « 4521 »). Bounded: a signature line is at most MAX_SIGNATURE_CHARS long.
_PHONE_NUMBER = re.compile(r"\(?(?:\+\d{1,3}[ .]?(?:\(0\)[ .]?)?\d{1,4}(?:[ .-]?\d{2,4}){2,4}"
                           r"|0\d(?:[ .-]?\d{2}){4}|\d{2,5})\)?")
# A postal address line of a signature: a number and a street word, a « BP »/« CS » box, or a
# postcode and a town. « 2 postes infectés » is none. Bounded: at most 80 characters.
_STREET_WORDS = ("rue", "avenue", "av", "allée", "allee", "boulevard", "bd", "place", "pl", "chemin", "route",
                 "impasse", "quai", "cours", "square", "voie", "parvis", "esplanade", "rond-point", "faubourg")
_POSTAL = re.compile(
    r"\d{1,4}(?: ?(?:bis|ter))?,? (?:" + "|".join(_STREET_WORDS) + r")\b\.?[^\d]{0,60}"
    r"|(?:BP|CS) \d{1,6}"
    r"|\d{5} [A-ZÀ-Ý][\w' -]{1,40}(?: [Cc]edex(?: \d{1,2})?)?", re.IGNORECASE)
_ADDRESS_WORDS = frozenset({*_STREET_WORDS, "bp", "cs", "bis", "ter", "cedex"})


def _postal(line: str) -> bool:
    """A postal address line whose names (street, town) are names: capitalised, particles or
    elisions (« 5 allée de l'île Gloriette », « 44093 Nantes Cedex 1 ») — « 12 rue bloquée ce
    matin », « 44000 Nantes chiffré » are content."""
    text = line.strip()
    if _POSTAL.fullmatch(text) is None:
        return False
    words = [w.strip(",.;:()") for w in text.split()]
    if len(words) > 10 or any(part in _NEVER_IN_SIGNATURE for w in words for part in w.lower().split("'")):
        return False
    return all(w[:1].isupper() or w.isdigit() or "'" in w or w.lower() in _PARTICLES or w.lower() in _ADDRESS_WORDS
               for w in words if w)


# Labels of an address line: « Mail : … », « Courriel : … ».
_MAIL_WORDS = frozenset({"mail", "e-mail", "email", "courriel", "mél", "mel", "adresse"})
# Lower-case words of job titles and services (« Responsable de la sécurité des systèmes
# d'information », « Chargée de mission SSI »): a closed vocabulary, so that a capitalised sentence
# (« Le serveur est toujours chiffré ») is still no signature line (found by an outside tester: a
# thank-you signed with a job title reopened a closed case and told the declarant so).
_TITLE_WORDS = frozenset({
    "responsable", "sécurité", "securite", "système", "systèmes", "systeme", "systemes", "information",
    "informations", "informatique", "informatiques", "numérique", "numerique", "chargé", "chargée", "charge",
    "chargee", "mission", "missions", "direction", "directeur", "directrice", "adjoint", "adjointe", "service",
    "services", "pôle", "pole", "cellule", "ingénieur", "ingénieure", "ingenieur", "technicien", "technicienne",
    "réseau", "réseaux", "reseau", "reseaux", "infrastructure", "infrastructures", "biologiste", "médecin",
    "cadre", "santé", "sante", "hospitalier", "hospitalière", "universitaire", "régional", "régionale",
    "centre", "groupement", "délégué", "déléguée", "délégation", "protection", "données", "donnees",
    "référent", "référente", "correspondant", "correspondante", "projet", "projets", "chef", "cheffe",
    "pharmacien", "pharmacienne", "biologie", "médicale", "médical", "laboratoire", "établissement",
    "applications", "application", "support", "exploitation", "qualité", "risques", "gestion", "production",
    "département", "territorial", "territoriale", "administrateur", "administratrice", "architecte",
    "officier", "général", "générale", "secrétaire", "assistant", "assistante", "analyste", "conseiller",
    "conseillère", "coordinateur", "coordinatrice", "coordination", "sûreté", "surete", "crise", "cyber",
    "cybersécurité", "cybersecurite", "hôpital", "hopital", "clinique", "patients",
    "biomédical", "biomedical", "soins", "achats", "réanimation", "reanimation", "infirmière", "infirmier",
    "hygiéniste", "coordonnateur", "coordonnatrice", "communication", "gestionnaire", "administrative",
    "administratif", "médico-administrative", "ressources", "humaines", "affaires", "financières", "télécoms",
    "telecoms", "praticien", "urgences", "intercommunal", "intercommunale", "accueil", "médicalisé",
    "spécialisée", "médico-éducatif", "personnes", "âgées", "handicap", "médecine", "veille",
    "security", "head", "manager", "officer", "director", "department", "radiology", "hospital", "university",
    "chief", "engineer", "team", "secrétariat",
})
# Several numbers on one line: « Tél. 02 41 49 60 00 – Port. 06 12 34 56 78 ».
_PHONE_SEPARATORS = ("–", "—", "|", "•", " - ", " / ")


def _phrases_only(words: list[str], phrases: tuple[tuple[str, ...], ...]) -> bool:
    """Every word covered by a sequence of phrases (greedy, longest phrase first)."""
    i = 0
    while i < len(words):
        for phrase in phrases:
            if tuple(words[i : i + len(phrase)]) == phrase:
                i += len(phrase)
                break
        else:
            return False
    return True


def _signature_word(word: str) -> bool:
    bare = word.strip(",.;:()/|\"'«»")
    if not bare:
        return True
    lowered = bare.lower()
    if lowered in _PARTICLES:
        return True
    head, apostrophe, rest = bare.partition("'")
    if apostrophe and head.lower() in _PARTICLES:
        # « d'information », « d'Oyonnax »: an elision before a title word or a name only — « l'arrêt »
        # is a sentence (outside tester: « Merci. / Le DPI à l'arrêt » kept a case closed, silent).
        return rest.lower() in _TITLE_WORDS or rest[:1].isupper()
    if lowered in _TITLE_WORDS:
        return True
    return bare[:1].isupper() or not bare[:1].isalpha()


# Words no name, title or service holds: pronouns, negations, verbs and the words of a request.
# « NOUS N'AVONS PLUS ACCÈS AU DOSSIER PATIENT », « Urgent Rappelez Le Standard » under a
# « Merci. » are content, not a signature (outside tester: a closed case stayed closed, silent).
_NEVER_IN_SIGNATURE = frozenset({
    "je", "tu", "il", "elle", "nous", "vous", "ils", "elles", "on", "me", "te", "se", "ça", "ca", "cela", "ceci",
    "ne", "pas", "plus", "jamais", "rien", "aucun", "aucune", "personne", "toujours", "encore", "déjà",
    "est", "sont", "suis", "sommes", "êtes", "était", "été", "ai", "as", "avons", "avez", "ont", "avait",
    "peut", "peuvent", "pouvez", "pouvons", "faut", "fait", "faire", "merci", "svp", "stp", "urgent",
    "urgente", "urgence", "besoin", "aide", "aidez", "rappelez", "rappeler", "appelez", "appeler",
    "contactez", "contacter", "répondez", "attention", "alerte", "panne", "accès", "acces", "problème",
    "probleme", "chiffré", "chiffrés", "bloqué", "bloqués", "impossible", "depuis", "que", "qui", "quoi",
    "quand", "comment", "pourquoi", "car", "mais", "donc", "hs", "ko", "down", "arrêt", "arret", "coupé",
    "coupée", "coupés", "indisponible", "indisponibles", "recommence", "reprend", "repris", "reçu", "recu",
    "reçus", "reçue", "infecté", "infectés", "compromis", "piraté", "piratés", "attaque", "attaqués", "virus",
    "fuite", "again", "still", "not", "no", "we", "please", "help", "urgently", "since",
    # A status and when: never a name, a title or an address.
    "bloquée", "bloquées", "fermé", "fermée", "fermés", "fermées", "tombé", "tombée", "tombés", "tombées",
    "coupées", "chiffrée", "chiffrées", "infectée", "infectées", "touché", "touchée", "touchés", "touchées",
    "impacté", "impactée", "impactés", "impactées", "affecté", "affectée", "affectés", "affectées", "compromise",
    "compromises", "hors", "ce", "cette", "hier", "aujourd", "matin", "soir", "nuit", "maintenant",
})
_MAX_SIGNATURE_WORDS = 12
_ACRONYM_LETTERS = 5  # « CHU », « RSSI », « ANSSI »: longer capitals are words, one surname at most


def _phone_segment(segment: str) -> bool:
    """« Tél. direct : 02 40 08 33 33 », « Phone: +44 20 7946 0958 », « 06 12 34 56 78 »: a phone
    label or none, then a number shaped like one — never an IPv4 address or network (« 203.0.113.45. »,
    « (203.0.113.45) », « 203.0.113.0/24 »: a sighting, outside tester)."""
    words = segment.replace(":", " : ").split()
    while words and (words[0].strip(".:").lower() in _PHONE_WORDS or words[0] == ":"):
        words = words[1:]
    number = " ".join(words)
    return bool(number) and _PHONE_NUMBER.fullmatch(number) is not None


def _signature_line(line: str) -> bool:
    """A closing line of a signature: a name, a title, a service (capitalised words, the particles
    of names, the words of job titles), an address, one or more phone numbers, a phone's sign-off
    (« Envoyé de mon iPhone ») — never a sentence with a question."""
    if not 0 < len(line) <= MAX_SIGNATURE_CHARS or "?" in line or "://" in line:
        return False
    if is_mobile_sign_off(line):
        # The sign-off alone: « Envoyé de mon iPhone, le DPI ne répond plus », « Sent from my
        # iPhone. Servers down again », « … mobile car plus de messagerie » are content.
        core = line.strip().rstrip(".!")
        return (not any(mark in core for mark in ",:;.!?-") and len(core.split()) <= 6
                and not any(w.lower() in _NEVER_IN_SIGNATURE for w in core.split()))
    if "@" in line:
        # An address is a signature's on a line of its own (« Mail : jean.dupont@chu.fr »);
        # « Reçu de admin@vpn-update.example » is a sighting (outside tester).
        words = line.replace(":", " ").split()
        return len(words) <= 2 and words[-1].count("@") == 1 and (len(words) == 1 or words[0].lower().strip(".")
                                                                 in _MAIL_WORDS)
    words = line.replace(",", " ").split()
    if _postal(line):
        return True  # « 5 allée de l'île Gloriette », « 44093 Nantes Cedex 1 »
    if any(ch.isdigit() for ch in line):
        segments = [line]
        for separator in _PHONE_SEPARATORS:
            segments = [part for segment in segments for part in segment.split(separator)]
        return all(_phone_segment(segment.strip()) for segment in segments if segment.strip())
    if len(words) > _MAX_SIGNATURE_WORDS:
        return False
    bare = [w.strip(",.;:()/|\"'«»!") for w in words]
    if any(part in _NEVER_IN_SIGNATURE for w in bare for part in w.lower().split("'")):
        return False
    if sum(1 for w in bare if w.isalpha() and w.isupper() and len(w) > _ACRONYM_LETTERS) > 1:
        return False
    letters = [w for w in bare if w.isalpha()]
    if len(letters) >= 3 and all(w.isupper() for w in letters) and sum(
            1 for w in letters if len(w) > _ACRONYM_LETTERS and w.lower() not in _TITLE_WORDS) > 1:
        return False  # a shouted sentence, not « RSSI – CHU DE NANTES » (one place name)
    return all(_signature_word(w) for w in words)


# Clause boundaries inside a line: « Merci beaucoup, bonne soirée. Cordialement ».
_CLAUSE_BREAKS = str.maketrans(dict.fromkeys(",.;:!…", "\n"))
# What no courtesy holds, whatever its words: a link, a digit (a phone line is a signature's).
_LINK_MARKS = ("://", "www.", "http", "hxxp")


# Word pairs that make a courtesy's words a request or a report: « merci d'un retour rapide »
# (please), « ok pour l'intervention », « nous aussi reçu ce mail », « plus reçu de mail »
# (outside tester: each passed for a thank-you).
_REQUEST_PAIRS = (("merci", "d", "un"), ("merci", "d", "une"), ("merci", "de", "bien"), ("ok", "pour"),
                  ("accord", "pour"))
_ALSO = frozenset({"aussi", "egalement", "encore", "plus", "idem", "pareil", "meme"})
_RECEIVED = frozenset({"recu", "recus", "recue", "recues"})


def _reports(words: list[str]) -> bool:
    joined = " " + " ".join(words) + " "
    if any(" " + " ".join(pair) + " " in joined for pair in _REQUEST_PAIRS):
        return True
    return not _RECEIVED.isdisjoint(words) and not _ALSO.isdisjoint(words)


def _courtesy_clause(words: list[str], phrases: tuple[tuple[str, ...], ...], labels: Labels) -> bool:
    """A fixed phrase sequence, or one anchor word and otherwise only courtesy words."""
    if words and _reports(words):
        return False
    if not words or _phrases_only(words, phrases):
        return True
    if len(words) > labels.courtesy_max_clause_words:
        return False
    anchors = labels.courtesy_anchors
    vocabulary = labels.courtesy_words
    return any(w in anchors for w in words) and all(w in anchors or w in vocabulary for w in words)


def _courtesy_line(line: str, phrases: tuple[tuple[str, ...], ...], labels: Labels) -> bool:
    if any(ch.isdigit() for ch in line):
        return False
    clauses = [match_form(c).split() for c in line.translate(_CLAUSE_BREAKS).split("\n")]
    return any(clauses) and all(_courtesy_clause(c, phrases, labels) for c in clauses)


def _mentions_incident(text: str, labels: Labels) -> bool:
    """An incident term anywhere (« merci, rançongiciel en cours »): never a courtesy."""
    return bool(labels.incident_types.first(text) or labels.declaration_keywords.first(text))


def is_courtesy(new_text: str, attachments: int, labels: Labels) -> bool:
    """Whether a reply's new text (quotes and signature separator removed) is only a courtesy."""
    text = new_text.strip()
    if attachments or not text or len(text) > labels.courtesy_max_chars or "?" in text:
        return False
    folded = text.casefold()
    if any(mark in folded for mark in _LINK_MARKS) or _mentions_incident(text, labels):
        return False
    phrases = tuple(tuple(p.split()) for p in labels.courtesy_phrases)
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    courteous = 0
    for n, line in enumerate(lines):
        if _courtesy_line(line, phrases, labels):
            courteous += 1
            continue
        # A closing signature: the last lines only, after at least one courtesy line.
        rest = lines[n:]
        if not (courteous > 0 and len(rest) <= MAX_SIGNATURE_LINES and all(_signature_line(r) for r in rest)):
            return False
        # And a signature shows itself: one of its lines is surely a signature's (a title, a
        # labelled phone line, an address line, a phone's sign-off), or it is at most two lines of
        # a name after a closing formula (« Bien cordialement, / Marie Exemple »). « Merci. /
        # Impactés », « Merci. / Messagerie ❌ », « Thanks. / Email Server Compromised » are content
        # (outside tester: each kept a closed case closed, silent).
        closed = any(_ends_with_closing(line) for line in lines[:n])
        return any(_signature_anchor(r) for r in rest) or (closed and len(rest) <= 2)
    return courteous > 0


# Closing formulas a name may follow alone.
_FORMAL_CLOSINGS = ("cordialement", "bien a vous", "salutation", "regard", "respectueusement", "sincerely",
                    "amitie", "bien a toi")  # as match_form writes them (plurals folded)
# Acronyms and abbreviations that only a signature holds.
_SIGNATURE_ACRONYMS = frozenset({"rssi", "dsi", "dpo", "ciso", "cio", "cto", "rsi", "dsio", "ssi", "drh", "ght",
                                 "chu", "chr", "chru", "aphp", "ap-hp", "ars", "dr", "pr", "ehpad", "lbm", "ch"})


def _ends_with_closing(line: str) -> bool:
    folded = match_form(line)
    return any(folded.endswith(closing) for closing in _FORMAL_CLOSINGS)


def _signature_anchor(line: str) -> bool:
    if is_mobile_sign_off(line) or "@" in line or _postal(line):
        return True  # validated alone on its line by _signature_line
    words = [w.strip(",.;:()/|\"'«»!-–").lower() for w in line.split()]
    if any(ch.isdigit() for ch in line):
        # « Tél. 02 40 … », never a bare number nor « Poste 4521 » (a call-back number, a workstation).
        return bool(words) and words[0].strip(".") in _PHONE_WORDS and sum(ch.isdigit() for ch in line) >= 8
    return any(w in _TITLE_WORDS or w in _SIGNATURE_ACRONYMS or w.split("'")[-1] in _TITLE_WORDS for w in words)
