"""Indicators of compromise in a text: url, domain, ip, email, hash, phone, cve.

Phones are in E.164 form: French numbers in every usual writing, other countries' with their "+".

Defanged forms (``hxxp://``, ``[.]``, ``(.)``, ``[at]``, ``[:]``) are refanged first so that
values are usable. Our own addresses, the participants of the message itself and markup
namespaces are noise, not indicators. The count is bounded.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Sequence
from functools import lru_cache

from mailgateway.mail.facts import Indicator
from mailgateway.mail.text import fold, is_mobile_sign_off, normalise

MAX_INDICATORS = 100
MAX_SCAN = 200_000

# Each with the characters one of its matches must contain (any of them): a pattern none of
# whose characters is in the text cannot match, and is not run (most mail has no defanged value;
# five scans of each text were a fifth of the indicator search, issue 19).
_REFANG = [
    (re.compile(r"h[xX]{2}p(s?)(?=\[?:\]?//)", re.I), r"http\1", "xX"),
    (re.compile(r"\[\s*\.\s*\]|\(\s*\.\s*\)|\{\s*\.\s*\}|\[dot\]|\(dot\)", re.I), ".", "[({"),
    (re.compile(r"\[\s*:\s*\]"), ":", "["),
    (re.compile(r"\s?\[\s*at\s*\]\s?|\s?\(\s*at\s*\)\s?|\[@\]", re.I), "@", "[("),
    (re.compile(r"\[/\]"), "/", "["),
]
_URL = re.compile(r"\b(?:https?|ftp)://[^\s<>\"'\])}]{1,2000}", re.I)
_EMAIL = re.compile(r"\b[A-Za-z0-9._%+\-]{1,64}@(?:[A-Za-z0-9\-]{1,63}\.){1,10}[A-Za-z]{2,24}\b")
_IPV4 = re.compile(r"(?<![\d.])(?:\d{1,3}\.){3}\d{1,3}(?!\d|\.\d)")
_IPV6 = re.compile(r"(?<![\w:])(?:[0-9A-Fa-f]{1,4}:){2,7}[0-9A-Fa-f]{0,4}(?::[0-9A-Fa-f]{1,4})*(?![\w:])")
_HASH = re.compile(
    r"(?<![0-9A-Fa-f])(?:[0-9A-Fa-f]{128}|[0-9A-Fa-f]{64}|[0-9A-Fa-f]{40}|[0-9A-Fa-f]{32})(?![0-9A-Fa-f])"
)
_CVE = re.compile(r"\bCVE-\d{4}-\d{4,7}\b", re.I)
# French numbers: 0X XX XX XX XX (spaces, dots, dashes or nothing), +33 X XX..., +33 (0)X ...
_PHONE = re.compile(r"(?<![\d+])(?:(?:\+|00)33\s?(?:\(0\)\s?)?|0)([1-9])((?:[\s.\-]?\d{2}){4})(?![\d])")
# Other countries, E.164 (ITU-T: country code and number, 15 digits at most) as written in alerts:
# "+44 20 7946 0958", "+1-202-555-0143". Each step reads one optional blank, dot or dash then one
# digit, so the match is linear; +33 is the French pattern's (it knows the "(0)" and the NBSP-free
# groupings). An amount ("+100 000 €", "+12 %") is not a number.
_PHONE_INTL = re.compile(r"(?<![\w+])\+(?!33)((?:[^\S\n]?[.\-]?\d){8,15})(?!\d|[^\S\n]{0,2}[€%$])")
_DOMAIN = re.compile(
    r"(?<![\w@.\-/])((?:[A-Za-z0-9](?:[A-Za-z0-9\-]{0,61}[A-Za-z0-9])?\.){1,10}([A-Za-z]{2,18}))(?![\w\-]|\.\w)"
)
_GTLDS = frozenset(
    "com net org info biz io co eu gov edu mil int xyz top online site club app dev shop store live "
    "cloud tech icu vip work link click page example test invalid onion pro name mobi asia tel zip "
    "win bid loan men date download review stream trade racing science party cyou buzz monster rest "
    "sbs quest lol fun space website host press email support services".split()
)


def refang(text: str) -> str:
    for pattern, repl, needs in _REFANG:
        if any(c in text for c in needs):
            text = pattern.sub(repl, text)
    return text


def _noise_domain(domain: str, noise: Iterable[str]) -> bool:
    domain = domain.lower().rstrip(".")
    return any(domain == n or domain.endswith("." + n) for n in noise)


def extract_indicators(
    texts: Iterable[str],
    exclude_addresses: Iterable[str] = (),
    noise_domains: Iterable[str] = (),
    exclude_phones: Iterable[str] = (),
) -> tuple[Indicator, ...]:
    """Indicators found in ``texts`` (refanged, deduplicated, noise removed, bounded)."""
    excluded = {a.lower() for a in exclude_addresses if a}
    excluded_domains = {a.rpartition("@")[2] for a in excluded if "@" in a}
    noise = tuple(n.lower() for n in noise_domains)
    skip_phones = set(exclude_phones)
    out: list[Indicator] = []
    seen: set[tuple[str, str]] = set()

    def add(kind: str, value: str) -> bool:
        key = (kind, value.lower() if kind in ("url", "domain", "email", "hash") else value)
        if key in seen:
            return True
        seen.add(key)
        out.append(Indicator(kind, value))
        return len(out) < MAX_INDICATORS

    for raw in texts:
        text = refang(raw[:MAX_SCAN])
        spans: list[tuple[int, int]] = []
        for m in _URL.finditer(text) if "://" in text else ():
            url = m.group(0).rstrip(".,;:!?)»")
            spans.append((m.start(), m.start() + len(url)))
            host = re.sub(r"^[a-z]+://", "", url, flags=re.I).split("/")[0].split("@")[-1].split(":")[0]
            if _noise_domain(host, noise) or host.lower() in excluded_domains:
                continue
            if not add("url", url):
                return tuple(out)
        for m in _EMAIL.finditer(text) if "@" in text else ():
            spans.append(m.span())
            addr = m.group(0).lower()
            if addr in excluded or _noise_domain(addr.rpartition("@")[2], noise):
                continue
            if not add("email", addr):
                return tuple(out)

        def inside(pos: int, spans: list[tuple[int, int]] = spans) -> bool:
            return any(a <= pos < b for a, b in spans)

        for m in _DOMAIN.finditer(text):
            domain, tld = m.group(1).lower(), m.group(2).lower()
            if inside(m.start()) or not (tld in _GTLDS or (len(tld) == 2 and m.group(2).islower())):
                continue
            if domain in excluded_domains or _noise_domain(domain, noise) or domain.count(".") < 1:
                continue
            if re.fullmatch(r"[\d.]+", domain.rsplit(".", 1)[0]):
                continue
            if not add("domain", domain):
                return tuple(out)
        for m in _IPV4.finditer(text):
            try:
                ip = ipaddress.ip_address(m.group(0))
            except ValueError:
                continue
            if ip.is_loopback or ip.is_unspecified or ip.is_multicast or str(ip) == "255.255.255.255":
                continue
            if not add("ip", str(ip)):
                return tuple(out)
        for m in _IPV6.finditer(text):
            if m.group(0).count(":") < 3:
                continue
            try:
                ip6 = ipaddress.ip_address(m.group(0))
            except ValueError:
                continue
            if ip6.is_loopback or ip6.is_unspecified:
                continue
            if not add("ip", str(ip6)):
                return tuple(out)
        for m in _HASH.finditer(text):
            value = m.group(0)
            if inside(m.start()) or not re.search(r"[A-Fa-f]", value) or not re.search(r"\d", value):
                continue
            if not add("hash", value.lower()):
                return tuple(out)
        for m in _CVE.finditer(text) if "-" in text else ():
            if not add("cve", m.group(0).upper()):
                return tuple(out)
        for m in _PHONE.finditer(text):
            if inside(m.start()):
                continue
            e164 = "+33" + m.group(1) + re.sub(r"\D", "", m.group(2))
            if e164 in skip_phones:
                continue
            if not add("phone", e164):
                return tuple(out)
        for m in _PHONE_INTL.finditer(text):
            if inside(m.start()):
                continue
            e164 = "+" + re.sub(r"\D", "", m.group(1))
            if e164 in skip_phones:
                continue
            if not add("phone", e164):
                return tuple(out)
    return tuple(out)


def phone_e164(text: str) -> list[str]:
    """French numbers of ``text`` in E.164 form (used to exclude a declarant's own number)."""
    french = ["+33" + m.group(1) + re.sub(r"\D", "", m.group(2)) for m in _PHONE.finditer(text)]
    return french + ["+" + re.sub(r"\D", "", m.group(1)) for m in _PHONE_INTL.finditer(text)]


# Closing formulas after which come the writer's name, title and contact numbers.
_CLOSINGS = ("cordialement", "bien cordialement", "tres cordialement", "bien a vous", "salutations",
             "sinceres salutations", "meilleures salutations", "respectueusement", "best regards",
             "kind regards", "regards")
_SIGNATURE_LINES = 10
_MOBILE_SIGNATURE_LINES = 4


def is_closing(line: str) -> bool:
    """A closing formula (« Cordialement, », « Bien à vous ») or a « -- » signature separator."""
    stripped = line.strip()
    if stripped in ("--", "-- "):
        return True
    return _closing_head(stripped[:60])


@lru_cache(maxsize=4096)
def _closing_head(head: str) -> bool:
    """Remembered (issue 19): the same lines come back in every mail (« Bonjour, »,
    « Cordialement, »), and a message's lines are looked at twice (the signature's phones, the
    text without signatures). Keys are at most 60 characters."""
    words = normalise(head)
    return bool(words) and any(words == c or words.startswith(c + " ") for c in _CLOSINGS)


def signature_phones(text: str, writer: Sequence[str] = ()) -> list[str]:
    """Numbers of the signature blocks of ``text`` (E.164): the writer's own numbers, not indicators.
    ``writer``: what names the writer (From's display name, addresses): a closing card counts only
    when its name shares a word with it (``writer_words``)."""
    lines = text[:MAX_SCAN].splitlines()
    return phone_e164("\n".join(lines[i] for i in _signature_block_lines(lines, writer)))


def without_signatures(text: str, writer: Sequence[str] = ()) -> str:
    """``text`` without its signature blocks: what the writer wrote, not who they are (« Paul
    Durand, RSSI du GHT », « correspondant SSI » are no impact on the GHT or a correspondent:
    outside tester)."""
    lines = text[:MAX_SCAN].splitlines()
    block = set(_signature_block_lines(lines, writer))
    if not block:
        return text
    kept = "\n".join(line for i, line in enumerate(lines) if i not in block)
    return kept + text[MAX_SCAN:]


def _signature_block_lines(lines: list[str], writer: Sequence[str] = ()) -> list[int]:
    """Indexes of the signature blocks' lines: the lines after a « -- » separator (RFC 3676
    §4.3) or a closing formula (« Cordialement, »), up to ten lines and never past the start of a
    forwarded or quoted message or a postscript; and the lines just above a phone's sign-off.
    Linear: each line is looked at once for a closing, at most ten times as a signature line."""
    block: list[int] = []
    i = 0
    while i < len(lines):
        if is_mobile_sign_off(lines[i]):
            # « Jean Dupont RSSI / 06 12 34 56 78 / Envoyé de mon iPhone », no closing formula:
            # the lines just above the phone's sign-off, up to a blank line, are the signature
            # (found by an outside tester: the RSSI's own mobile listed as an indicator).
            k = i - 1
            while k >= 0 and i - k <= _MOBILE_SIGNATURE_LINES and lines[k].strip():
                block.append(k)
                k -= 1
        if not is_closing(lines[i]):
            i += 1
            continue
        j = i + 1
        while j < len(lines) and j <= i + _SIGNATURE_LINES and not _forward_start(lines[j]) \
                and not _postscript(lines[j]):
            block.append(j)
            j += 1
        i = j
    block.extend(_closing_block(lines, writer))
    return sorted(set(block))  # a line may belong to two rules' blocks: once


# The last paragraph of a mail, when it is a few short lines opening with a person's name, one
# of them a phone number alone (« Dr Paul Durand / Biologiste responsable / 06 12 34 56 78 », no
# closing formula): the writer's card, not an indicator (outside tester: the RSSI's own mobile was
# listed). A name, not any short line: « Numéro de l'escroc / 01 44 55 66 77 », « Il appelait
# depuis le / 01 … » end quick mails too, and their numbers are what the mail reports (outside
# tester, against a first version). A confidentiality notice after the card does not hide it.
_CARD_LINES, _CARD_WIDTH = 5, 60
_PHONE_ALONE = re.compile(r"[\d\s+().\-]{10,25}")
# Two to four capitalised words, a title first perhaps (« Dr », « Mme »): bounded, linear.
_NAME_LINE = re.compile(r"(?:(?:Dr|Pr|Me|M|Mme|Mlle|Mr|Mrs|Ms)\.?[ \t]+)?"
                        r"[A-ZÀ-ÖØ-Þ][\w'’.\-]{0,40}(?:[ \t]+[A-ZÀ-ÖØ-Þ][\w'’.\-]{0,40}){1,3}")
_NOTICE_STARTS = ("ce message", "ce courriel", "ce mail", "ce courrier", "this message", "this e-mail", "this email",
                  "confidenti", "avertissement", "avis de confidentialit", "disclaimer", "les informations contenues",
                  "pensez à l'environnement", "afin de contribuer au respect de l'environnement")


def _paragraph_before(lines: list[str], end: int) -> tuple[int, int]:
    """(start, end) of the last paragraph ending at or before ``end`` (blank lines skipped)."""
    while end > 0 and not lines[end - 1].strip():
        end -= 1
    start = end
    while start > 0 and lines[start - 1].strip() and end - start < _CARD_LINES + 1:
        start -= 1
    return start, end


_WORDS = re.compile(r"[^\W\d_]+")


def writer_words(*names: str | None) -> tuple[str, ...]:
    """The words (three letters or more, folded) of what names a mail's writer: a display name
    (« Dr Paul Durand »), an address's local part (« paul.durand »)."""
    words: set[str] = set()
    for name in names:
        if name:
            words.update(w for w in _WORDS.findall(fold(name.partition("@")[0] if "@" in name and " " not in name
                                                          else name)) if len(w) >= 3)
    return tuple(sorted(words))



def writer_card(lines: list[str], writer: Sequence[str], width: int = _CARD_WIDTH,
                whole_name: bool = False, fewest: int = 2) -> range | None:
    """The lines of the writer's card ending ``lines``: the last paragraph (a confidentiality
    notice after it skipped), 2 to 5 lines of at most ``width`` characters after a blank line,
    opening with the writer's name (« Claire Dubois » from « Dubois, Claire (ARS-ARA/DSP) »).
    ``whole_name``: every word of that line is the writer's, two at least — not a colleague who
    shares a first name, nor « ARS … » (an outside tester: text an agent meant to send was cut).
    ``fewest``: lines the card has at least (one: a name alone ending a declaration's text)."""
    start, end = _paragraph_before(lines, len(lines))
    if start < end and lines[start].strip().lower().startswith(_NOTICE_STARTS):
        start, end = _paragraph_before(lines, start)  # the card above the confidentiality notice
    card = range(start, end)
    if not fewest <= len(card) <= _CARD_LINES or (start > 0 and lines[start - 1].strip()):
        return None
    if any(len(lines[k].strip()) > width or _forward_start(lines[k]) for k in card):
        return None
    if not _NAME_LINE.fullmatch(lines[start].strip()):
        return None  # « Numéro de l'escroc », « SMS frauduleux reçu du »: what the mail reports
    named = set(writer_words(lines[start]))
    if not named & set(writer):
        # The writer's name, not any name: « Support Technique Microsoft / 01 … » ends a vishing
        # report, its number the indicator (an outside attacker, against a first version).
        return None
    if whole_name and (len(named) < 2 or not named <= set(writer)):
        return None
    return card


def _closing_block(lines: list[str], writer: Sequence[str] = ()) -> list[int]:
    card = writer_card(lines, writer)
    if card is None or not any(_PHONE_ALONE.fullmatch(lines[k].strip()) and phone_e164(lines[k]) for k in card):
        return []
    return list(card)


def _postscript(line: str) -> bool:
    """« PS : bloquez aussi … » after a signature is the writer's text again (outside tester: a
    fraud number written there was dropped as the signature's)."""
    head = line.lstrip()[:5].upper().replace(" ", "")
    return head.startswith(("PS:", "PS ", "P.S", "P-S", "PPS")) or head == "PS"


# A line that gives the writer's own number: « Tél. 02 49 10 40 00 », « Portable : 06 … ».
_CONTACT_WORDS = ("tél", "tel", "téléphone", "telephone", "mobile", "portable", "port", "fax", "standard",
                  "ligne directe", "ligne", "poste", "mob", "gsm")


def contact_line_phones(text: str) -> list[str]:
    """Numbers on lines that start with a phone label (E.164): a signature's, even without a
    closing formula above it (outside tester: « Paul Agent / ARS … / Tél. 02 49 10 40 00 » at the
    end of a bulletin went to establishments as an indicator); and numbers right after words that
    give the writer's own (« Joignable au 06 98 76 54 32 », « me rappeler au … »: an outside tester,
    an RSSI, saw his call-back mobile listed as an indicator of compromise). Linear."""
    lines = [line for line in text[:MAX_SCAN].splitlines()
             if line.strip().lower().lstrip("☎✆📞 ").startswith(_CONTACT_WORDS)]
    lowered = text[:MAX_SCAN].lower()
    for words in _CALL_BACK:
        at = lowered.find(words)
        while at >= 0 and len(lines) < 200:
            after = text[at + len(words):at + len(words) + _CALL_BACK_REACH]
            lines.append(after.split("\n", 1)[0].split(". ", 1)[0])  # in its sentence
            at = lowered.find(words, at + len(words))
    return phone_e164("\n".join(lines))


# The words before the writer's own number in a sentence, and how far after them it may begin.
_CALL_BACK = ("joignable", "me joindre", "nous joindre", "me rappeler", "nous rappeler", "rappelez-moi",
              "me contacter", "nous contacter", "contactez-moi", "mon portable", "mon numéro", "mon mobile",
              "ma ligne directe", "mon téléphone", "mon tel", "mon tél", "numéro de rappel", "astreinte au",
              "de permanence au")
_CALL_BACK_REACH = 45


def _forward_start(line: str) -> bool:
    stripped = line.lstrip()
    return stripped.startswith((">", "---", "___", "De :", "De:", "From:", "From :")) or (
        "a écrit" in stripped or "wrote:" in stripped or "réexpédié" in stripped)
