"""A legitimate message that is slow to analyse (docs/guarantees.md, bounded work).

A ≈20 MB declaration followed by the server log the RSSI pasted, with a valid DKIM signature over
its whole body (c=relaxed). RFC 6376 §3.7: the body hash covers every line, so verifying it costs
seconds of canonicalisation, whatever bounds the parsers put on headers and parts.
"""

from __future__ import annotations

import functools

from tests.support.dkim import dkimpy_sign, rsa_key

# The signing key of chu.test; publish it with ``zone(SLOW_KEY)`` in [authentication.static_keys].
SLOW_KEY = rsa_key(selector="sel", domain="chu.test")
SLOW_MESSAGE_ID = "journal@chu.test"


@functools.cache
def large_signed_declaration(lines: int = 300_000, to: str = "ssi-ara@ars.test") -> bytes:
    log_lines = "".join(f"2026-11-27 08:{i % 60:02d} srv-{i % 97} chiffrement   du fichier  {i}.docx\r\n"
                        for i in range(lines))
    message = (
        f"From: dsi@chu.test\r\nTo: {to}\r\nSubject: Incident : journal complet\r\n"
        f"Message-ID: <{SLOW_MESSAGE_ID}>\r\nDate: Fri, 27 Nov 2026 09:00:00 +0100\r\n"
        "Content-Type: text/plain; charset=utf-8\r\n\r\n"
        "Numéro FINESS : 690781810\r\nType d'incident : rançongiciel\r\n\r\nJournal du serveur :\r\n"
        + log_lines
    ).encode()
    return dkimpy_sign(message, SLOW_KEY) + message
