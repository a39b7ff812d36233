"""Structured logs: JSON lines off a terminal, text on one, case_ref/message_id bound by context."""

from __future__ import annotations

import asyncio
import io
import json
import logging
from collections.abc import Iterator

import pytest

from mailgateway.logs import log_context, setup_logging
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
