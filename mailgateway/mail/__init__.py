"""Understanding mail: pure functions from bytes (and injected lookups) to facts."""
