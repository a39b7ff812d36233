"""Indicators attached to an alert: a STIX 2.1 bundle or a MISP event (docs/indicators.md, "In").

An ACSS alert may carry its indicators as a file. They are read (bounded: size, JSON depth, object
count), checked with the same extractor as the text (``mail/indicators.py``: a value the text reader
would not accept, or our own domains, is dropped), merged with those of the text, duplicates
removed, and the source of each kept. The file's TLP markings are cross-checked with the mail's:
the stricter wins (FIRST TLP 2.0: information is shared under the label of its most restrictive
part) and a disagreement is written where staff read the alert's marking (``Alert.tlp_marking``,
shown in the staff notification and kept in the case's fields).

A file that cannot be read (not JSON, too big, too deep, neither a bundle nor an event) is
reported, never a crash: hostile until authenticated, and even an authentic one may be broken.
The reading is a plain walk of the decoded JSON: no library is trusted with hostile input beyond
``json`` itself, whose recursion error on deep nesting is caught.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field, replace
from email.message import Message
from typing import Any

from mailgateway.mail import tlp
from mailgateway.mail.facts import Alert, Indicator
from mailgateway.mail.indicators import MAX_INDICATORS, extract_indicators
from mailgateway.mail.parse import ParsedMessage, part_bytes, walk

MAX_FILE_BYTES = 2 * 1024 * 1024
MAX_FILES = 5
MAX_DEPTH = 32
MAX_NODES = 200_000  # JSON values walked in one file
MAX_OBJECTS = 5_000  # STIX objects or MISP attributes read in one file
TEXT = "texte"

_JSON_TYPES = ("application/json", "application/stix+json", "application/misp+json", "text/json")
# STIX patterning: a comparison "object-type:path = 'literal'". The literal is read by one
# unambiguous alternation (a plain character or an escape), so the match is linear.
_COMPARISON = re.compile(
    r"([a-z0-9][a-z0-9\-]{0,62}):([A-Za-z0-9_.'\-]{1,80})\s{0,8}=\s{0,8}'((?:[^'\\]|\\.){0,4000})'"
)
# STIX TLP marking definitions: TLP 2.0 (OASIS extension) and TLP 1.0 (STIX 2.1 §7.6.1.1).
_TLP_IDS = {
    "marking-definition--94868c89-83c2-464b-929b-a1a8aa3c8487": tlp.CLEAR,
    "marking-definition--bab4a63c-aed9-4cf5-a766-dfca5abac2bb": tlp.GREEN,
    "marking-definition--55d920b0-5e8b-4f79-9ee9-91f868d9b421": tlp.AMBER,
    "marking-definition--939a9414-2ddd-4d32-a0cd-375ea402b003": tlp.AMBER_STRICT,
    "marking-definition--e828b379-4e03-4974-9ac4-e53a884c97c1": tlp.RED,
    "marking-definition--613f2e26-407d-48c7-9eca-b8e91df99dc9": tlp.CLEAR,
    "marking-definition--34098fce-860f-48ae-8e50-ebd3cc5e41da": tlp.GREEN,
    "marking-definition--f88d31f6-486f-44da-b317-01333bde0b82": tlp.AMBER,
    "marking-definition--5e57c739-391a-4eb3-b6be-7d15ca92d5ed": tlp.RED,
}
# What a STIX object or pattern path, or a MISP attribute type, holds, as our indicator kind.
_STIX_PATHS = {
    ("url", "value"): "url", ("domain-name", "value"): "domain", ("ipv4-addr", "value"): "ip",
    ("ipv6-addr", "value"): "ip", ("email-addr", "value"): "email",
    ("x-mailgateway-phone-number", "value"): "phone",
}
_MISP_KINDS = {
    "url": "url", "link": "url", "domain": "domain", "hostname": "domain", "ip-dst": "ip", "ip-src": "ip",
    "email-src": "email", "email": "email", "email-dst": "email", "md5": "hash", "sha1": "hash",
    "sha256": "hash", "sha512": "hash", "vulnerability": "cve", "phone-number": "phone",
    "whois-registrant-phone": "phone",
}


@dataclass
class Attached:
    """What the attached files said: candidate indicators with their source, markings, problems."""

    found: list[tuple[str, str, str]] = field(default_factory=list)  # (kind, raw value, source)
    markings: list[tuple[str, str]] = field(default_factory=list)  # (label, source)
    problems: list[str] = field(default_factory=list)  # French, for staff
    files: list[str] = field(default_factory=list)


def _filename(part: Message) -> str:
    try:
        name = part.get_filename() or ""
    except Exception:
        name = ""
    return " ".join(str(name).split())[:80]


def _candidate(part: Message) -> bool:
    try:
        ctype = part.get_content_type()
    except Exception:
        return False
    return ctype in _JSON_TYPES or _filename(part).lower().endswith(".json")


def _bounded(value: Any) -> str | None:
    """None when ``value`` is within MAX_DEPTH and MAX_NODES, else why not (iterative: no recursion)."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    nodes = 0
    while stack:
        item, depth = stack.pop()
        nodes += 1
        if nodes > MAX_NODES:
            return f"plus de {MAX_NODES} valeurs"
        if depth > MAX_DEPTH:
            return f"imbrication supérieure à {MAX_DEPTH} niveaux"
        if isinstance(item, dict):
            stack.extend((v, depth + 1) for v in item.values())
        elif isinstance(item, list):
            stack.extend((v, depth + 1) for v in item)
    return None


def _unescape(literal: str) -> str:
    return re.sub(r"\\(.)", r"\1", literal)


def _stix(doc: dict[str, Any], name: str, out: Attached) -> None:
    source = f"STIX {name}"
    objects = doc.get("objects")
    if not isinstance(objects, list):
        out.problems.append(f"{name} : paquet STIX sans liste « objects »")
        return
    for obj in objects[:MAX_OBJECTS]:
        if not isinstance(obj, dict):
            continue
        kind = str(obj.get("type") or "")
        refs = obj.get("object_marking_refs")
        for ref in refs if isinstance(refs, list) else ():
            if isinstance(ref, str) and ref in _TLP_IDS:
                out.markings.append((_TLP_IDS[ref], source))
        if kind == "marking-definition" and isinstance(obj.get("name"), str):
            marking = tlp.parse_value(str(obj["name"])) if str(obj["name"]).upper().startswith("TLP") else None
            if marking is not None and obj.get("id") in _TLP_IDS:
                out.markings.append((marking.label, source))
        value = obj.get("value")
        if (kind, "value") in _STIX_PATHS and isinstance(value, str):
            out.found.append((_STIX_PATHS[(kind, "value")], value, source))
        elif kind == "file" and isinstance(obj.get("hashes"), dict):
            out.found.extend(("hash", v, source) for v in obj["hashes"].values() if isinstance(v, str))
        elif kind == "vulnerability" and isinstance(obj.get("name"), str):
            out.found.append(("cve", obj["name"], source))
        elif kind == "indicator" and isinstance(obj.get("pattern"), str) and obj.get("pattern_type") == "stix":
            for m in _COMPARISON.finditer(obj["pattern"][:20_000]):
                target = (m.group(1), m.group(2))
                literal = _unescape(m.group(3))
                if target in _STIX_PATHS:
                    out.found.append((_STIX_PATHS[target], literal, source))
                elif m.group(1) == "file" and m.group(2).startswith("hashes."):
                    out.found.append(("hash", literal, source))


def _misp(doc: dict[str, Any], name: str, out: Attached) -> None:
    source = f"MISP {name}"
    event = doc.get("Event", doc)
    if not isinstance(event, dict):
        out.problems.append(f"{name} : événement MISP illisible")
        return
    attributes: list[Any] = list(event.get("Attribute") or [])[:MAX_OBJECTS]
    for obj in list(event.get("Object") or [])[:MAX_OBJECTS]:
        if isinstance(obj, dict) and isinstance(obj.get("Attribute"), list):
            attributes.extend(obj["Attribute"][: MAX_OBJECTS - len(attributes)])
    for attribute in attributes[:MAX_OBJECTS]:
        if not isinstance(attribute, dict):
            continue
        kind, value = attribute.get("type"), attribute.get("value")
        if isinstance(kind, str) and kind in _MISP_KINDS and isinstance(value, str):
            out.found.append((_MISP_KINDS[kind], value, source))
    for tag in list(event.get("Tag") or [])[:200]:
        tag_name = tag.get("name") if isinstance(tag, dict) else None
        if isinstance(tag_name, str) and tag_name.lower().startswith("tlp:"):
            marking = tlp.parse_value(tag_name)
            if marking is not None:
                out.markings.append((marking.label, source))


def read_attached(parsed: ParsedMessage) -> Attached:
    """The STIX bundles and MISP events attached to ``parsed`` (top level only, bounded)."""
    out = Attached()
    for part, _depth, inner in walk(parsed.msg):
        if inner or part.is_multipart() or not _candidate(part):
            continue
        if len(out.files) >= MAX_FILES:
            out.problems.append(f"plus de {MAX_FILES} fichiers JSON joints : les suivants ne sont pas lus")
            break
        name = _filename(part) or "pièce jointe JSON"
        out.files.append(name)
        data = part_bytes(part, MAX_FILE_BYTES + 1)
        if len(data) > MAX_FILE_BYTES:
            out.problems.append(f"{name} : fichier de plus de {MAX_FILE_BYTES // 1024} Kio, non lu")
            continue
        try:
            doc = json.loads(data.decode("utf-8-sig"))
        except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
            out.problems.append(f"{name} : JSON illisible ({type(exc).__name__})")
            continue
        why = _bounded(doc)
        if why is not None:
            out.problems.append(f"{name} : {why}, non lu")
            continue
        if isinstance(doc, dict) and doc.get("type") == "bundle":
            _stix(doc, name, out)
        elif isinstance(doc, dict) and ("Event" in doc or "Attribute" in doc):
            _misp(doc, name, out)
        else:
            out.problems.append(f"{name} : ni paquet STIX 2.1 ni événement MISP")
    return out


def merge(
    text_indicators: tuple[Indicator, ...], attached: Attached, exclude_addresses: list[str], noise: tuple[str, ...]
) -> tuple[tuple[Indicator, ...], list[tuple[str, str, str]]]:
    """Text indicators then the files' ones (each checked by the text extractor), deduplicated.

    Returns the indicators and their sources, ``(type, value, source)``, one row per source.
    """
    out = list(text_indicators)
    sources = [(i.type, i.value, TEXT) for i in text_indicators]
    seen = {(i.type, i.value.lower()): i for i in out}
    for kind, raw, source in attached.found:
        # The extractor validates and canonicalises (refang, E.164, lower case) as for the text.
        checked = [i for i in extract_indicators([raw[:4000]], exclude_addresses, noise) if i.type == kind]
        for indicator in checked[:1]:
            key = (indicator.type, indicator.value.lower())
            if key not in seen:
                if len(out) >= MAX_INDICATORS:
                    continue
                seen[key] = indicator
                out.append(indicator)
            kept = seen[key]
            if (kept.type, kept.value, source) not in sources:
                sources.append((kept.type, kept.value, source))
    return tuple(out), sources


def cross_check(alert: Alert, attached: Attached) -> Alert:
    """The alert with the stricter of its TLP and its files'; a disagreement written for staff."""
    if not attached.markings and not attached.problems:
        return alert
    notes: list[str] = []
    label = alert.tlp or tlp.FAIL_CLOSED
    for marked, source in attached.markings:
        if marked != alert.tlp:
            notes.append(f"{source} : TLP:{marked}")
        if tlp.LABELS.index(marked) > tlp.LABELS.index(label):
            label = marked
    if notes:
        notes = list(dict.fromkeys(notes))[:5]
        notes.append(f"désaccord avec le courriel (TLP:{alert.tlp}) : le plus strict s'applique, TLP:{label}")
    notes.extend(attached.problems[:5])
    if not notes:
        return alert
    written = " ; ".join(filter(None, [alert.tlp_marking, *notes]))[:600]
    return replace(alert, tlp=label, tlp_marking=written)


def with_attached(
    parsed: ParsedMessage, alert: Alert, indicators: tuple[Indicator, ...], exclude_addresses: list[str],
    noise: tuple[str, ...], extra: dict[str, Any],
) -> tuple[Alert, tuple[Indicator, ...]]:
    """The one call of ``mail/analyse.py`` for an alert: files read, indicators merged, TLP checked.

    ``extra["indicator_sources"]`` lists the source of each indicator when a file was read.
    """
    attached = read_attached(parsed)
    if not attached.files:
        return alert, indicators
    merged, sources = merge(indicators, attached, exclude_addresses, noise)
    extra["indicator_sources"] = [{"type": t, "value": v, "source": s} for t, v, s in sources]
    if attached.problems:
        extra["indicator_files_problems"] = attached.problems[:10]
    return cross_check(alert, attached), merged
