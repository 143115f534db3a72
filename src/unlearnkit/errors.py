"""User-facing errors.

Every problem a user can fix is raised as :class:`UnlearnkitError` with one sentence that
names the problem and the fix; the CLI prints that sentence and exits non-zero without a
traceback.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class UnlearnkitError(Exception):
    """A problem with the user's input, described in one sentence that names the fix."""


def did_you_mean(name: str, valid: Iterable[str]) -> str:
    """Return ' Did you mean "x"?' for the closest valid name, or '' if none is close."""
    close = difflib.get_close_matches(name, list(valid), n=1, cutoff=0.5)
    return f' Did you mean "{close[0]}"?' if close else ""


def unknown_name(kind: str, name: str, valid: Iterable[str]) -> UnlearnkitError:
    """Error for a name that is not one of the registered choices."""
    valid = sorted(valid)
    return UnlearnkitError(
        f'Unknown {kind} "{name}"; choose one of: {", ".join(valid)}.{did_you_mean(name, valid)}'
    )
