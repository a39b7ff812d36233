"""Deliver a test gateway's outbox as the daemon's sender does, into a Maildir, and read it back."""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path
from typing import Any

from mailgateway.dispatch.sender import Sender
from mailgateway.dispatch.transport import MaildirTransport
from tests.support.casegateway import Gateway


def send_all(gw: Gateway, **sender: Any) -> list[tuple[str, str, bytes]]:
    """Every due outbox row of ``gw`` sent by a ``Sender`` (``sender``: its keyword arguments)
    to a fresh Maildir: (return path, recipient, bytes as sent), in delivery order."""
    with tempfile.TemporaryDirectory(prefix="mg-sent-") as tmp:
        root = Path(tmp)
        asyncio.run(Sender(gw.app.settings, gw.app.factory, gw.clock, "test-sender",
                           transport=MaildirTransport(root), **sender).flush())
        sent = []
        for path in sorted((root / "new").glob("*")) if (root / "new").exists() else []:
            # MaildirTransport prepends Return-Path and Delivered-To, as a local delivery agent.
            return_path, delivered_to, raw = path.read_bytes().split(b"\r\n", 2)
            sent.append((return_path.decode().partition("<")[2].rstrip(">"),
                         delivered_to.decode().partition(": ")[2], raw))
        return sent
