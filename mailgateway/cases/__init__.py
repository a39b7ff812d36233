"""Cases: references, lifecycle, hash-chained timeline, staff commands, read views."""
