"""Checks of the indicator files (docs/indicators.md) with the reference tools, offline.

``validate_stix`` runs the OASIS stix2-validator in strict mode for STIX 2.1 with every network
fetch refused (its schema loader can fetch ``http(s)://`` references with ``requests``: a test
that passed only thanks to the network would prove nothing here), then loads the bundle back
with ``stix2``. ``load_misp`` loads an event with pymisp's ``MISPEvent``.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from unittest import mock

from mailgateway.dispatch.indicators_out import csv_value

# Our indicator kinds as the STIX objects and MISP types carry them.
_STIX_KINDS = {"url": "url", "domain-name": "domain", "ipv4-addr": "ip", "ipv6-addr": "ip", "email-addr": "email",
               "x-mailgateway-phone-number": "phone"}
_MISP_KINDS = {"url": "url", "domain": "domain", "ip-dst": "ip", "email-src": "email", "md5": "hash", "sha1": "hash",
               "sha256": "hash", "sha512": "hash", "vulnerability": "cve", "phone-number": "phone"}


class NetworkRefused(AssertionError):
    pass


@contextmanager
def offline() -> Iterator[None]:
    def refuse(*_a: Any, **_k: Any) -> Any:
        raise NetworkRefused("stix2-validator tried to fetch a schema over the network")

    with mock.patch("requests.sessions.Session.request", refuse), mock.patch("requests.get", refuse):
        yield


def validate_stix(data: bytes) -> dict[str, Any]:
    """The bundle, after stix2-validator strict (2.1) found no error and no warning, and stix2 loaded it."""
    import stix2
    from stix2validator import ValidationOptions, validate_string

    with offline():
        result = validate_string(data.decode(), ValidationOptions(version="2.1", strict=True))
    problems = [str(e) for e in result.errors] + [str(w) for w in result.warnings]
    assert result.is_valid and not problems, problems
    loaded = stix2.parse(data.decode(), allow_custom=True)  # the phone SCO is defined by an extension
    assert loaded.type == "bundle"
    bundle: dict[str, Any] = json.loads(data)
    return bundle


def stix_values(bundle: dict[str, Any]) -> set[tuple[str, str]]:
    """(kind, value) of the bundle's observables and vulnerabilities."""
    found: set[tuple[str, str]] = set()
    for obj in bundle["objects"]:
        if obj["type"] in _STIX_KINDS:
            found.add((_STIX_KINDS[obj["type"]], obj["value"]))
        elif obj["type"] == "file":
            found.update(("hash", h) for h in obj["hashes"].values())
        elif obj["type"] == "vulnerability":
            found.add(("cve", obj["name"]))
    return found


def load_misp(data: bytes) -> Any:
    from pymisp import MISPEvent

    event = MISPEvent()
    event.load(data.decode())
    return event


def misp_values(event: Any) -> set[tuple[str, str]]:
    return {(_MISP_KINDS[a.type], a.value) for a in event.attributes}


def csv_values(data: bytes) -> set[tuple[str, str]]:
    rows = list(csv.reader(io.StringIO(data.decode("utf-8-sig")), delimiter=";"))
    assert rows[0] == ["type", "value", "comment"]
    return {(_MISP_KINDS[t], csv_value(v)) for t, v, _c in rows[1:]}
