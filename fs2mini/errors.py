"""User-facing errors: one exception type and one place that turns it into a clean exit.

Anything the user can fix (a missing file, a bad flag value, a corrupt checkpoint) raises
`UserError` with one sentence naming the file/flag/value and what was expected. Entry points wrap
their body in `exit_on_user_error` so the user sees that sentence and a non-zero exit code instead
of a traceback; programming errors still raise normally.
"""

from __future__ import annotations

import contextlib
import math
import sys
from collections.abc import Iterator, Sequence

USER_ERROR_EXIT_CODE = 2


class UserError(Exception):
    """An error caused by input the user controls; its message is shown as-is."""


class RunStopped(Exception):
    """A run stopped on request (SIGINT/SIGTERM) after saving; exits 128 + signal number, as shells do."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


FieldPath = tuple[str | int, ...]
"""Where a setting sits in the config, e.g. ("data", "more_corpora", 2, "target_bible")."""


def cli_flag(*field: str | int) -> str:
    """The flag that sets a config field, spelled as tyro spells it, for messages: `cli_flag("data", "more_corpora",
    2, "target_bible")` is `--data.more-corpora.2.target-bible` (underscores become hyphens, a tuple index a number)."""
    return "--" + ".".join(str(part).replace("_", "-") for part in field)


def expect(flag: str, value: object, ok: bool, expected: str) -> None:
    """The check of one numeric flag: unless `ok`, stop with `--flag VALUE: expected ...`."""
    if not ok:
        raise UserError(f"{flag} {value}: expected {expected}")


def expect_positive_ints(flags: Sequence[tuple[str, int]]) -> None:
    """The check of integer flags that count something: stop at the first (flag, value) that is not > 0."""
    for flag, value in flags:
        if value <= 0:
            raise UserError(f"{flag} must be a positive integer, got {value}")


def finite(value: object) -> bool:
    """A real number that is not NaN or ±inf (tyro parses `--lr inf` and `--lr nan` as floats)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


@contextlib.contextmanager
def exit_on_user_error() -> Iterator[None]:
    """Print `error: <message>` on stderr and exit 2 for a `UserError`; let other errors raise."""
    try:
        yield
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(USER_ERROR_EXIT_CODE)
    except RunStopped as stop:
        print(str(stop), file=sys.stderr)
        sys.exit(stop.exit_code)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
