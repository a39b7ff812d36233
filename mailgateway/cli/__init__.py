"""Every operator command, one package (README "Command line").

``commands`` holds the parser, ``main`` and the small commands; a command with more than a screen
of its own has its module: ``bulletin`` (``bulletin send|status``), ``scheduler`` (``scheduler
run-due|list``, ``report weekly``), ``status``. Heavy modules are imported inside each command so
``mailgateway --help`` stays fast; nothing below this layer imports the CLI.
"""

from mailgateway.cli.commands import build_parser, main

__all__ = ["build_parser", "main"]
