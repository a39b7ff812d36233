"""The mail commands feature: staff ``#commande`` lines and establishments' replies acting on cases.

- ``handling``: what a command mail or a reply does (authentication, once only, receipts);
- ``table``: one small function per command, the ``COMMANDS`` table;
- ``receipts``: the mail commands send (receipts, requests to the declarant, transmissions).
"""
