"""systemd service notifications without libsystemd (sd_notify(3), the synapse way).

``Type=notify`` units get ``$NOTIFY_SOCKET``: a unix datagram socket path, or an abstract socket
name when it starts with ``@``. Each notification is one datagram of ``KEY=VALUE`` lines. Outside
systemd (no ``$NOTIFY_SOCKET``) every call is a cheap no-op, so callers never check.
"""

from __future__ import annotations

import logging
import os
import socket

log = logging.getLogger("mailgateway.sdnotify")


class SdNotifier:
    def __init__(self, address: str | None = None) -> None:
        address = os.environ.get("NOTIFY_SOCKET") if address is None else address
        # sd_notify(3): a leading "@" stands for the NUL byte of a Linux abstract socket name.
        self.address = ("\0" + address[1:]) if address and address.startswith("@") else address
        self._sock: socket.socket | None = None

    @property
    def enabled(self) -> bool:
        return bool(self.address)

    def notify(self, *lines: str) -> bool:
        """Send ``READY=1``-style lines in one datagram; return False (and log once) on failure."""
        if not self.address:
            return False
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.sendto("\n".join(lines).encode(), self.address)
        except OSError as exc:
            self.close()  # reconnect next time (systemd may have been re-executed)
            # Never fatal: the watchdog will notice a daemon that really cannot talk to systemd.
            log.warning("sd_notify to %r failed: %s", self.address, exc)
            return False
        return True

    def ready(self, status: str | None = None) -> bool:
        return self.notify("READY=1", f"MAINPID={os.getpid()}", *([f"STATUS={status}"] if status else []))

    def reloading(self) -> bool:
        return self.notify("RELOADING=1")

    def stopping(self, status: str | None = None) -> bool:
        return self.notify("STOPPING=1", *([f"STATUS={status}"] if status else []))

    def watchdog(self) -> bool:
        return self.notify("WATCHDOG=1")

    def status(self, text: str) -> bool:
        return self.notify(f"STATUS={text}")

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def watchdog_interval() -> float | None:
    """Seconds between WATCHDOG=1 pings (half of ``$WATCHDOG_USEC``, as sd_watchdog_enabled(3)
    advises), or None when the watchdog is off or meant for another process (``$WATCHDOG_PID``)."""
    usec = os.environ.get("WATCHDOG_USEC", "")
    pid = os.environ.get("WATCHDOG_PID", "")
    if not usec.isdigit() or int(usec) == 0 or (pid and pid != str(os.getpid())):
        return None
    return int(usec) / 2_000_000
