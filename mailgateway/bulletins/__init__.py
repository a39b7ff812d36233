"""The bulletins feature: awareness bulletins and ACSS alert relays fanned out to establishments.

- ``fanout``: creating, approving and queueing a bulletin, one message per establishment;
- ``by_mail``: bulletins authored and approved by staff by mail;
- ``tracking``: acknowledgements, bounces and fallback contacts after queueing;
- ``followups``: delivery counts, the author's report, reminders (scheduled).
"""
