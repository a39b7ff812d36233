"""Intake: accept only — store the raw message durably, then answer the source (SMTP, IMAP)."""
