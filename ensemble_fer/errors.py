"""The one exception type for problems with what a user gave.

A bad file, argument, dataset, model folder or output path raises :class:`InputError` with a
one-line message naming the thing and the problem. The command-line stages print that line
and exit with status 2 (``pipelines/cli_errors.py``); every other exception is a bug and
shows its traceback. It subclasses ``ValueError`` so that library callers who catch
``ValueError`` keep working.
"""

from __future__ import annotations


class InputError(ValueError):
    """A user-facing problem: bad input, a refused overwrite, a locked output, a stale model."""


class MissingInputError(InputError, FileNotFoundError):
    """A file or folder the user named does not exist. Also a ``FileNotFoundError``, so that
    callers (and tests) that catch that keep working."""


class DatasetError(InputError):
    """Bad input data; the message names the file (and row) and the problem."""


class MissingDatasetError(DatasetError, MissingInputError):
    """The dataset path does not exist (also a ``FileNotFoundError`` for callers that catch that)."""
