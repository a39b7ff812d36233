"""Structured logging with the standard library (docs/operations.md: observability).

* ``setup_logging(settings.logging)`` configures the root logger once, at the edge (CLI, daemon):
  JSON Lines on stderr when stderr is not a terminal (journald, a container, a file), readable text
  when it is; ``[logging] format = "json" | "text"`` forces one.
* ``log_context(case_ref=..., message_id=...)`` binds fields to every record emitted inside the
  ``with`` block, in this thread or task (a :mod:`contextvars` variable, so concurrent asyncio tasks
  and worker threads each see their own). :class:`ContextFilter` copies them onto the records, so
  every line concerning a case carries its reference and the Message-ID being handled.

Records may also carry fields directly: ``log.info("sent", extra={"case_ref": ref})``.

* :class:`RepeatLimiter` (docs/guarantees.md) caps repeated warnings and errors: the same logger, level and
  message template (``log.warning("%r too many commands", peer)`` is one template whatever the peer) pass
  ``limit`` times per interval; the rest are counted and reported as one "suppressed N similar
  records" line, so a flood of bad clients cannot fill the journal (1,000 bad connections wrote
  70 MB in 35 s). INFO and DEBUG records are not limited: INFO is one line per stored message or
  action, which operators need; a record logged with ``extra=UNLIMITED`` always passes.
"""

from __future__ import annotations

import contextvars
import json
import logging
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any, TextIO

from mailgateway.settings import LoggingSettings

__all__ = [
    "CONTEXT_FIELDS",
    "UNLIMITED",
    "ContextFilter",
    "JsonFormatter",
    "RepeatLimiter",
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


# ``extra=UNLIMITED``: a record the repeat limiter always lets through (underscore: not printed).
UNLIMITED: Mapping[str, Any] = MappingProxyType({"_unlimited": True})


class RepeatLimiter(logging.Filter):
    """At most ``limit`` records per (logger, level, template) and ``interval`` seconds, for records
    at ``min_level`` and above.

    The first record of a key opens a window; records beyond ``limit`` in that window are
    dropped and counted. When the window has ended, the count is reported once, as its own record
    at the same level, before the next record of any key (or at the next :meth:`flush`). The
    number of keys is bounded: when ``max_keys`` are tracked, windows that ended are reported and
    forgotten, and a new key beyond that is limited under one shared overflow key.
    """

    OVERFLOW = ("mailgateway.logs", logging.WARNING, "<too many distinct log templates>")

    def __init__(self, emit: Callable[[logging.LogRecord], object], limit: int = 20, interval: float = 60.0,
                 max_keys: int = 1000, clock: Callable[[], float] = time.monotonic,
                 min_level: int = logging.WARNING) -> None:
        super().__init__()
        self.min_level = min_level
        self.emit = emit
        self.limit = limit
        self.interval = interval
        self.max_keys = max_keys
        self.clock = clock
        self._lock = threading.Lock()
        # key -> [window start, records seen in the window]
        self._windows: dict[tuple[str, int, str], list[float]] = {}
        self._next_sweep = 0.0

    @staticmethod
    def _key(record: logging.LogRecord) -> tuple[str, int, str]:
        return record.name, record.levelno, str(record.msg)

    def filter(self, record: logging.LogRecord) -> bool:
        if self.limit <= 0 or record.levelno < self.min_level or getattr(record, "_unlimited", False):
            return True
        now = self.clock()
        with self._lock:
            ended = self._sweep(now) if now >= self._next_sweep else []
            key = self._key(record)
            window = self._windows.get(key)
            if window is not None and now - window[0] >= self.interval:
                ended.append((key, self._windows.pop(key)))
                window = None
            if window is None:
                if len(self._windows) >= self.max_keys:
                    key = self.OVERFLOW
                    window = self._windows.setdefault(key, [now, 0])
                else:
                    window = self._windows[key] = [now, 0]
            window[1] += 1
            allowed = window[1] <= self.limit
        # Outside the lock: emitting a summary runs this filter again.
        for k, (start, seen) in ended:
            self._report(k, int(seen) - self.limit, now - start)
        return allowed

    def _sweep(self, now: float) -> list[tuple[tuple[str, int, str], list[float]]]:
        """Windows that ended (called under the lock, at most once per second)."""
        self._next_sweep = now + min(1.0, self.interval)
        done = [k for k, (start, _) in self._windows.items() if now - start >= self.interval]
        return [(k, self._windows.pop(k)) for k in done]

    def flush(self) -> None:
        """Report every window's suppressed count now (at shutdown, or in tests)."""
        now = self.clock()
        with self._lock:
            ended = list(self._windows.items())
            self._windows.clear()
        for k, (start, seen) in ended:
            self._report(k, int(seen) - self.limit, now - start)

    def _report(self, key: tuple[str, int, str], suppressed: int, seconds: float) -> None:
        if suppressed <= 0:
            return
        name, level, template = key
        record = logging.LogRecord("mailgateway.logs", level, __file__, 0,
                                   "suppressed %d similar log records in %.0f s (%s: %.200s)",
                                   (suppressed, seconds, name, template), None)
        record._unlimited = True
        record.suppressed = suppressed
        self.emit(record)


def _extra(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in vars(record).items() if k not in _RESERVED and not k.startswith("_")}


# One encoder for every line (``json.dumps`` with options builds a new one per call); default=str:
# a stray datetime or Path in ``extra`` must not lose the line.
_JSON = json.JSONEncoder(ensure_ascii=False, default=str)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts (UTC, RFC 3339), level, logger, msg, bound fields, exc.

    Cheap enough for one line per accepted message (intake/smtp.py): the timestamp's date and time
    are formatted once per second, the encoder is built once."""

    def __init__(self) -> None:
        super().__init__()
        self._second = -1
        self._prefix = ""

    def _timestamp(self, created: float) -> str:
        second = int(created)
        if second != self._second:  # a race between threads only formats the same second twice
            self._prefix = datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%S")
            self._second = second
        return f"{self._prefix}.{int((created - second) * 1000):03d}+00:00"

    def format(self, record: logging.LogRecord) -> str:
        obj: dict[str, Any] = {
            "ts": self._timestamp(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        obj.update(_extra(record))
        if record.exc_info:
            obj["exc"] = self.formatException(record.exc_info)
        if record.stack_info:
            obj["stack"] = self.formatStack(record.stack_info)
        return _JSON.encode(obj)


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


def make_handler(fmt: str = "auto", stream: TextIO | None = None, repeat_limit: int = 0,
                 repeat_interval: float = 60.0) -> logging.Handler:
    stream = stream if stream is not None else sys.stderr
    if fmt == "auto":
        isatty = getattr(stream, "isatty", None)
        fmt = "text" if isatty is not None and isatty() else "json"
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    if repeat_limit > 0:
        handler.addFilter(RepeatLimiter(handler.handle, repeat_limit, repeat_interval))
    handler.addFilter(ContextFilter())
    handler.set_name("mailgateway")
    return handler


def setup_logging(settings: LoggingSettings | None = None, stream: TextIO | None = None) -> logging.Handler:
    """Configure the root logger (idempotent: replaces the handler a previous call installed)."""
    settings = settings or LoggingSettings()
    root = logging.getLogger()
    for old in [h for h in root.handlers if h.get_name() == "mailgateway"]:
        root.removeHandler(old)
    handler = make_handler(settings.format, stream, settings.repeat_limit, settings.repeat_interval_seconds)
    root.addHandler(handler)
    root.setLevel(settings.level.upper())
    # Library chatter at INFO (one line per SMTP command, per SQL statement) drowns the journal.
    for noisy in ("mail.log", "aiosmtpd", "imapclient", "apscheduler", "alembic", "sqlalchemy"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
    # aiosmtpd's warnings are about clients (unknown commands, too many of them, bad PROXY
    # headers): a scanner makes one per line it sends. Our handler logs what matters.
    logging.getLogger("mail.log").setLevel(max(logging.ERROR, root.level))
    # dkimpy logs every signature it cannot check at ERROR; the sender verdict already records
    # it on the message and its case, so the journal only needs our own line.
    logging.getLogger("dkimpy").setLevel(logging.CRITICAL)
    return handler
