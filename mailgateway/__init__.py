"""mailgateway — the mail gateway of the ARS SSI mailboxes.

Declarations of serious IT-security incidents (CSP art. L.1111-8-2, décret 2016-1214) and
ACSS/CERT Santé alerts come in by IMAP or SMTP, become cases, and are answered with templated,
DKIM-signed mail. See README.md for the tour and docs/architecture.md for the layers and the contracts.
"""

__version__ = "0.1.0"
__all__ = ["__version__"]
