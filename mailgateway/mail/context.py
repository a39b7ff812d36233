"""What the pure analysis functions may know about the world, injected by the caller.

``mail/`` never touches the database or the network: processing builds an ``AnalysisContext``
with lookups backed by the store, ``parse`` builds one backed by the configuration only.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field


@dataclass(frozen=True)
class EstablishmentInfo:
    finess: str
    name: str
    category: str | None = None  # enumeration id (ETABLISSEMENT_SANTE, LBM...)
    departement: str | None = None
    region: str | None = None


def _no_thread(_message_ids: Sequence[str]) -> str | None:
    return None


def _no_establishment(_finess: str) -> EstablishmentInfo | None:
    return None


@dataclass(frozen=True)
class AnalysisContext:
    # Regional SSI address (lower-case) -> region code.
    region_addresses: Mapping[str, str] = field(default_factory=dict)
    # Every address the gateway sends from or receives bounces at (loop detection).
    own_addresses: frozenset[str] = frozenset()
    # Domain of VERP return paths: bounces+<token>@bounce_domain.
    bounce_domain: str = ""
    bounce_local_part: str = "bounces"
    # Value of our loop header (X-Mailgateway-Loop) identifying this installation.
    loop_token: str = ""
    # Staff address (lower-case) -> region codes they belong to.
    staff: Mapping[str, frozenset[str]] = field(default_factory=dict)
    acss_domains: tuple[str, ...] = ()
    # Message-IDs (without <>) of a reply's In-Reply-To/References -> case reference, if we sent one.
    thread_lookup: Callable[[Sequence[str]], str | None] = _no_thread
    establishment_lookup: Callable[[str], EstablishmentInfo | None] = _no_establishment
    # Site additions to the label tables (settings.labels).
    extra_field_labels: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    extra_incident_types: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    extra_categories: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    radiotherapy_finess: frozenset[str] = frozenset()
    # Region used when the recipient does not name one (single-region sites).
    default_region: str | None = None
