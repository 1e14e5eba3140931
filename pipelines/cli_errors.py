"""How every stage reports bad input: one line on stderr naming the file and the problem,
and a non-zero exit status, instead of a traceback."""

from __future__ import annotations

import functools
import sys

# Errors that describe the user's input. Anything else is a bug and keeps its traceback.
USER_ERRORS = (ValueError, FileNotFoundError, FileExistsError, KeyError, RuntimeError)
EXIT_BAD_INPUT = 2


def reports_errors(main):
    """Wrap a stage's ``main(argv=None)`` so user errors print ``error: ...`` and exit 2."""

    @functools.wraps(main)
    def wrapper(argv=None):
        try:
            return main(argv)
        except KeyboardInterrupt:
            print("interrupted: finished chunks and checkpoints are kept; rerun to resume", file=sys.stderr)
            return 130
        except USER_ERRORS as exc:
            message = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
            print(f"error: {message}", file=sys.stderr)
            return EXIT_BAD_INPUT

    return wrapper
