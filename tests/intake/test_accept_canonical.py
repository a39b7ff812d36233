"""Accept stores one normalised form (docs/guarantees.md, "one view"): line endings are made CRLF once, at
accept, for every source, and that is what is hashed (an LF copy of a stored CRLF message is a
duplicate, not a second message)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy.orm import Session, sessionmaker

from mailgateway.intake.accept import accept_in, content_hash
from mailgateway.store.engine import transaction
from mailgateway.store.models import InboundMessage
from tests.support.db import migrated

NOW = datetime(2026, 11, 27, 9, 0, tzinfo=UTC)


@pytest.fixture
def factory(tmp_path: Path) -> Iterator[sessionmaker[Session]]:
    with migrated(f"sqlite:///{tmp_path / 'accept.db'}") as f:
        yield f


@pytest.mark.parametrize("source", ["smtp", "imap", "cli"])
def test_bare_lf_is_stored_as_crlf_and_bare_cr_in_the_body_is_kept(
    factory: sessionmaker[Session], source: str
) -> None:
    with transaction(factory) as s:
        lf = b"\xef\xbb\xbfSubject: x\nFrom: a@b.test\n\nline\rstill one line\n"
        first = accept_in(s, lf, source=source, now=NOW)
        again = accept_in(s, b"Subject: x\r\nFrom: a@b.test\r\n\r\nline\rstill one line\r\n", source=source, now=NOW)
    assert again.duplicate and again.inbound_id == first.inbound_id
    with factory() as s:
        row = s.get(InboundMessage, first.inbound_id)
        assert row is not None
        assert row.raw == b"Subject: x\r\nFrom: a@b.test\r\n\r\nline\rstill one line\r\n"
        assert row.sha256 == content_hash(row.raw) and row.size == len(row.raw)
