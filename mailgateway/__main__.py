"""``python -m mailgateway`` is the same as the ``mailgateway`` command."""

from mailgateway.cli import main

raise SystemExit(main())
