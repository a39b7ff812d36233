"""Dispatch, the sending machinery: the ``Mailer`` gate, template contexts and rendering,
composition (MIME, DKIM), the outbox, the sender and its transports. No feature lives here."""
