"""Processing: one transaction per accepted message — classify, authenticate, apply, queue."""
