"""A checker for the ``parse --json`` object (README, "Command line"), reused by every test that
produces one. ``schema_problems(obj)`` lists what is wrong; ``assert_valid_facts`` fails on any.
"""

from __future__ import annotations

import re
from typing import Any

KINDS = {"declaration", "alert", "reply", "command", "bounce", "auto_reply", "loop", "unknown"}
INDICATOR_TYPES = {"url", "domain", "ip", "email", "hash", "phone", "cve"}
TOP_KEYS = {"file", "kind", "region", "case_ref", "sender", "declaration", "alert", "commands",
            "bounce", "indicators", "quarantine_reason"}  # fmt: skip
SENDER_KEYS = {"address", "authenticated", "method", "domain"}
DECLARATION_KEYS = {"finess", "structure", "category", "incident_type", "nature", "severity",
                    "detected_at", "impacts", "summary"}  # fmt: skip
ALERT_KEYS = {"reference", "title", "tlp", "targets", "cves", "authentic"}
COMMAND_KEYS = {"name", "args", "accepted", "reason"}
BOUNCE_KEYS = {"recipients", "permanent", "original_message_id"}
CATEGORIES = {"ETABLISSEMENT_SANTE", "HOPITAL_ARMEES", "LBM", "CENTRE_RADIOTHERAPIE", "ESMS", "AUTRE"}
SEVERITIES = {"GRAVE", "SIGNIFICATIF", "NON_QUALIFIE", "SANS_SUITE"}
NATURES = {"MALVEILLANT", "NON_MALVEILLANT", "INDETERMINE"}
INCIDENT_TYPES = {
    "RANCONGICIEL", "COMPROMISSION_SI", "COMPROMISSION_COMPTE", "HAMECONNAGE", "LOGICIEL_MALVEILLANT",
    "FUITE_DONNEES", "DENI_DE_SERVICE", "DEFIGURATION", "VOL_EQUIPEMENT", "EXPLOITATION_VULNERABILITE",
    "USURPATION_FRAUDE", "DYSFONCTIONNEMENT_INFRA", "PERTE_LIEN_TELECOM", "PANNE_ELECTRIQUE_CLIM",
    "BUG_APPLICATIF", "AUTRE",
}  # fmt: skip
IMPACTS = {"SOINS", "DONNEES", "FONCTIONNEMENT", "ORGANISATION", "PROPAGATION"}
TLPS = {"CLEAR", "GREEN", "AMBER", "AMBER+STRICT", "RED"}
CASE_REF = re.compile(r"^SSI-[A-Z0-9]{2,4}-\d{4}-\d{4,6}$")
ISO_WITH_OFFSET = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(:\d{2})?([+-]\d{2}:\d{2}|Z)$")


def _opt_str(value: Any) -> bool:
    return value is None or isinstance(value, str)


def _keys(obj: Any, keys: set[str], where: str, problems: list[str]) -> bool:
    if not isinstance(obj, dict):
        problems.append(f"{where}: not an object")
        return False
    missing = keys - obj.keys()
    if missing:
        problems.append(f"{where}: missing keys {sorted(missing)}")
    return True


def _enum(value: Any, allowed: set[str], where: str, problems: list[str]) -> None:
    if value is not None and value not in allowed:
        problems.append(f"{where}: {value!r} not in the enumeration")


def schema_problems(obj: Any) -> list[str]:
    problems: list[str] = []
    if not _keys(obj, TOP_KEYS, "facts", problems):
        return problems
    if obj.get("kind") not in KINDS:
        problems.append(f"kind: {obj.get('kind')!r}")
    for key in ("file", "region", "case_ref", "quarantine_reason"):
        if not _opt_str(obj.get(key)):
            problems.append(f"{key}: not a string or null")
    if obj.get("case_ref") is not None and not CASE_REF.match(obj["case_ref"]):
        problems.append(f"case_ref: {obj['case_ref']!r} is not SSI-<REGION>-<YYYY>-<NNNN>")
    if obj.get("kind") == "unknown" and not obj.get("quarantine_reason"):
        problems.append("unknown kind without quarantine_reason")
    sender = obj.get("sender")
    if _keys(sender, SENDER_KEYS, "sender", problems):
        if not isinstance(sender.get("authenticated"), bool):
            problems.append("sender.authenticated: not a boolean")
        for key in ("address", "method", "domain"):
            if not _opt_str(sender.get(key)):
                problems.append(f"sender.{key}: not a string or null")
    decl = obj.get("declaration")
    if decl is not None and _keys(decl, DECLARATION_KEYS, "declaration", problems):
        _enum(decl.get("category"), CATEGORIES, "declaration.category", problems)
        _enum(decl.get("severity"), SEVERITIES, "declaration.severity", problems)
        _enum(decl.get("nature"), NATURES, "declaration.nature", problems)
        _enum(decl.get("incident_type"), INCIDENT_TYPES, "declaration.incident_type", problems)
        if not isinstance(decl.get("impacts"), list) or any(i not in IMPACTS for i in decl.get("impacts", [])):
            problems.append(f"declaration.impacts: {decl.get('impacts')!r}")
        at = decl.get("detected_at")
        if at is not None and not (isinstance(at, str) and ISO_WITH_OFFSET.match(at)):
            problems.append(f"declaration.detected_at: {at!r} is not ISO 8601 with offset")
        finess = decl.get("finess")
        if finess is not None and not re.fullmatch(r"(\d{2}|2[AB])\d{7}", str(finess)):
            problems.append(f"declaration.finess: {finess!r}")
    alert = obj.get("alert")
    if alert is not None and _keys(alert, ALERT_KEYS, "alert", problems):
        _enum(alert.get("tlp"), TLPS, "alert.tlp", problems)
        if not isinstance(alert.get("authentic"), bool):
            problems.append("alert.authentic: not a boolean")
        for key in ("targets", "cves"):
            if not isinstance(alert.get(key), list):
                problems.append(f"alert.{key}: not a list")
    commands = obj.get("commands")
    if not isinstance(commands, list):
        problems.append("commands: not a list")
    else:
        for i, cmd in enumerate(commands):
            if _keys(cmd, COMMAND_KEYS, f"commands[{i}]", problems):
                if not isinstance(cmd.get("name"), str) or not isinstance(cmd.get("args"), list):
                    problems.append(f"commands[{i}]: name/args types")
                if not isinstance(cmd.get("accepted"), bool):
                    problems.append(f"commands[{i}].accepted: not a boolean")
                if cmd.get("accepted") is False and not cmd.get("reason"):
                    problems.append(f"commands[{i}]: refused without a reason")
    bounce = obj.get("bounce")
    if bounce is not None and _keys(bounce, BOUNCE_KEYS, "bounce", problems):
        if not isinstance(bounce.get("recipients"), list) or not isinstance(bounce.get("permanent"), bool):
            problems.append("bounce: recipients/permanent types")
    indicators = obj.get("indicators")
    if not isinstance(indicators, list):
        problems.append("indicators: not a list")
    else:
        for i, ind in enumerate(indicators):
            if not isinstance(ind, dict) or ind.get("type") not in INDICATOR_TYPES or not ind.get("value"):
                problems.append(f"indicators[{i}]: {ind!r}")
    kind = obj.get("kind")
    if kind == "declaration" and decl is None:
        problems.append("kind declaration without a declaration object")
    if kind == "alert" and alert is None:
        problems.append("kind alert without an alert object")
    if kind == "bounce" and bounce is None:
        problems.append("kind bounce without a bounce object")
    return problems


def assert_valid_facts(obj: Any) -> None:
    problems = schema_problems(obj)
    assert not problems, "; ".join(problems)
