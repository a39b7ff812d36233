"""Case references (docs/architecture.md, "Contracts": ``SSI-<REGION>-<YYYY>-<NNNN>``) and threading.

Threading order: the Message-IDs of In-Reply-To then References through the injected
``thread_lookup`` (the outbox knows what we sent), then a reference tag in the subject, then a
reference embedded in one of our own Message-IDs (``<ack.SSI-ARA-2026-0007@...>``).

Mail clients and people mangle tags: "RE: TR: [SSI- ARA-2026-0042]", "SSI_ARA_2026_0042",
"ssi-ara-2026-42". The pattern accepts any run of spaces, '-', '_', '.', '–' between the parts.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

_SEP = r"[\s_\-\u2010-\u2015.:/]{0,3}"
CASE_REF = re.compile(
    r"(?<![A-Za-z0-9])SSI" + _SEP + r"([A-Za-z]{2,4})" + _SEP + r"((?:19|20)\d{2})" + _SEP + r"(\d{1,6})(?!\d)",
    re.I,
)
# Reply/forward prefixes in French, English and German clients (RE:, TR:, Fwd:, AW:, WG:, RÉF:).
# "(?:\[\d+\]\s*)?" rather than "\s*(?:\[\d+\])?\s*": no two quantifiers over the same blanks.
_PREFIX = re.compile(r"^\s*(?:(?:re|r[ée]f|tr|fw|fwd|aw|wg|sv|vs|antw|rif|réf)\s*(?:\[\d+\]\s*)?:\s*)+", re.I)


def canonical(region: str, year: str, number: str) -> str:
    return f"SSI-{region.upper()}-{year}-{int(number):04d}"


def find_ref(text: str) -> str | None:
    """The first case reference in ``text``, canonicalised."""
    match = CASE_REF.search(text)
    return canonical(*match.groups()) if match else None


def strip_prefixes(subject: str) -> str:
    return _PREFIX.sub("", subject).strip()


# Forward prefixes among those (French « TR: », English « Fw: »/« Fwd: », German « WG: », Danish and
# Norwegian « VS: », which is also Finnish for a reply: read as a forward, the safe side; an
# outside attacker forwarded « VS: #clore … »).
_FORWARD_WORDS = frozenset({"tr", "fw", "fwd", "wg", "vs"})


def is_forward(subject: str) -> bool:
    """Whether the Subject's prefixes say it forwards a message (« RE: TR: … », « Fwd: … »)."""
    match = _PREFIX.match(subject)
    if match is None:
        return False
    words = (w.split("[")[0].strip().lower() for w in match.group(0).split(":"))
    return any(w in _FORWARD_WORDS for w in words)


def thread_case(
    reply_ids: Sequence[str],
    subject: str,
    lookup: Callable[[Sequence[str]], str | None],
    own_domains: Sequence[str] = (),
) -> tuple[str | None, str | None]:
    """(case reference, how it was found: "thread" | "subject" | "message-id") or (None, None)."""
    if reply_ids:
        try:
            found = lookup(list(reply_ids))
        except Exception:
            found = None
        if found:
            return found, "thread"
    ref = find_ref(subject)
    if ref:
        return ref, "subject"
    for mid in reply_ids:
        domain = mid.rpartition("@")[2].lower()
        if own_domains and not any(domain == d or domain.endswith("." + d) for d in own_domains):
            continue
        ref = find_ref(mid)
        if ref:
            return ref, "message-id"
    return None, None
