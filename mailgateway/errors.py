"""The one exception root of mailgateway.

::

    MailgatewayError
    ├── ConfigError            bad configuration; carries (key path, problem) pairs; exit 2
    ├── InputError             bad operator input on the command line; exit 2
    ├── SchemaError            the database's schema cannot be migrated by this code; exit 2
    ├── ParseError             a message could not be understood (it is quarantined, never dropped)
    ├── AuthenticationError    a signature or header could not be checked at all
    ├── TemplateError          a template failed to load or render
    ├── PolicyRefusal          an outbound message is refused by policy (TLP, loop, rate cap)
    └── DeliveryError          a delivery attempt failed
        ├── TemporaryDeliveryError   4xx, timeout, connection refused: retry with backoff
        └── PermanentDeliveryError   5xx: final, recorded as a bounce against the recipient

Library errors are translated at the boundary with ``raise ... from exc``.
"""

from __future__ import annotations

from collections.abc import Sequence


class MailgatewayError(Exception):
    """Root of every error raised on purpose by mailgateway."""


class ConfigError(MailgatewayError):
    """Configuration problems, each as ``(key path, message)``."""

    def __init__(self, problems: Sequence[tuple[str, str]]) -> None:
        self.problems = list(problems)
        super().__init__("; ".join(f"{path}: {msg}" for path, msg in self.problems))


class InputError(MailgatewayError):
    """Bad input given by an operator (unknown case, malformed option...)."""


class SchemaError(MailgatewayError):
    """The database is stamped with a revision this code cannot migrate from (a newer version's,
    several at once, none of ours)."""


class ParseError(MailgatewayError):
    """A message could not be understood."""


class AuthenticationError(MailgatewayError):
    """Authentication could not be evaluated (as opposed to: evaluated and failed)."""


class TemplateError(MailgatewayError):
    """A template failed to load or to render."""


class PolicyRefusal(MailgatewayError):
    """An outbound message was refused by policy; ``reason`` is recorded on the case."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


class DeliveryError(MailgatewayError):
    """A delivery attempt failed for ``recipients`` with the relay's ``code`` and ``answer``."""

    def __init__(self, answer: str, code: int | None = None, recipients: Sequence[str] = ()) -> None:
        self.answer = answer
        self.code = code
        self.recipients = list(recipients)
        super().__init__(f"{code or ''} {answer}".strip())


class TemporaryDeliveryError(DeliveryError):
    """Retry later (RFC 5321 §4.2.1: 4yz replies, and network failures)."""


class PermanentDeliveryError(DeliveryError):
    """Do not retry (RFC 5321 §4.2.1: 5yz replies)."""
