"""The ``unlearnkit`` command line: parse, call the library, print. Nothing else lives here.

``common`` holds the app, the exit codes and ``main``; each other module registers its commands on the app.
"""

from unlearnkit.cli import attack, catalogue, experiments, measure, unlearn  # noqa: F401  (registers the commands)
from unlearnkit.cli.common import (
    EXIT_BAD_INPUT,
    EXIT_DIVERGED,
    EXIT_INTERRUPTED,
    EXIT_NOT_FORGOTTEN,
    EXIT_OK,
    EXIT_SWEEP_FAILURES,
    app,
    main,
    parse_source,
)

__all__ = ["EXIT_BAD_INPUT", "EXIT_DIVERGED", "EXIT_INTERRUPTED", "EXIT_NOT_FORGOTTEN", "EXIT_OK",
           "EXIT_SWEEP_FAILURES", "app", "main", "parse_source"]
