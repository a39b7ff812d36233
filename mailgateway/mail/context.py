"""What the pure analysis functions may know about the world, injected by the caller.

``mail/`` never touches the database or the network: processing builds an ``AnalysisContext``
with lookups backed by the store, ``parse`` builds one backed by the configuration only.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mailgateway.settings import Settings


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


def _no_subjects(_message_ids: Sequence[str]) -> dict[str, tuple[str, bool]]:
    return {}


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
    # Message-IDs (without <>) -> (Subject, sent by the gateway) of each message received or sent
    # under it: a command beginning a reply's Subject counts only in answer to a mail of ours.
    thread_subjects: Callable[[Sequence[str]], dict[str, tuple[str, bool]]] = _no_subjects
    # Site additions to the label tables (settings.labels).
    extra_field_labels: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    extra_incident_types: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    extra_categories: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    extra_severities: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    extra_alert_targets: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    extra_courtesy: tuple[str, ...] = ()
    radiotherapy_finess: frozenset[str] = frozenset()
    # Region used when the recipient does not name one (single-region sites).
    default_region: str | None = None


def loop_token_for(bounce_domain: str) -> str:
    """Value of our X-Mailgateway-Loop header: names this installation by its bounce domain."""
    return f"mailgateway:{bounce_domain}"


def build_context(
    settings: Settings,
    thread_lookup: Callable[[Sequence[str]], str | None] = _no_thread,
    establishment_lookup: Callable[[str], EstablishmentInfo | None] = _no_establishment,
    thread_subjects: Callable[[Sequence[str]], dict[str, tuple[str, bool]]] = _no_subjects,
) -> AnalysisContext:
    """The analysis context of a configuration (lookups injected by the caller)."""
    domain = settings.bounce_domain.lower()
    local = settings.outbound.bounce_local_part or "bounces"
    regions = {r.address.lower(): r.code for r in settings.regions if r.address}
    own = set(regions)
    own.update({f"{local}@{domain}", f"noreply@{domain}", f"ne-pas-repondre@{domain}"})
    if settings.dkim and settings.dkim.domain:
        own.add(f"noreply@{settings.dkim.domain.lower()}")
    staff: dict[str, set[str]] = {}
    for member in settings.staff:
        staff.setdefault(member.address.lower(), set()).add(member.region)
    labels = settings.labels
    return AnalysisContext(
        region_addresses=regions,
        own_addresses=frozenset(own),
        bounce_domain=domain,
        bounce_local_part=local,
        loop_token=loop_token_for(domain),
        staff={address: frozenset(codes) for address, codes in staff.items()},
        acss_domains=tuple(d.lower() for d in settings.authentication.acss_domains),
        thread_lookup=thread_lookup,
        establishment_lookup=establishment_lookup,
        thread_subjects=thread_subjects,
        extra_field_labels=dict(labels.fields),
        extra_incident_types=dict(labels.incident_types),
        extra_categories=dict(labels.categories),
        extra_severities=dict(labels.severities),
        extra_alert_targets=dict(labels.alert_targets),
        extra_courtesy=tuple(labels.courtesy),
        radiotherapy_finess=frozenset(labels.radiotherapy_finess),
        default_region=settings.regions[0].code if len(settings.regions) == 1 else None,
    )
