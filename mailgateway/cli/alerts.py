"""``mailgateway alerts export REF --format stix|misp|csv [--out FILE]``: an alert case's indicators.

The same files as those attached to the alert's relay (bulletins/indicator_files.py,
docs/indicators.md), for staff to load into their own tools. The markings are the label the alert
relays under (mail/tlp.py: unknown or absent is AMBER+STRICT); a TLP:RED alert exports marked RED,
for the agency's own use. FILE is created with mode 0600. Unknown case or not an alert: exit 2; an
alert that was not authenticated (a forged « ACSS » sender) only with ``--unauthenticated``.
"""

from __future__ import annotations

import argparse
import os
import sys

from mailgateway.cli.common import case_by_reference, database, write_private
from mailgateway.settings import Settings


def run(args: argparse.Namespace, settings: Settings) -> int:

    from mailgateway.bulletins.indicator_files import case_set
    from mailgateway.dispatch.indicators_out import build
    from mailgateway.store.engine import reading

    with database(settings) as factory, reading(factory) as session:
        reference, case = case_by_reference(session, args.ref)
        if case is None:
            print(f"dossier inconnu : {args.ref}", file=sys.stderr)
            return 2
        if case.kind != "alert":
            print(f"{reference} n'est pas une alerte", file=sys.stderr)
            return 2
        if not ((case.fields or {}).get("alert") or {}).get("authentic") and not args.unauthenticated:
            # A forged « ACSS » alert's values, exported as indicators of malicious activity under the
            # agency's name, could have a tool block legitimate domains (outside tester): only when asked.
            print(f"{reference} : alerte non authentifiée : ses indicateurs ne sont exportés qu'avec "
                  "--unauthenticated (ils peuvent désigner à tort des domaines ou adresses légitimes)", file=sys.stderr)
            return 2
        found = case_set(settings, session, case)
    data = build(found, args.format)
    if args.out and args.out != "-":
        write_private(args.out, data)
        print(f"{len(found.indicators)} indicateur(s), TLP:{found.tlp}, {len(data)} octets écrits dans {args.out}",
              file=sys.stderr)
        return 0
    try:
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
    except BrokenPipeError:  # « | head »: the reader left, nothing to report
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    return 0
