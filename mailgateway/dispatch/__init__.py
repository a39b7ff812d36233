"""Dispatch: rendering, composition, DKIM signing, outbox, sender, transports, bulletins."""
