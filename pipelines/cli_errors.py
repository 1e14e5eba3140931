"""How every stage reports bad input: one line on stderr naming the file and the problem,
and exit status 2, instead of a traceback.

Only :class:`ensemble_fer.errors.InputError` (raised for what a user gave: a file, an argument,
an output path) is reported that way. Every other exception is a bug and keeps its traceback:
catching every ``KeyError`` or ``RuntimeError`` hid programming errors behind ``error: 'x'``.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import os
import sys

from ensemble_fer.errors import InputError

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
        except InputError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return EXIT_BAD_INPUT
        except BrokenPipeError:
            # The reader of stdout went away (``predict photos/ | head``): not an error of ours.
            # stdout is pointed at /dev/null so that Python's final flush does not fail again.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return EXIT_BROKEN_PIPE

    return wrapper


EXIT_BROKEN_PIPE = 141
"""What a shell reports for a program killed by SIGPIPE (128 + 13), as ``cat`` would exit."""

_invoked_as: str | None = None


@contextlib.contextmanager
def invoked_as(prog: str):
    """Name the stage ``prog`` (``ensemble-fer predict``) in its command-line errors while the
    block runs: the console runs each stage's own ``main``, whose parser is named for
    ``python -m pipelines.<stage>``."""
    global _invoked_as
    before, _invoked_as = _invoked_as, prog
    try:
        yield
    finally:
        _invoked_as = before


class DefaultsHelpFormatter(argparse.HelpFormatter):
    """Adds ``(default: X)`` to each option whose help does not already say it; flags and
    options without a default are left alone."""

    def _get_help_string(self, action):
        text = action.help or ""
        default = action.default
        # identity, not ==: a default of 0 is worth showing, False (a flag) is not
        if (action.option_strings and not any(default is v for v in (None, False, argparse.SUPPRESS))
                and "default" not in text and "%(default)" not in text):
            text += " (default: %(default)s)"
        return text


class RawDescriptionDefaultsHelpFormatter(DefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """:class:`DefaultsHelpFormatter` for a stage whose description keeps its own line breaks."""


class CommandLineParser(argparse.ArgumentParser):
    """argparse, with a bad command line reported like every other bad input: one line
    (``PROG: error: argument --x: ...; see --help``) and exit status 2. argparse's own
    ``error`` prints the whole usage block first, which buries the one line that matters.
    ``--help`` shows each option's default (:class:`DefaultsHelpFormatter`), however the
    stage is run."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", DefaultsHelpFormatter)
        super().__init__(*args, **kwargs)
        if _invoked_as is not None:
            self.prog = _invoked_as

    def error(self, message):
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: error: {message} (see --help)\n")
