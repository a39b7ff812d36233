"""Cases, the domain: references, lifecycle, hash-chained timeline, verification, read views, and
``service`` — the one writer of a case's status and the one builder of its message events."""
