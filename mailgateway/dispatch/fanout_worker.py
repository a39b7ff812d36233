"""Bulletin fan-out: what the signing processes run (compose and DKIM-sign a batch).

Composing (templates, MIME) and signing a bulletin's message costs a few milliseconds of Python
and OpenSSL, holding the GIL; the daemon's sender and intake share that GIL. So a fan-out hands
whole batches of ``MailSpec`` to the processes of a ``SigningPool`` (dispatch/dkim.py), which
compose them with the same composer as this process — rebuilt there from a ``ComposerRecipe``:
templates, Message-ID secret, loop token, and the worker's copy of the DKIM keys — and the
instant this process gives (``Date``). A composer that cannot be rebuilt faithfully (a test
double, another renderer) stays here (``ComposerRecipe.of`` is None).

This module is what a worker imports (pickled tasks name their module): only the composer, the
templates and the signer — no database layer — so a worker starts in a fraction of a second.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from mailgateway.clock import FixedClock
from mailgateway.dispatch.compose import Composer, MailSpec
from mailgateway.dispatch.dkim import DkimSigner, sign_each, worker_signer
from mailgateway.dispatch.render import Renderer
from mailgateway.errors import PolicyRefusal

__all__ = ["ComposerRecipe", "Outcome", "compose_each", "compose_in_worker", "sign_in_worker"]

# What composing one spec gives: (final bytes, Message-ID), or why the mail is refused (French).
Outcome = tuple[bytes, str] | str


@dataclass(frozen=True)
class ComposerRecipe:
    """How to build, in a worker process, the composer of this one (its signer: the worker's)."""

    templates_dir: str | None
    domain: str
    loop_token: str
    id_secret: bytes

    @classmethod
    def of(cls, composer: Composer, templates_dir: str | None) -> ComposerRecipe | None:
        """``templates_dir``: what the composer's Renderer was built with (``[outbound] templates_dir``).
        None when the composer is not the plain one, or signs with anything but a DkimSigner."""
        if type(composer) is not Composer or type(composer.renderer) is not Renderer or "compose" in vars(composer):
            return None
        if not isinstance(composer.signer, DkimSigner):
            return None
        return cls(templates_dir, composer.domain, composer.loop_token, composer.id_secret)


_WORKER_COMPOSERS: dict[ComposerRecipe, Composer] = {}


def compose_in_worker(recipe: ComposerRecipe, now: datetime, specs: list[MailSpec]) -> list[Outcome]:
    """In a SigningPool worker: compose and sign ``specs`` as of ``now`` (their Date)."""
    composer = _WORKER_COMPOSERS.get(recipe)
    if composer is None:
        composer = _WORKER_COMPOSERS[recipe] = Composer(
            Renderer(recipe.templates_dir), worker_signer(), FixedClock(now), recipe.domain, recipe.loop_token,
            id_secret=recipe.id_secret)
    composer.clock = FixedClock(now)
    return compose_each(composer, specs)


def sign_in_worker(raws: list[bytes], message_ids: list[str]) -> list[Outcome]:
    """In a SigningPool worker: sign messages composed (unsigned) by the parent."""
    signatures = sign_each(worker_signer(), raws)
    return [s if isinstance(s, str) else (s + raw, mid) for s, raw, mid in zip(signatures, raws, message_ids,
                                                                                 strict=True)]


def compose_each(composer: Composer, specs: Sequence[MailSpec]) -> list[Outcome]:
    out: list[Outcome] = []
    for spec in specs:
        try:
            composed = composer.compose(spec)
        except PolicyRefusal as exc:  # e.g. cannot be DKIM-signed: must not leave unsigned either
            out.append(exc.reason)
        else:
            out.append((composed.raw, composed.message_id))
    return out
