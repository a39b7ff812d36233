"""An alert's indicators as files establishments can load: STIX 2.1, MISP event, CSV (docs/indicators.md).

Built with the maintained libraries (``stix2``, ``pymisp``'s event model used offline), never by
hand-written JSON. Both are imported when a file is built, not with this module: importing
``pymisp`` costs 210–670 ms and ``stix2`` 80–290 ms (measured in a fresh interpreter), which a
command that never exports (``mailgateway --help``, ``cases list``) must not pay.

The values are the refanged ones of ``mail/indicators.py``: only these machine-readable files hold
them refanged; the human text keeps the alert as written (defanged).

TLP: the files carry the label of the mail they travel with (FIRST TLP 2.0), so that their markings
never claim less than the mail. STIX 2.1 predefines TLP 1.0 markings only; the TLP 2.0 ones are the
OASIS marking definitions of the TLP 2.0 extension (cti-stix-common-objects,
``extension-definition--60a3c5c5-…``), with their published ids.

Identifiers are derived from the alert and the value (a hash shaped as a version 4 UUID, which
stix2-validator asks of SDOs and custom objects): the same alert gives the same ids in every copy,
and a tool that loads two copies sees one indicator.
"""

from __future__ import annotations

import csv
import functools
import hashlib
import io
import json
import logging
import urllib.parse
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from mailgateway.dispatch.compose import Attachment
from mailgateway.mail.facts import Indicator

log = logging.getLogger("mailgateway.indicators")

FORMATS = ("stix", "misp", "csv")

STIX_CONTENT_TYPE = "application/stix+json;version=2.1"  # the media type of STIX 2.1 content (TAXII 2.1)
TLP2_EXTENSION = "extension-definition--60a3c5c5-0d10-413e-aab3-9e08dde9e88d"
TLP2_CREATED = "2022-10-01T00:00:00.000Z"
# OASIS TLP 2.0 marking definitions (cti-stix-common-objects, extension-definition-specifications/tlp-2.0).
TLP2_MARKINGS = {
    "CLEAR": "marking-definition--94868c89-83c2-464b-929b-a1a8aa3c8487",
    "GREEN": "marking-definition--bab4a63c-aed9-4cf5-a766-dfca5abac2bb",
    "AMBER": "marking-definition--55d920b0-5e8b-4f79-9ee9-91f868d9b421",
    "AMBER+STRICT": "marking-definition--939a9414-2ddd-4d32-a0cd-375ea402b003",
    "RED": "marking-definition--e828b379-4e03-4974-9ac4-e53a884c97c1",
}
# STIX 2.1 §7.6.1.1 predefined TLP 1.0 markings, read on the way in (WHITE is TLP 2.0's CLEAR).
TLP1_MARKINGS = {
    "CLEAR": "marking-definition--613f2e26-407d-48c7-9eca-b8e91df99dc9",
    "GREEN": "marking-definition--34098fce-860f-48ae-8e50-ebd3cc5e41da",
    "AMBER": "marking-definition--f88d31f6-486f-44da-b317-01333bde0b82",
    "RED": "marking-definition--5e57c739-391a-4eb3-b6be-7d15ca92d5ed",
}

# Fax and phone numbers: no STIX 2.1 cyber-observable exists for them. One custom SCO, defined by an
# extension-definition (STIX 2.1 §7.3, "new-sco"), whose id and text never change: a tool that
# knows it once knows it in every bundle. The schema is given as plain text, as §7.3 allows.
PHONE_TYPE = "x-mailgateway-phone-number"
PHONE_EXTENSION = "extension-definition--3c5a3d57-6e2a-4c51-9f0e-8f4b1d2e7a61"
PHONE_EXTENSION_CREATED = "2026-12-01T00:00:00.000Z"
PHONE_SCHEMA = (
    "x-mailgateway-phone-number: a telephone or fax number an alert names (fraudulent fax campaigns, "
    "callback scams). Property 'value' (string, required): the number in ITU-T E.164 form, '+' then "
    "country code and subscriber number, digits only. Defined by mailgateway, docs/indicators.md."
)
# The producer of the extension definition: the software, not one agency.
MAILGATEWAY_IDENTITY = "identity--8d8f3bb4-7d1f-4c0e-9b59-2f0f6b9d7c12"

# RFC 3986 reserved and unreserved characters, and "%" (already encoded).
_URI_SAFE = ":/?#[]@!$&'()*+,;=-._~%"
# MISP attribute types (MISP core format, "Attribute types") of our indicator kinds.
_HASH_TYPES = {32: "md5", 40: "sha1", 64: "sha256", 128: "sha512"}
_STIX_HASH = {32: "MD5", 40: "SHA-1", 64: "SHA-256", 128: "SHA-512"}
_MISP_TYPES = {"url": "url", "domain": "domain", "ip": "ip-dst", "email": "email-src", "cve": "vulnerability",
               "phone": "phone-number"}
# MISP distribution levels: 0 your organisation only, 1 this community only, 3 all communities.
_MISP_DISTRIBUTION = {"CLEAR": 3, "GREEN": 1, "AMBER": 0, "AMBER+STRICT": 0, "RED": 0}


@dataclass(frozen=True)
class IndicatorSet:
    """What an export needs of one alert: no case, no database (machinery)."""

    reference: str  # the alert's reference (ACSS / CERT-FR), else the case reference
    title: str
    tlp: str  # the label of the mail the files travel with (mail/tlp.py LABELS)
    created: datetime  # when the alert was received: created / valid_from / published
    indicators: tuple[Indicator, ...]
    producer: str  # the agency, e.g. "ARS Île-de-France"
    case_reference: str | None = None


def misp_type(indicator: Indicator) -> str:
    if indicator.type == "hash":
        return _HASH_TYPES.get(len(indicator.value), "other")
    return _MISP_TYPES.get(indicator.type, "other")


def _uuid4(*parts: str) -> str:
    """A deterministic UUID with the version 4 layout (stix2-validator wants v4 for SDOs)."""
    digest = hashlib.sha256("\x1f".join(("mailgateway-indicators", *parts)).encode()).digest()
    return str(uuid.UUID(bytes=digest[:16], version=4))


def _stamp(at: datetime) -> datetime:
    return (at if at.tzinfo else at.replace(tzinfo=UTC)).astimezone(UTC).replace(microsecond=0)


def _quote(value: str) -> str:
    # STIX patterning §9.3: a string literal escapes backslash and single quote.
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _tlp_marking(label: str) -> Any:
    import stix2

    name = "TLP:" + label
    return stix2.MarkingDefinition(
        id=TLP2_MARKINGS[label], created=TLP2_CREATED, name=name,
        extensions={TLP2_EXTENSION: {"extension_type": "property-extension", "tlp_2_0": label.lower()}},
    )


def _phone_extension() -> Any:
    import stix2

    return stix2.ExtensionDefinition(
        id=PHONE_EXTENSION, created=PHONE_EXTENSION_CREATED, modified=PHONE_EXTENSION_CREATED,
        created_by_ref=MAILGATEWAY_IDENTITY, name=PHONE_TYPE, version="1.0.0", extension_types=["new-sco"],
        description="Telephone and fax numbers named by health-sector security alerts (E.164).",
        schema=PHONE_SCHEMA,
    )


@functools.cache
def _phone_class() -> Any:
    """The custom SCO class, registered with stix2 once (it adds the "new-sco" extension itself)."""
    import stix2
    from stix2.properties import StringProperty

    @stix2.CustomObservable(PHONE_TYPE, [("value", StringProperty(required=True))], ["value"],
                            extension_name=PHONE_EXTENSION)
    class PhoneNumber:
        pass

    return PhoneNumber


def _observable(indicator: Indicator, marking: str) -> tuple[Any | None, str | None]:
    """(the STIX cyber-observable, the pattern) of one indicator; (None, None) for a CVE."""
    import stix2

    kind, value = indicator.type, indicator.value
    refs = {"object_marking_refs": [marking]}
    if kind == "url":
        # STIX 2.1 §6.15: the value MUST be a URL (RFC 3986): characters a URI cannot hold
        # (backslash, braces, spaces, non-ASCII) are percent-encoded; MISP and CSV keep them as found.
        value = urllib.parse.quote(value, safe=_URI_SAFE)
        return stix2.URL(value=value, **refs), f"[url:value = {_quote(value)}]"
    if kind == "domain":
        return stix2.DomainName(value=value, **refs), f"[domain-name:value = {_quote(value)}]"
    if kind == "ip":
        if ":" in value:
            return stix2.IPv6Address(value=value, **refs), f"[ipv6-addr:value = {_quote(value)}]"
        return stix2.IPv4Address(value=value, **refs), f"[ipv4-addr:value = {_quote(value)}]"
    if kind == "email":
        return stix2.EmailAddress(value=value, **refs), f"[email-addr:value = {_quote(value)}]"
    if kind == "hash" and len(value) in _STIX_HASH:
        algo = _STIX_HASH[len(value)]
        path = f"file:hashes.'{algo}'" if "-" in algo else f"file:hashes.{algo}"
        return stix2.File(hashes={algo: value}, **refs), f"[{path} = {_quote(value)}]"
    if kind == "phone":
        phone = _phone_class()(id=f"{PHONE_TYPE}--{_uuid4('phone', value)}", value=value, **refs)
        return phone, f"[{PHONE_TYPE}:value = {_quote(value)}]"
    return None, None


def stix_bundle(s: IndicatorSet) -> bytes:
    """A STIX 2.1 bundle: the TLP marking, the agency, a report naming indicators, observables, CVEs."""
    import stix2

    created = _stamp(s.created)
    marking = _tlp_marking(s.tlp)
    producer = stix2.Identity(id=f"identity--{_uuid4('producer', s.producer)}", created=created, modified=created,
                              name=s.producer, identity_class="organization", object_marking_refs=[marking.id])
    common = {"created": created, "modified": created, "created_by_ref": producer.id,
              "object_marking_refs": [marking.id]}
    external = [{"source_name": "mailgateway-alert", "external_id": s.reference}]
    if s.case_reference and s.case_reference != s.reference:
        external.append({"source_name": "mailgateway-case", "external_id": s.case_reference})
    objects: list[Any] = [marking, producer]
    refs: list[str] = []
    phone_used = False
    for indicator in s.indicators:
        key = (s.reference, indicator.type, indicator.value)
        if indicator.type == "cve":
            vuln = stix2.Vulnerability(
                id=f"vulnerability--{_uuid4('cve', indicator.value)}", name=indicator.value,
                description=f"{indicator.value}, cité par l'alerte {s.reference}",
                external_references=[{"source_name": "cve", "external_id": indicator.value}], **common)
            objects.append(vuln)
            refs.append(vuln.id)
            continue
        try:
            observable, pattern = _observable(indicator, marking.id)
        except Exception as exc:  # a value stix2 refuses (malformed address...) is left out, not the whole file
            log.warning("indicator left out of the STIX bundle of %s: %s %r: %s", s.reference, indicator.type,
                        indicator.value[:100], exc)
            continue
        if observable is None or pattern is None:
            continue
        try:
            stix_indicator = stix2.Indicator(
                id=f"indicator--{_uuid4('indicator', *key)}", name=f"{misp_type(indicator)} {indicator.value}"[:250],
                description=f"Cité par l'alerte {s.reference}", pattern=pattern, pattern_type="stix",
                pattern_version="2.1", valid_from=created, indicator_types=["malicious-activity"],
                external_references=external, **common)
        except Exception as exc:  # a pattern stix2-patterns cannot parse: the value is left out
            log.warning("indicator left out of the STIX bundle of %s: pattern %r: %s", s.reference, pattern[:100], exc)
            continue
        phone_used = phone_used or indicator.type == "phone"
        objects.extend([observable, stix_indicator])
        # The report names the custom phone SCO through its indicator only: a report referring to
        # a custom type directly is refused by stix2 unless the reader allows custom content.
        refs.extend([stix_indicator.id] if indicator.type == "phone" else [stix_indicator.id, observable.id])
    if phone_used:
        objects.insert(1, _phone_extension())
        objects.insert(2, stix2.Identity(id=MAILGATEWAY_IDENTITY, created=PHONE_EXTENSION_CREATED,
                                         modified=PHONE_EXTENSION_CREATED, name="mailgateway",
                                         identity_class="system"))
    report = stix2.Report(
        id=f"report--{_uuid4('report', s.reference)}", name=s.title[:250] or s.reference,
        description=f"Indicateurs de l'alerte {s.reference} (TLP:{s.tlp})", published=created,
        report_types=["threat-report"], object_refs=refs or [producer.id], external_references=external,
        **common)
    objects.append(report)
    bundle = stix2.Bundle(*objects, id=f"bundle--{_uuid4('bundle', s.reference)}", allow_custom=True)
    # Compact: stix2's pretty form orders properties in quadratic time (6 s for 200 indicators, measured).
    return str(bundle.serialize()).encode()


def misp_event(s: IndicatorSet) -> bytes:
    """A MISP event (``{"Event": …}``, which MISP imports), built with pymisp's model offline."""
    from pymisp import MISPEvent, MISPOrganisation

    event = MISPEvent()
    event.uuid = _uuid4("misp-event", s.reference)
    event.info = f"{s.reference} — {s.title}"[:1000]
    event.date = _stamp(s.created).date()
    event.distribution = _MISP_DISTRIBUTION[s.tlp]
    event.threat_level_id = 2  # medium: staff qualify the alert, not the file
    event.analysis = 2  # completed: the source has published it
    org = MISPOrganisation()
    org.name = s.producer
    org.uuid = _uuid4("producer", s.producer)
    event.Orgc = org
    event.add_tag("tlp:" + s.tlp.lower())
    for indicator in s.indicators:
        kind = misp_type(indicator)
        if kind == "other":
            continue
        event.add_attribute(kind, indicator.value, comment=s.reference,
                            to_ids=kind not in ("vulnerability", "phone-number"),
                            uuid=_uuid4("misp-attribute", s.reference, indicator.type, indicator.value))
    # The form MISP's "Add event from JSON" imports: pymisp's event under "Event" (its feed form
    # would drop the distribution, which carries the TLP to MISP's sharing).
    return json.dumps({"Event": json.loads(event.to_json())}, ensure_ascii=False, indent=1).encode()


# A spreadsheet runs a cell that starts with one of these as a formula (OWASP, "CSV injection").
_FORMULA = ("=", "+", "-", "@", "\t", "\r")


def _cell(value: str) -> str:
    return "'" + value if value.startswith(_FORMULA) else value


def csv_rows(s: IndicatorSet) -> bytes:
    """``type;value;comment`` (DESIGN.md §5), the MISP type names, UTF-8. No byte-order mark: the
    first line is the contract's header for the scripts that read it (an outside tester's
    ``head -1`` read « \ufefftype;value;comment »); the values are ASCII for the most part anyway."""
    out = io.StringIO()
    writer = csv.writer(out, delimiter=";", lineterminator="\r\n")
    writer.writerow(["type", "value", "comment"])
    for indicator in s.indicators:
        writer.writerow([misp_type(indicator), _cell(indicator.value), _cell(s.reference)])
    return out.getvalue().encode()


def csv_value(cell: str) -> str:
    """The value of a CSV cell as written by ``csv_rows`` (the formula guard removed)."""
    return cell[1:] if cell.startswith("'") and cell[1:].startswith(_FORMULA) else cell


def _filename(reference: str, suffix: str) -> str:
    safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in reference)[:60] or "alerte"
    return f"{safe}-indicateurs.{suffix}"


def build(s: IndicatorSet, fmt: str) -> bytes:
    if fmt == "stix":
        return stix_bundle(s)
    if fmt == "misp":
        return misp_event(s)
    if fmt == "csv":
        return csv_rows(s)
    raise ValueError(f"unknown indicator format: {fmt}")


def attachments(s: IndicatorSet, formats: Iterable[str]) -> list[Attachment]:
    """The files of ``formats`` (in FORMATS order); none without indicators or for TLP:RED.

    RED is refused here as well as by the gate (defence in depth): a RED file never leaves.
    """
    wanted: Sequence[str] = [f for f in FORMATS if f in set(formats)]
    if not s.indicators or s.tlp not in TLP2_MARKINGS or s.tlp == "RED":
        return []
    kinds = {"stix": (STIX_CONTENT_TYPE, "stix.json"), "misp": ("application/json", "misp.json"),
             "csv": ("text/csv;charset=utf-8", "csv")}
    return [Attachment(build(s, f), _filename(s.reference, kinds[f][1]), kinds[f][0]) for f in wanted]
