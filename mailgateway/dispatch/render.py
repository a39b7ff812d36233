"""Render mail templates in a sandboxed, autoescaping Jinja2 environment (docs/guarantees.md).

A mail is three templates: ``<name>.subject.j2`` (one line), ``<name>.txt.j2`` and, optionally,
``<name>.html.j2``. Values taken from mail are passed as *data* only; they never become template
source, so a body containing ``{{ ... }}`` is shown literally. HTML templates autoescape; the text
and subject templates do not (they are not HTML) and the subject is flattened to one line before it
reaches the header API. Sites override any template by putting a file of the same name in
``[outbound].templates_dir``.
"""

from __future__ import annotations

import re
import tomllib
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache, lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

import jinja2
import markupsafe
from jinja2.sandbox import ImmutableSandboxedEnvironment

from mailgateway.clock import french_instant
from mailgateway.dispatch import wording
from mailgateway.errors import TemplateError

BUNDLED_DIR = Path(str(resources.files("mailgateway") / "templates"))


@dataclass(frozen=True)
class RenderedMail:
    subject: str
    text: str
    html: str | None


@cache
def _labels() -> dict[str, str]:
    text = resources.files("mailgateway").joinpath("data/libelles.toml").read_text(encoding="utf-8")
    return dict(tomllib.loads(text)["libelles"])


def libelle(value: Any) -> Any:
    """French label of an enumeration value (``RANCONGICIEL`` -> ``rançongiciel``); lists too."""
    if isinstance(value, list | tuple):
        return [libelle(v) for v in value]
    return _labels().get(value, value) if isinstance(value, str) else value


@cache
def _indicator_labels() -> dict[str, str]:
    text = resources.files("mailgateway").joinpath("data/libelles.toml").read_text(encoding="utf-8")
    return dict(tomllib.loads(text).get("indicateurs", {}))


def type_indicateur(value: Any) -> Any:
    """French name of an indicator type (``phone`` -> ``téléphone``). A table of its own: the
    words ``url`` or ``hash`` must not be translated inside a case title (``french_title``)."""
    return _indicator_labels().get(value, value) if isinstance(value, str) else value


_SCHEME = re.compile(r"^(h)tt(ps?)(\[?:\]?//)|^(f)t(p)(\[?:\]?//)", re.I)


def _bracket(text: str, char: str) -> str:
    # Idempotent: a part already written "[.]" is kept, so defanging twice changes nothing.
    return f"[{char}]".join(part.replace(char, f"[{char}]") for part in text.split(f"[{char}]"))


def defang(value: Any) -> Any:
    """An indicator as people must see it in mail: not clickable, not resolvable
    (``https://evil.example/x.exe`` -> ``hxxps://evil[.]example/x.exe``, ``a@b.fr`` -> ``a[@]b[.]fr``,
    ``192.0.2.1`` -> ``192[.]0[.]2[.]1``). Mail clients (Outlook, Thunderbird) turn a URL, an address
    or a host name written in plain text into a link: an indicator is evidence, never a link.
    Only the machine-readable files (STIX, MISP, CSV: dispatch/indicators_out.py) carry values refanged."""
    if not isinstance(value, str):
        return value
    m = _SCHEME.match(value)
    if m or "://" in value:
        if m:
            value = (f"{m.group(1)}xx{m.group(2)}{m.group(3)}" if m.group(1)
                     else f"{m.group(4)}x{m.group(5)}{m.group(6)}") + value[m.end():]
        scheme, sep, rest = value.partition("//")
        host, slash, path = rest.partition("/")
        return scheme + sep + _bracket(host, ".") + slash + path
    if "@" in value:
        local, _, domain = value.rpartition("@")
        local = local.removesuffix("[")
        domain = domain.removeprefix("]")
        return f"{local}[@]{_bracket(domain, '.')}"
    if " " in value or "." not in value:
        return value.replace(":", "[:]") if value.count(":") >= 2 and "[:]" not in value else value
    return _bracket(value, ".")


# Links a mail client makes clickable in plain text, defanged in three linear passes:
# 1. every « :// », whatever comes before it (« _https://… », « éhttps://… »: a linkifier starts the
#    scheme at the first ASCII letter; found by an outside tester): the token around it loses its
#    scheme's colon (« smb[:]//… »; http(s) and ftp become hxxp(s), fxp) and its host's dots;
# 2. schemes without « // » (mailto:, news:, webcal:, tel:, sip:), a bare « www. » host, and a bare
#    host or IPv4 address followed by a path, a query, a fragment or a port (« evil.example:8080/x »,
#    « evil.example?sso=1 »: webmails link them) — never an address's domain, never inside a path;
# 3. Windows share paths (UNC « \\host\share », « \\?\UNC\host\share »): Outlook links them, and
#    opening one hands the agent's Windows credentials (NTLM) to the host it names.
_DELIMITERS = frozenset(" \t\r\n\x0b\x0c<>\"'])}")
_MAX_TOKEN = 2000
_SCHEME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789+.-")
_DEFANGED_SCHEMES = {"http": "hxxp", "https": "hxxps", "ftp": "fxp", "ftps": "fxps"}
# Schemes a client links or runs without « // » (an outside attacker's forged receipt carried
# « data: », « javascript: », « callto: »…), and bare hosts in any script (« ars-pdl-sécurité.fr/login »).
_NO_SLASH_SCHEMES = (r"(?:mailto|news|webcal|tel|sip|data|javascript|vbscript|file|sms|smsto|callto|facetime|skype"
                     r"|whatsapp|tg|intent|ms-[a-z-]{1,30}|telnet|gopher|wais|prospero|notes|outlook|ldap|irc"
                     r"|xmpp|ssh|msteams|itms-services|https?|ftp):")
_URL_IN_TEXT = re.compile(
    r"(?<![A-Za-z0-9])(?:" + _NO_SLASH_SCHEMES + r"|www\.|ftp\.)[^\s<>\"'\])}]{1,2000}"
    r"|(?<![@./\w-])(?:(?:[^\W_][\w-]{0,62}\.){1,10}[^\W\d_]{2,24}|\d{1,3}(?:\.\d{1,3}){3})"
    r"(?:[/?#]|:\d{1,5}(?![\d]))[^\s<>\"'\])}]{0,2000}", re.I)
_UNC_IN_TEXT = re.compile(r"(?<!\\)\\{2,8}(?=[\w.\[?-])[^\s<>\"'\])}]{1,2000}")


def defang_text(value: Any) -> Any:
    """Free text from mail (a reply, a summary) with its links defanged: shown to staff as text,
    never as a link a click away. Linear; defanging twice changes nothing."""
    if not isinstance(value, str):
        return value
    # 0. Colons that look like one (« http：//… », fullwidth: some clients fold it to « : » and link
    #    it) are written as « : », and a web scheme followed by a single slash or a backslash
    #    (« https:/evil… », which browsers and some linkifiers complete) loses its scheme. Outside attacker.
    if not value.isascii():  # every lookalike is outside ASCII (issue 19: translate costs 3 µs)
        value = value.translate(_COLON_LOOKALIKES)
    # Every pass below needs a colon (a scheme), a dot (a host, « www. », an IPv4 address) or a
    # backslash (a share): a value with none — a name, a number, most words — is printed as it
    # is, without five scans (issue 19: every value a staff notification prints is defanged).
    if ":" not in value and "." not in value and "\\" not in value:
        return value
    return _defang_needed(value)


def _defang_needed(value: str) -> str:
    """Every pass, each skipped when the text lacks what its pattern needs (issue 19:
    a staff notification prints some thirty values, sentences ending with a dot among them):
    a colon and a slash or backslash; « :// »; a scheme with its colon, « www. », or a dot with a
    colon or a path, query or fragment character; two backslashes. Held to every pass run
    unconditionally by a property test (tests/dispatch/test_untrusted_text_defanged.py)."""
    if ":/" in value or ":\\" in value:
        value = _SINGLE_SLASH_SCHEME.sub(_defang_single_slash, value)
    value = _defang_schemes(value)
    if ("." in value and ("/" in value or "?" in value or "#" in value or ":" in value)) or _URL_HINT.search(value):
        value = _URL_IN_TEXT.sub(_defang_link, value)
    return _UNC_IN_TEXT.sub(_defang_share, value) if "\\\\" in value else value


# What the first alternative of _URL_IN_TEXT starts with, with its flags (re.I: « ſip: » is « sip: »
# to it); its second alternative needs a dot and one of « / ? # : ».
_URL_HINT = re.compile(_NO_SLASH_SCHEMES + r"|www\.|ftp\.", re.I)


# Colons and slashes that look like one (Unicode confusables: fullwidth, small, modifier letter,
# Hebrew sof pasuq, Armenian full stop, ratio; fullwidth solidus, division slash, fraction slash).
_COLON_LOOKALIKES = str.maketrans({
    "\uff1a": ":", "\ufe55": ":", "\ufe13": ":", "\ua789": ":", "\u2236": ":", "\u05c3": ":", "\u02f8": ":",
    "\u0589": ":", "\u0703": ":", "\u0704": ":", "\u16ec": ":", "\u1803": ":", "\u1809": ":", "\u205a": ":",
    "\u226c": ":", "\uff0f": "/", "\u2215": "/", "\u2044": "/", "\u29f8": "/", "\u1735": "/", "\u2cc6": "/",
    # Dots browsers map to « . » in a host (« www。evil。example/login »: an outside attacker).
    "\u3002": ".", "\uff0e": ".", "\uff61": ".",
})
# ASCII letters only (a URI scheme is ASCII, RFC 3986 §3.1): under Unicode case folding
# « httpſ » matched too, and had no defanged name (a KeyError from mail text: hypothesis).
_SINGLE_SLASH_SCHEME = re.compile(r"(?<![A-Za-z0-9])(https?|ftps?)(?=:[/\\](?![/\\]))", re.I | re.A)


def _defang_single_slash(match: re.Match[str]) -> str:
    return _DEFANGED_SCHEMES[match.group(1).lower()]


def _defang_schemes(text: str) -> str:
    """Pass 1: each token holding « :// » (string operations: linear in the text)."""
    out: list[str] = []
    pos = 0
    at = text.find("://")
    while at != -1:
        left = at
        while left > 0 and at - left < _MAX_TOKEN and text[left - 1] not in _DELIMITERS:
            left -= 1
        right = at + 3
        while right < len(text) and right - at < _MAX_TOKEN and text[right] not in _DELIMITERS:
            right += 1
        left = max(left, pos)
        out.append(text[pos:left])
        out.append(_defang_token(text[left:at], text[at + 3:right]))
        pos = right
        at = text.find("://", right)
    out.append(text[pos:])
    return "".join(out)


def _defang_token(before: str, after: str) -> str:
    """``before`` « :// » ``after`` with the scheme made no scheme and the host's dots bracketed."""
    start = len(before)
    while start > 0 and len(before) - start < 32 and before[start - 1] in _SCHEME_CHARS:
        start -= 1
    prefix, scheme = before[:start], before[start:]
    cut = next((i for i, ch in enumerate(after) if ch in "/?#\\"), len(after))
    host = after[:cut].replace(".", "[.]").replace("@", "[@]")
    lowered = scheme.lower()
    if lowered in _DEFANGED_SCHEMES.values():
        return before + "://" + after  # already defanged: no client links « hxxps:// »
    if lowered in _DEFANGED_SCHEMES:
        return prefix + _DEFANGED_SCHEMES[lowered] + "://" + host + after[cut:]
    return prefix + scheme + "[:]//" + host + after[cut:]


def _defang_share(match: re.Match[str]) -> str:
    r"""« \\srv.chu.test\x » → « [\\]srv[.]chu[.]test\x »: no mail client links a path that
    does not begin with the two backslashes."""
    share = match.group(0)
    kept = share.rstrip(".,;:!?")  # the sentence's punctuation stays text (``_defang_link``)
    return "[\\\\]" + kept.lstrip("\\").replace(".", "[.]") + share[len(kept):]


def _defang_link(match: re.Match[str]) -> str:
    """Pass 2: « www. » and bare hosts get « [.] » (``defang``), addresses « [@] »; a scheme
    without « // » keeps its name, its colon becomes « [:] »."""
    link = match.group(0)
    # The sentence's own punctuation after a link stays text (« voir www.evil.fr. »: an outside
    # tester saw « www[.]evil[.]fr[.] »); mail clients end a link before it too.
    kept = link.rstrip(".,;:!?")
    end = link[len(kept):] if kept else ""
    link = kept or link
    text = str(defang(link))
    head = link.split("/", 1)[0].split("?", 1)[0].split("#", 1)[0]
    if link.lower().startswith("www.") or ":" not in head or head.rpartition(":")[2].isdigit():
        return text + end
    return text.replace(":", "[:]", 1) + end


def instant_fr(value: Any) -> Any:
    """« 27/11/2026 à 08:30 » of an ISO 8601 instant (``clock.french_instant``)."""
    return french_instant(value) if value else value


def libelle_mots(value: Any) -> Any:
    """Free text with each enumeration code word in French (« catégorie ESMS » -> « catégorie
    établissement social ou médico-social »): word by word, linear; other words unchanged."""
    if not isinstance(value, str):
        return value
    return " ".join(str(libelle(word)) for word in value.split(" "))


_CATEGORY_CLAUSE = re.compile(r"category=([A-Za-z_|]{1,500})")


def categories_fr(expression: Any) -> list[str]:
    """« LBM : laboratoire de biologie médicale » for each category a stored target expression
    names (directory/targets.py canonical form), so a preview explains the codes staff typed."""
    if not isinstance(expression, str):
        return []
    codes = sorted({c for m in _CATEGORY_CLAUSE.finditer(expression) for c in m.group(1).split("|") if c})
    return [f"{c} : {libelle(c)}" for c in codes if libelle(c) != c]


def _one_line(value: str) -> str:
    # RFC 5322 §2.2: a header body is one logical line; CR/LF never reach the header API.
    return " ".join(value.split())


# Mail the agency writes to itself (staff) or to the national cell: every value a template prints
# there is defanged (``defang_text``), whatever its source. Marking each outsider-chosen field in
# each template (``| defang_text``) left holes an outside tester found one after another: a From
# in the quarantine notice, a reply's subject, a structure name in reminders, an attachment name.
# Mail to establishments (acknowledgements, bulletins, relays, #repondre) keeps what staff wrote,
# links included: they are staff's words, and those templates print no outsider text but the
# declarant's own. Site templates with these names are inward too.
INWARD_TEMPLATES = frozenset({
    "assignation", "avertissement", "bulletin_rapport", "contact_a_corriger", "digest", "digest_requete",
    "original", "quarantaine", "rappel", "rapport_hebdo", "receipt", "reponse_diffusion", "reponse_recue",
    "staff_notification", "transfert_equipe", "transmission_acss",
})


@lru_cache(maxsize=4096)  # bounded: text from mail may hold any of the 1.1 million code points
def _columns(char: str) -> int:
    """The columns ``char`` may take in a mail reader's fixed-width font, on the safe side (a line
    counted too wide is only wrapped early): 0 for the Latin combining accents of decomposed
    French; 2 for East Asian wide, fullwidth, and ambiguous characters past U+2000 (« 医 », « Ａ »,
    « ① », « ※ »: UAX #11); 3 for other symbols past U+2000, which a fixed-width font lacks and a
    fallback font draws up to 2.4 cells wide (« ⟹ »); 1 for everything else, format and combining
    characters included (some draw a glyph: U+0600). An outside tester forged rows with each."""
    if char.isascii():
        return 1
    code = ord(char)
    if 0x0300 <= code <= 0x036F:
        return 0
    width = unicodedata.east_asian_width(char)
    if width in ("W", "F") or (width == "A" and code >= 0x2000):
        return 2
    if code >= 0x2000 and unicodedata.category(char).startswith("S"):
        return 3
    return 1


def _width(text: str) -> int:
    return len(text) if text.isascii() else sum(map(_columns, text))


def _fit(word: str, room: int) -> tuple[str, str]:
    """``word`` cut where it fills ``room`` columns: (head, rest); the head has one character at
    least, so that cutting always progresses."""
    used = 0
    for n, char in enumerate(word):
        used += _columns(char)
        if used > room:
            return (word[:n], word[n:]) if n else (word[:1], word[1:])
    return word, ""


def columns(text: object, width: int = 80, indent: str = "        ") -> str:
    """``text`` wrapped at ``width`` columns as a fixed-width font may show them (``_columns``:
    Jinja's ``wordwrap`` counts characters, and 32 « 医 » of 2 columns each made a 76-character
    line 108 columns wide: a reader's own wrapping then started a line with a forged row; an
    outside tester), continuation lines led by ``indent``, a word wider than a line cut. Each
    line of ``text`` keeps its leading blanks. Lines are joined with « \n »."""
    out: list[str] = []
    for paragraph in str(text).split("\n"):
        words = paragraph.lstrip(" ")
        line = paragraph[:len(paragraph) - len(words)]
        used, bare = _width(line), True
        for word in words.split(" "):
            if not word:
                continue
            size = _width(word)
            if not bare and used + 1 + size > width:
                out.append(line)
                line, used, bare = indent, _width(indent), True
            if not bare:
                line, used = line + " ", used + 1
            while used + size > width:
                room = width - used
                head, rest = _fit(word, room)
                if _width(head) > room and line.strip():  # not one character fits after what is there
                    out.append(line.rstrip(" "))
                else:
                    out.append(line + head)
                    word, size = rest, _width(rest)
                line, used, bare = indent, _width(indent), True
            if word:
                line, used, bare = line + word, used + size, False
        out.append(line)
    return "\n".join(out)


def _defang_printed(value: Any) -> Any:
    """Jinja ``finalize`` of inward templates: a printed string is defanged; markup a template or
    filter built itself (``Markup``) and non-strings are printed as they are."""
    if isinstance(value, str) and not isinstance(value, markupsafe.Markup):
        return defang_text(value)
    return value


class Renderer:
    def __init__(self, site_dir: str | None = None) -> None:
        dirs = [site_dir] if site_dir else []
        loader = jinja2.FileSystemLoader([*dirs, str(BUNDLED_DIR)])
        # auto_reload off: Jinja otherwise stats each template file at every render (three per
        # mail, a twentieth of a bulletin's composing, issue 19). A changed template takes effect
        # with a new Renderer: SIGHUP builds one (app.reconfigure), each fan-out starts new workers.
        common: dict[str, Any] = {"loader": loader, "undefined": jinja2.StrictUndefined,
                                  "keep_trailing_newline": True, "auto_reload": False}
        self._html = ImmutableSandboxedEnvironment(autoescape=True, **common)
        self._text = ImmutableSandboxedEnvironment(autoescape=False, **common)
        self._inward_html = ImmutableSandboxedEnvironment(autoescape=True, finalize=_defang_printed, **common)
        self._inward_text = ImmutableSandboxedEnvironment(autoescape=False, finalize=_defang_printed, **common)
        for env in (self._html, self._text, self._inward_html, self._inward_text):
            env.filters["libelle"] = libelle
            env.filters["type_indicateur"] = type_indicateur
            env.filters["defang"] = defang
            env.filters["defang_text"] = defang_text
            env.filters["libelle_mots"] = libelle_mots
            env.filters["categories_fr"] = categories_fr
            env.filters["instant_fr"] = instant_fr
            env.filters["columns"] = columns
            # French wording (dispatch/wording.py): « {{ name | de_elide }} » -> « d'Établissement 1 ».
            env.filters["de_elide"] = wording.de_elide
            env.filters["du_nom"] = wording.du_nom
            env.filters["nombre"] = wording.nombre
            env.tests["salutation"] = wording.has_greeting
            env.tests["formule_finale"] = wording.has_closing

    def has(self, name: str) -> bool:
        try:
            self._text.get_template(name)
        except jinja2.TemplateNotFound:
            return False
        return True

    def render(self, name: str, context: Mapping[str, Any]) -> RenderedMail:
        text_env, html_env = ((self._inward_text, self._inward_html) if name in INWARD_TEMPLATES
                              else (self._text, self._html))
        try:
            subject = _one_line(text_env.get_template(f"{name}.subject.j2").render(context))
            text = text_env.get_template(f"{name}.txt.j2").render(context)
            html = None
            if self.has(f"{name}.html.j2"):
                html = html_env.get_template(f"{name}.html.j2").render({**context, "text_body": text})
        except jinja2.TemplateError as exc:
            raise TemplateError(f"template {name}: {exc}") from exc
        return RenderedMail(subject=subject, text=text, html=html)

    def check(self) -> list[tuple[str, str]]:
        """Compile every template (bundled and site); return (template, problem) pairs."""
        problems: list[tuple[str, str]] = []
        for name in sorted(set(self._text.list_templates(extensions=["j2"]))):
            try:
                (self._html if name.endswith(".html.j2") else self._text).get_template(name)
            except jinja2.TemplateError as exc:
                problems.append((name, str(exc)))
        return problems
