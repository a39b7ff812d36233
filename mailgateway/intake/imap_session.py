"""One IMAP connection to a regional mailbox: connect, log in, select, fetch, mark processed.

A thin layer over imapclient (synchronous) so the watcher reads as the protocol it follows.
Library and socket errors are translated to ``ImapError`` at this boundary.

Marking a message processed (the mailbox is shared with staff, docs/guarantees.md, so nothing depends on
``\\Seen``, which their clients set freely):

* ``UID MOVE`` to the processed folder when the server has MOVE (RFC 6851);
* otherwise ``UID COPY`` to the processed folder, then the keyword ``$MailgatewayTraite`` on the
  original, which stays where it is. We never set ``\\Deleted`` nor EXPUNGE: in a shared mailbox an
  expunge would also remove what staff marked deleted, and nothing we do may lose a message.
"""

from __future__ import annotations

import imaplib
import logging
import re
import select
import socket
import ssl
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import date
from typing import Any

from imapclient import IMAPClient
from imapclient.exceptions import IMAPClientError

from mailgateway.errors import MailgatewayError
from mailgateway.settings import ImapSettings

log = logging.getLogger(__name__)

# Keyword set on originals when the server cannot MOVE (RFC 3501 §2.3.2 keywords are visible to
# staff clients and survive reconnections).
PROCESSED_KEYWORD = b"$MailgatewayTraite"
# Without MOVE, the copy left in the processed folder is marked (never deleted).
QUARANTINE_KEYWORD = b"$MailgatewayQuarantaine"
# Untagged responses meaning new mail (RFC 3501 §7.3.1, §7.3.2).
_CHANGE = re.compile(rb"^\* \d+ (EXISTS|RECENT)\b")
# Messages fetched per round trip: bounds memory on a large backlog.
FETCH_BATCH = 20


class ImapError(MailgatewayError):
    """The IMAP server failed, refused or vanished; the watcher reconnects with backoff."""


@dataclass(frozen=True)
class FolderStatus:
    uidvalidity: int
    uidnext: int


# Errors of the network and of imapclient/imaplib, translated to ImapError by callers.
NETWORK_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    ssl.SSLError,
    imaplib.IMAP4.error,
    IMAPClientError,
)


def read_password(path: str) -> str:
    """Secrets come from files (systemd LoadCredential=); one trailing newline is not part of it."""
    with open(path, encoding="utf-8") as fh:
        return fh.read().rstrip("\r\n")


class ImapSession:
    """A logged-in connection with the watched folder selected."""

    def __init__(self, settings: ImapSettings, *, ssl_context: ssl.SSLContext | None = None) -> None:
        self.settings = settings
        self._ssl_context = ssl_context
        self.client: Any = None
        self.can_idle = False
        self.can_move = False

    # connection

    def open(self) -> FolderStatus:
        s = self.settings
        context = self._ssl_context or ssl.create_default_context()
        try:
            # TLS by default: implicit TLS (RFC 8314) or STARTTLS (RFC 3501 §6.2.1); plain IMAP only
            # when both are off, which settings allow for a loopback host only.
            self.client = IMAPClient(
                s.host, port=s.port, ssl=s.tls, ssl_context=context if s.tls else None,
                timeout=s.timeout_seconds,
            )  # fmt: skip
            if s.starttls and not s.tls:
                self.client.starttls(context)
            self.client.login(s.username, read_password(s.password_file))
            caps = {bytes(c).upper() for c in self.client.capabilities()}
            self.can_idle = b"IDLE" in caps
            self.can_move = b"MOVE" in caps
            self._keepalive()
            if not self.client.folder_exists(s.processed_folder):
                self.client.create_folder(s.processed_folder)
                self.client.subscribe_folder(s.processed_folder)  # so staff clients show it
            return self.select()
        except NETWORK_ERRORS as exc:
            self.abort()
            raise ImapError(f"{s.host}:{s.port}: {type(exc).__name__}: {exc}") from exc

    def _keepalive(self) -> None:
        # TCP keepalive: a peer that vanished without FIN/RST is noticed even between NOOPs.
        sock = self.client.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)

    def select(self) -> FolderStatus:
        info = self.client.select_folder(self.settings.folder)
        uidvalidity = info.get(b"UIDVALIDITY")
        uidnext = info.get(b"UIDNEXT")
        if uidvalidity is None or uidnext is None:
            status = self.client.folder_status(self.settings.folder, [b"UIDVALIDITY", b"UIDNEXT"])
            uidvalidity, uidnext = status[b"UIDVALIDITY"], status[b"UIDNEXT"]
        return FolderStatus(int(uidvalidity), int(uidnext))

    def abort(self) -> None:
        """Drop the connection without a polite LOGOUT (it may be dead already)."""
        client, self.client = self.client, None
        if client is not None:
            try:
                client.shutdown()
            except Exception:  # noqa: S110 - already broken; nothing to report
                pass

    def close(self) -> None:
        client, self.client = self.client, None
        if client is None:
            return
        try:
            client.logout()
        except Exception:
            log.debug("logout failed; dropping the connection", exc_info=True)
            try:
                client.shutdown()
            except Exception:  # noqa: S110
                pass

    # reading

    def uids_after(self, last_uid: int) -> list[int]:
        # "n:*" always matches the highest UID even when it is below n (RFC 3501 §6.4.8): filter.
        uids = self.client.search(["UID", f"{last_uid + 1}:*"])
        return sorted(u for u in uids if u > last_uid)

    def uids_since(self, since: date) -> list[int]:
        # SEARCH SINCE compares INTERNALDATE by day (RFC 3501 §6.4.4); keyword-marked originals
        # (servers without MOVE) are already processed.
        criteria: list[Any] = ["SINCE", since]
        if not self.can_move:
            criteria += ["UNKEYWORD", PROCESSED_KEYWORD]
        return sorted(self.client.search(criteria))

    def fetch(self, uids: Iterable[int]) -> dict[int, bytes]:
        """Raw bytes per UID with BODY.PEEK[] (RFC 3501 §6.4.5: PEEK never sets \\Seen)."""
        wanted = list(uids)
        if not wanted:
            return {}
        found = self.client.fetch(wanted, ["BODY.PEEK[]"])
        return {int(uid): bytes(data[b"BODY[]"]) for uid, data in found.items() if b"BODY[]" in data}

    # marking

    def mark_processed(self, uid: int) -> None:
        folder = self.settings.processed_folder
        if self.can_move:
            self.client.move([uid], folder)
        else:
            self.client.copy([uid], folder)
            self.client.add_flags([uid], [PROCESSED_KEYWORD], silent=True)

    def move_to_quarantine(self, message_ids: Sequence[str]) -> list[str]:
        """Move processed messages that processing quarantined (found by Message-ID in the
        processed folder) on to the quarantine folder, where staff see them; never deletes.
        Returns the Message-IDs found and moved. The watched folder is selected again after."""
        s = self.settings
        if not self.client.folder_exists(s.quarantine_folder):
            self.client.create_folder(s.quarantine_folder)
            self.client.subscribe_folder(s.quarantine_folder)
        moved: list[str] = []
        self.client.select_folder(s.processed_folder)
        try:
            for mid in message_ids:
                uids = self.client.search(["HEADER", "Message-ID", mid])
                if not uids:
                    continue
                if self.can_move:
                    self.client.move(uids, s.quarantine_folder)
                else:
                    self.client.copy(uids, s.quarantine_folder)
                    self.client.add_flags(uids, [QUARANTINE_KEYWORD], silent=True)
                moved.append(mid)
        finally:
            self.select()
        return moved

    # waiting

    def noop(self) -> None:
        """A round trip bounded by the socket timeout: a stuck connection raises here."""
        self.client.noop()

    def idle_start(self) -> None:
        self.client.idle()

    def idle_wait(self, timeout: float) -> bool:
        """Wait up to ``timeout`` s in IDLE (RFC 2177); True when the mailbox changed.

        Reads the untagged lines itself rather than through ``idle_check``: imapclient polls only the
        socket, so a response already read into imaplib's buffer together with ``+ idling`` (mail
        that arrived during the previous sync) would wait for the next renewal; and it returns an
        empty list on EOF, indistinguishable from a quiet timeout. Raises ImapError when the server
        said BYE or closed the connection.
        """
        imap = self.client._imap
        sock = self.client.socket()
        if not self._buffered(imap, sock):
            readable, _, _ = select.select([sock], [], [], timeout)
            if not readable:
                return False
        lines = self._drain(imap, sock)
        if not lines:
            raise ImapError("connection closed by the server during IDLE")
        changed = False
        for line in lines:
            if line.startswith(b"* BYE"):
                raise ImapError(f"server said {line.decode(errors='replace').strip()}")
            changed = changed or bool(_CHANGE.match(line))
        return changed

    def _buffered(self, imap: Any, sock: Any) -> bool:
        pending = getattr(sock, "pending", None)  # TLS records already decrypted
        if callable(pending) and pending():
            return True
        sock.setblocking(False)
        try:
            return bool(imap.file.peek(1))
        except (BlockingIOError, ssl.SSLWantReadError):
            return False
        finally:
            sock.settimeout(self.settings.timeout_seconds)

    def _drain(self, imap: Any, sock: Any) -> list[bytes]:
        """Every complete line available now, without blocking."""
        lines: list[bytes] = []
        sock.setblocking(False)
        try:
            while True:
                try:
                    lines.append(imap._get_line())
                except (BlockingIOError, ssl.SSLWantReadError, TimeoutError):
                    break
                except imaplib.IMAP4.abort:
                    break  # EOF, or nothing more right now (imaplib cannot tell the two apart)
        finally:
            sock.settimeout(self.settings.timeout_seconds)
        return lines

    def idle_stop(self) -> None:
        self.client.idle_done()
