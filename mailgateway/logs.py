"""Structured logging with the standard library (issue 10: observability).

* ``setup_logging(settings.logging)`` configures the root logger once, at the edge (CLI, daemon):
  JSON Lines on stderr when stderr is not a terminal (journald, a container, a file), readable text
  when it is; ``[logging] format = "json" | "text"`` forces one.
* ``log_context(case_ref=..., message_id=...)`` binds fields to every record emitted inside the
  ``with`` block, in this thread or task (a :mod:`contextvars` variable, so concurrent asyncio tasks
  and worker threads each see their own). :class:`ContextFilter` copies them onto the records, so
  every line concerning a case carries its reference and the Message-ID being handled.

Records may also carry fields directly: ``log.info("sent", extra={"case_ref": ref})``.
"""

from __future__ import annotations

import contextvars
import json
import logging
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any, TextIO

from mailgateway.settings import LoggingSettings

__all__ = [
    "CONTEXT_FIELDS",
    "ContextFilter",
    "JsonFormatter",
    "TextFormatter",
    "bind",
    "log_context",
    "setup_logging",
]

# Fields a record may carry, in the order the text format prints them.
CONTEXT_FIELDS = ("case_ref", "message_id", "inbound_id", "outbound_id", "region", "mailbox", "recipient")

_context: contextvars.ContextVar[Mapping[str, Any]] = contextvars.ContextVar(
    "mailgateway_log_context", default=MappingProxyType({}))

# LogRecord attributes that are not user data (everything else came from ``extra=``).
_RESERVED = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime",
                                                                                 "taskName"}


@contextmanager
def log_context(**fields: Any) -> Iterator[None]:
    """Bind ``fields`` (``case_ref``, ``message_id``...) to every record logged inside the block.

    Nested blocks add to (and may override) the outer fields; ``None`` values are ignored so a
    caller can pass ``case_ref=facts.case_ref`` without checking it first.
    """
    token = _context.set({**_context.get(), **{k: v for k, v in fields.items() if v is not None}})
    try:
        yield
    finally:
        _context.reset(token)


def bind(**fields: Any) -> None:
    """Add fields to the current context until it ends (e.g. once a case reference is known)."""
    _context.set({**_context.get(), **{k: v for k, v in fields.items() if v is not None}})


def current_context() -> Mapping[str, Any]:
    return _context.get()


class ContextFilter(logging.Filter):
    """Copy the bound context onto each record (attached to handlers, so every logger benefits)."""

    def filter(self, record: logging.LogRecord) -> bool:
        for key, value in _context.get().items():
            if not hasattr(record, key):
                setattr(record, key, value)
        return True


def _extra(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in vars(record).items() if k not in _RESERVED and not k.startswith("_")}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts (UTC, RFC 3339), level, logger, msg, bound fields, exc."""

    def format(self, record: logging.LogRecord) -> str:
        obj: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        obj.update(_extra(record))
        if record.exc_info:
            obj["exc"] = self.formatException(record.exc_info)
        if record.stack_info:
            obj["stack"] = self.formatStack(record.stack_info)
        # default=str: a stray datetime or Path in ``extra`` must not lose the line.
        return json.dumps(obj, ensure_ascii=False, default=str)


class TextFormatter(logging.Formatter):
    """``HH:MM:SS level logger: message [case_ref=... message_id=...]`` for a terminal."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s: %(message)s", "%H:%M:%S")

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        extra = _extra(record)
        ordered = [k for k in CONTEXT_FIELDS if k in extra]
        ordered += sorted(k for k in extra if k not in CONTEXT_FIELDS)
        if ordered:
            fields = " ".join(f"{k}={extra[k]}" for k in ordered)
            head, sep, tail = text.partition("\n")  # keep a traceback below the fields
            text = f"{head} [{fields}]{sep}{tail}"
        return text


def make_handler(fmt: str = "auto", stream: TextIO | None = None) -> logging.Handler:
    stream = stream if stream is not None else sys.stderr
    if fmt == "auto":
        isatty = getattr(stream, "isatty", None)
        fmt = "text" if isatty is not None and isatty() else "json"
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    handler.addFilter(ContextFilter())
    handler.set_name("mailgateway")
    return handler


def setup_logging(settings: LoggingSettings | None = None, stream: TextIO | None = None) -> logging.Handler:
    """Configure the root logger (idempotent: replaces the handler a previous call installed)."""
    settings = settings or LoggingSettings()
    root = logging.getLogger()
    for old in [h for h in root.handlers if h.get_name() == "mailgateway"]:
        root.removeHandler(old)
    handler = make_handler(settings.format, stream)
    root.addHandler(handler)
    root.setLevel(settings.level.upper())
    # Library chatter at INFO (one line per SMTP command, per SQL statement) drowns the journal.
    for noisy in ("mail.log", "aiosmtpd", "imapclient", "apscheduler", "alembic", "sqlalchemy"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
    # dkimpy logs every signature it cannot check at ERROR; the sender verdict already records
    # it on the message and its case, so the journal only needs our own line.
    logging.getLogger("dkimpy").setLevel(logging.CRITICAL)
    return handler
