"""Alerts of the national cell (ACSS, now CERT Santé) and CERT-FR style advisories.

An alert is authentic only when the sender is authenticated and the authenticated domain is
(under) one of the configured ACSS domains (docs/guarantees.md); anything else that looks like an alert
is still recognised, so that staff can be warned about a spoofed one.
"""

from __future__ import annotations

import re

from mailgateway.mail import tlp
from mailgateway.mail.facts import Alert, SenderVerdict
from mailgateway.mail.labels import Labels
from mailgateway.mail.refs import strip_prefixes
from mailgateway.mail.text import forwarded_from, labelled_lines, match_form, split_forwarded

# CERT-FR: CERTFR-2024-AVI-0123, CERTFR-2017-ALE-010; CERT Santé: 2026-ALE-031 and similar.
_CERTFR = re.compile(r"\bCERTFR-\d{4}-[A-Z]{2,4}-\d{1,5}\b", re.I)
_ALERT_REF = re.compile(r"\b(?:CERT[ -]?SANTE[ -]?)?\d{4}-(?:ALE|AVI|ACT|IOC|CTI|VUL|BUL|INF)-\d{1,5}\b", re.I)
_CVE = re.compile(r"\bCVE-(\d{4})-(\d{4,7})\b", re.I)
MAX_CVES = 200


def domain_in(domain: str | None, domains: tuple[str, ...] | list[str]) -> bool:
    """``domain`` equals or is a subdomain of one of ``domains``."""
    if not domain:
        return False
    domain = domain.lower().rstrip(".")
    return any(domain == d.lower() or domain.endswith("." + d.lower()) for d in domains if d)


MAX_TLP_SCAN = 200_000  # the relay forwards up to 100,000 characters of the alert: all are scanned


def tlp_of(subject: str, text: str, field: str | None) -> tuple[str, str | None, bool]:
    """(label relay obeys, marking(s) as written or None, all understood) — mail/tlp.py fails closed.

    The labelled field ("TLP : …", "Diffusion : …") and every marking of the subject and text
    count, and the strictest wins: the relay forwards the whole text. No marking at all is
    AMBER+STRICT too (tlp.relay_label explains why).
    """
    markings = [m for m in (tlp.parse_value(field),) if m is not None]
    markings.extend(tlp.find_markings(subject + "\n" + text[:MAX_TLP_SCAN]))
    chosen = tlp.strictest(markings)
    if chosen is None:
        return tlp.relay_label(None), None, False
    written = list(dict.fromkeys(m.raw for m in markings))[:5]
    return chosen.label, " ; ".join(written), all(m.known for m in markings)


def cves_of(text: str) -> tuple[str, ...]:
    seen: list[str] = []
    for m in _CVE.finditer(text[:200_000]):
        cve = f"CVE-{m.group(1)}-{m.group(2)}"
        if cve not in seen:
            seen.append(cve)
            if len(seen) >= MAX_CVES:
                break
    return tuple(seen)


def looks_like_alert(subject: str, text: str, labels: Labels) -> bool:
    """Two independent signals: an alert word, a TLP marking, a CERT reference, a known issuer."""
    probe = subject + "\n" + text[:20_000]
    signals = 0
    if labels.alert_keywords.first(subject) or re.search(r"\balerte?\b", match_form(subject)):
        signals += 1
    if any(m.known for m in tlp.find_markings(probe)):
        signals += 1
    if _CERTFR.search(probe) or _ALERT_REF.search(probe):
        signals += 1
    if labels.alert_issuers.first(probe):
        signals += 1
    return signals >= 2


def extract_alert(
    subject: str, text: str, sender: SenderVerdict, acss_domains: tuple[str, ...], labels: Labels
) -> Alert:
    fields: dict[str, str] = {}
    for label, value, _i in labelled_lines(text[:50_000], max_lines=400):
        name = labels.fields.lookup(label)
        if name == "structure":  # "Structures concernées" also names a declaration's structure
            name = "targets"
        if name in ("reference", "title", "targets", "tlp") and name not in fields and value:
            fields[name] = value
    probe = subject + "\n" + text[:50_000]
    reference = None
    for source in (fields.get("reference", ""), probe):
        match = _CERTFR.search(source) or _ALERT_REF.search(source)
        if match:
            reference = match.group(0).upper()
            break
    if reference is None and fields.get("reference"):
        reference = fields["reference"][:100]
    title = fields.get("title")
    if not title:
        title = strip_prefixes(subject)
        title = re.sub(r"^\s*(\[[^\]]{0,40}\]\s*)+", "", title)
        title = re.sub(r"^\s*alerte?\s*[-:–]\s*", "", title, flags=re.I).strip() or None
    label, marking, known = tlp_of(subject, text, fields.get("tlp"))
    return Alert(
        reference=reference,
        title=title and title[:300],
        tlp=label,
        targets=targets_of(fields.get("targets"), text, labels),
        cves=cves_of(probe),
        authentic=bool(sender.authenticated and domain_in(sender.auth_domain or sender.domain, acss_domains)),
        tlp_marking=marking,
        tlp_known=known,
    )


MAX_TARGET_SCAN = 20_000


def targets_of(field: str | None, text: str, labels: Labels) -> tuple[str, ...]:
    """Targeted structure categories: the « Structures concernées » field, read with the category
    words and the prose phrases of ``[alert_targets]``; without that field, the prose phrases in
    the text (« à destination des établissements et services médico-sociaux »). Table order."""
    found: list[str] = []
    if field:
        found = [t for t in labels.categories.ordered(field) if t != "AUTRE"]
        found += labels.alert_targets.ordered(field)
    if not found:
        found = labels.alert_targets.ordered(text[:MAX_TARGET_SCAN])
    return tuple(dict.fromkeys(found))



# The subject tags of what the gateway sends establishments (templates/alerte_relais.subject.j2,
# bulletin.subject.j2), compared case-folded: « TR: [TLP:CLEAR] [Alerte SSI - ARS …] … ».
RELAY_SUBJECT_TAGS = ("[alerte ssi - ars ", "[bulletin ssi - ars ")
MAX_SUBJECT_SCAN = 1000


def quotes_our_mail(subject: str, text: str, own_addresses: frozenset[str] | set[str]) -> str | None:
    """How a mail shows it forwards or quotes what the gateway sent (a relayed alert, a bulletin):
    ``"objet"`` — our subject tag in its subject; ``"transfert"`` — the inline-forwarded block's
    « De : » is one of our addresses; None otherwise. Such a mail is an answer to our message,
    never an alert of its own, whatever alert text it carries (an establishment's Outlook
    « TR: » keeps no In-Reply-To). String search and the linear forward split only."""
    folded = " ".join(subject[:MAX_SUBJECT_SCAN].casefold().split())
    if any(tag in folded for tag in RELAY_SUBJECT_TAGS):
        return "objet"
    _before, forwarded = split_forwarded(text[:MAX_TLP_SCAN])
    author = (forwarded_from(forwarded) or "").casefold() if forwarded else ""
    if author and any(f"<{a}>" in author or author == a for a in own_addresses if a):
        return "transfert"
    return None
