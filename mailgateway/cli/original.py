"""``mailgateway cases original REF [--out FILE]``: the message that opened a case, byte for byte.

What a staff notification could not carry (too large for the relay, or over ``[outbound]
staff_attachment_max_bytes``). The bytes are the ones accepted (never re-serialised), written to
stdout or to FILE (created with mode 0600: it is personal data). Unknown case: exit 2; original
purged by retention: exit 1.
"""

from __future__ import annotations

import argparse
import os
import sys

from mailgateway.cli.common import case_by_reference, database, write_private
from mailgateway.settings import Settings


def run(args: argparse.Namespace, settings: Settings) -> int:
    from sqlalchemy import select

    from mailgateway.store.engine import reading
    from mailgateway.store.models import InboundMessage

    with database(settings) as factory, reading(factory) as session:
        reference, case = case_by_reference(session, args.ref)
        if case is None:
            print(f"dossier inconnu : {args.ref}", file=sys.stderr)
            return 2
        raw = session.scalar(select(InboundMessage.raw).where(InboundMessage.case_id == case.id)
                             .order_by(InboundMessage.id).limit(1))
    if not raw:
        print(f"message d'origine de {reference} non conservé (purgé par la rétention)", file=sys.stderr)
        return 1
    if args.out and args.out != "-":
        write_private(args.out, raw)
        print(f"{len(raw)} octets écrits dans {args.out}", file=sys.stderr)
        return 0
    try:
        sys.stdout.buffer.write(raw)
        sys.stdout.buffer.flush()
    except BrokenPipeError:  # « | head »: the reader left, nothing to report
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    return 0
