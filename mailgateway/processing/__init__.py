"""Processing: one transaction per accepted message — analyse in a worker, route through
``pipeline.py`` to the feature that owns the message's kind, record the outcome."""
