"""Structured logs: JSON lines off a terminal, text on one, case_ref/message_id bound by context."""

from __future__ import annotations

import asyncio
import io
import json
import logging
from collections.abc import Iterator

import pytest

from mailgateway.logs import UNLIMITED, RepeatLimiter, log_context, setup_logging
from mailgateway.settings import LoggingSettings


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture
def restore_root() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for h in list(root.handlers):
        if h not in handlers:
            root.removeHandler(h)
    root.setLevel(level)


def _lines(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_json_lines_carry_case_ref_and_message_id_bound_by_context(restore_root: None) -> None:
    stream = io.StringIO()  # not a terminal: "auto" means JSON
    setup_logging(LoggingSettings(level="INFO", format="auto"), stream=stream)
    log = logging.getLogger("mailgateway.test")
    with log_context(case_ref="SSI-ARA-2026-0042", message_id="<m1@chu.test>"):
        log.info("acknowledgement queued")
        with log_context(outbound_id=7):
            log.warning("relay answered 451")
    log.info("outside")
    first, second, third = _lines(stream)
    assert first["msg"] == "acknowledgement queued"
    assert first["level"] == "info" and first["logger"] == "mailgateway.test"
    assert first["case_ref"] == "SSI-ARA-2026-0042" and first["message_id"] == "<m1@chu.test>"
    assert second["case_ref"] == "SSI-ARA-2026-0042" and second["outbound_id"] == 7
    assert "case_ref" not in third and "message_id" not in third
    assert str(first["ts"]).endswith("+00:00")


def test_extra_fields_and_exceptions_are_kept_in_json(restore_root: None) -> None:
    stream = io.StringIO()
    setup_logging(LoggingSettings(format="json"), stream=stream)
    log = logging.getLogger("mailgateway.test")
    try:
        raise ValueError("boom")
    except ValueError:
        log.exception("processing failed", extra={"case_ref": "SSI-PDL-2026-0001", "inbound_id": 3})
    (line,) = _lines(stream)
    assert line["case_ref"] == "SSI-PDL-2026-0001" and line["inbound_id"] == 3
    assert "ValueError: boom" in str(line["exc"])


def test_concurrent_tasks_keep_their_own_context(restore_root: None) -> None:
    stream = io.StringIO()
    setup_logging(LoggingSettings(format="json"), stream=stream)
    log = logging.getLogger("mailgateway.test")

    async def handle(ref: str) -> None:
        with log_context(case_ref=ref):
            await asyncio.sleep(0.01)
            log.info("handled")

    async def main() -> None:
        await asyncio.gather(handle("SSI-ARA-2026-0001"), handle("SSI-ARA-2026-0002"))

    asyncio.run(main())
    assert sorted(str(line["case_ref"]) for line in _lines(stream)) == ["SSI-ARA-2026-0001", "SSI-ARA-2026-0002"]


def test_text_on_a_terminal_shows_the_fields(restore_root: None) -> None:
    stream = _Tty()
    setup_logging(LoggingSettings(format="auto"), stream=stream)
    with log_context(case_ref="SSI-ARA-2026-0042", message_id=None):
        logging.getLogger("mailgateway.test").info("hello")
    text = stream.getvalue()
    assert "mailgateway.test: hello [case_ref=SSI-ARA-2026-0042]" in text
    assert not text.lstrip().startswith("{")


def test_level_filters_and_setup_is_idempotent(restore_root: None) -> None:
    stream = io.StringIO()
    setup_logging(LoggingSettings(level="WARNING", format="json"), stream=io.StringIO())
    setup_logging(LoggingSettings(level="WARNING", format="json"), stream=stream)
    log = logging.getLogger("mailgateway.test")
    log.info("hidden")
    log.warning("shown")
    assert [line["msg"] for line in _lines(stream)] == ["shown"]
    assert sum(1 for h in logging.getLogger().handlers if h.get_name() == "mailgateway") == 1


def test_a_flood_of_one_template_is_limited_and_summarised(restore_root: None) -> None:
    """~1,000 bad connections made the log grow 70 MB in 35 s. The same template with
    other arguments (another peer) counts as the same record."""
    stream = io.StringIO()
    handler = setup_logging(LoggingSettings(format="json", repeat_limit=5, repeat_interval_seconds=60.0),
                            stream=stream)
    log = logging.getLogger("mailgateway.intake.smtp")
    for n in range(1000):
        log.warning("%r sent a bad command", ("192.0.2.1", 40000 + n))
    log.warning("another template")
    log.error("queued as %s", "ABC", extra=UNLIMITED)
    for n in range(30):
        log.info("message %d stored", n)  # INFO: one line per stored message, never limited
    lines = _lines(stream)
    assert len(lines) == 37
    assert [line["msg"] for line in lines[5:7]] == ["another template", "queued as ABC"]
    limiter = next(f for f in handler.filters if isinstance(f, RepeatLimiter))
    limiter.flush()
    summary = _lines(stream)[-1]
    assert summary["level"] == "warning" and summary["suppressed"] == 995
    assert "suppressed 995 similar log records" in str(summary["msg"])
    assert "mailgateway.intake.smtp" in str(summary["msg"])


def test_the_count_is_reported_when_the_window_ends_and_records_pass_again() -> None:
    now = [0.0]
    emitted: list[logging.LogRecord] = []
    limiter = RepeatLimiter(emitted.append, limit=2, interval=10.0, clock=lambda: now[0])

    def record(msg: str, *args: object) -> logging.LogRecord:
        return logging.LogRecord("mailgateway.test", logging.ERROR, __file__, 1, msg, args, None)

    passed = [limiter.filter(record("boom %d", n)) for n in range(10)]
    assert passed == [True, True] + [False] * 8 and emitted == []
    now[0] = 10.5  # the window ended: the next record of any template reports it, then passes
    assert limiter.filter(record("other"))
    assert [r.getMessage().split(" (")[0] for r in emitted] == ["suppressed 8 similar log records in 10 s"]
    assert emitted[0].levelno == logging.ERROR
    assert limiter.filter(record("boom %d", 11))
    # A limit of 0 lets everything through.
    unlimited = RepeatLimiter(emitted.append, limit=0)
    assert all(unlimited.filter(record("boom %d", n)) for n in range(100))


def test_distinct_templates_are_bounded() -> None:
    limiter = RepeatLimiter(lambda _r: None, limit=1, interval=60.0, max_keys=10)
    results = [limiter.filter(logging.LogRecord("x", logging.WARNING, __file__, 1, f"template {n}", None, None))
               for n in range(100)]
    assert results[:10] == [True] * 10 and results.count(True) == 11  # then one shared overflow key
