"""How every stage reports bad input: one line on stderr naming the file and the problem,
and exit status 2, instead of a traceback.

Only :class:`ensemble_fer.errors.InputError` (raised for what a user gave: a file, an argument,
an output path) is reported that way. Every other exception is a bug and keeps its traceback:
catching every ``KeyError`` or ``RuntimeError`` hid programming errors behind ``error: 'x'``.
"""

from __future__ import annotations

import functools
import sys

from ensemble_fer.errors import InputError

EXIT_BAD_INPUT = 2

# TRANSITIONAL, to be emptied: modules whose user-facing raises are still plain ValueError,
# FileNotFoundError or FileExistsError rather than InputError. Such an exception is reported
# as bad input only when a `raise` statement of one of these modules threw it (the innermost
# frame of its traceback is in the module), so a ValueError from inside numpy, Keras or
# scikit-learn still shows its traceback. Remove a module once its raises are InputError.
UNCONVERTED_MODULES = frozenset({
    "ensemble_fer.inference.annotate", "ensemble_fer.inference.gradcam", "ensemble_fer.inference.recognizer", "ensemble_fer.release",
})
UNCONVERTED_TYPES = (ValueError, FileNotFoundError, FileExistsError)


def is_user_error(exc: BaseException) -> bool:
    """Whether ``exc`` describes the user's input (see the module docstring)."""
    if isinstance(exc, InputError):
        return True
    if not isinstance(exc, UNCONVERTED_TYPES) or exc.__traceback__ is None:
        return False
    tb = exc.__traceback__
    while tb.tb_next is not None:
        tb = tb.tb_next
    return tb.tb_frame.f_globals.get("__name__") in UNCONVERTED_MODULES


def reports_errors(main):
    """Wrap a stage's ``main(argv=None)`` so user errors print ``error: ...`` and exit 2."""

    @functools.wraps(main)
    def wrapper(argv=None):
        try:
            return main(argv)
        except KeyboardInterrupt:
            print("interrupted: finished chunks and checkpoints are kept; rerun to resume", file=sys.stderr)
            return 130
        except Exception as exc:
            if not is_user_error(exc):
                raise
            print(f"error: {exc}", file=sys.stderr)
            return EXIT_BAD_INPUT

    return wrapper
