"""The numeric command-line options: each with a documented range, checked when the command
line is parsed (argparse ``type`` functions), so that a value out of range stops the stage
at once with ``error: argument --x: ...`` and exit status 2, before any model or data loads.

    p.add_argument("--seed", type=int_in(0, MAX_SEED), ...)   # --help shows the range: with_range()

The ranges are those of the library's own checks (a seed numpy accepts, a worker count
joblib accepts, ...); the help text of each option states its range (:func:`with_range`).
"""

from __future__ import annotations

import argparse
import math

MAX_SEED = 2**32 - 1
"""numpy's and Keras's generators take seeds in [0, 2**32 - 1]."""
MAX_BATCH = 4096
"""Crops per network batch: far more than any CPU or GPU here needs, far less than the memory it would take."""
MAX_FPS = 1000.0
"""Video frames sampled per second: above any clip's rate (a higher request is clamped to the clip's)."""
MAX_MINUTES = 60 * 24 * 365.0
"""A wall-clock budget of a year: anything longer is a typo."""
MAX_WORKERS = 64
"""predict's photo workers: each is a process with its own dlib and one decoded photo, and
workers past the cores gain nothing; 64 covers the machines this runs on and refuses a typo (640)."""


class int_in:
    """An argparse type: an int in ``[low, high]`` (``high`` None: no upper bound); ``also``:
    other values allowed outside the interval (``-1`` for "all cores")."""

    def __init__(self, low: int, high: int | None = None, also: tuple[int, ...] = ()):
        self.low, self.high, self.also = low, high, tuple(also)
        self.__name__ = "int"

    @property
    def range(self) -> str:
        interval = f">= {self.low}" if self.high is None else f"in [{self.low}, {self.high}]"
        return " or ".join([str(v) for v in self.also] + [interval])

    def __call__(self, text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be an int {self.range}; got {text!r}") from None
        if value not in self.also and (value < self.low or (self.high is not None and value > self.high)):
            raise argparse.ArgumentTypeError(f"must be an int {self.range}; got {value}")
        return value


class float_in:
    """An argparse type: a finite number in ``(low, high]`` (``low_open``) or ``[low, high]``;
    ``inf`` and ``nan`` are refused."""

    def __init__(self, low: float, high: float, low_open: bool = True):
        self.low, self.high, self.low_open = low, high, low_open
        self.__name__ = "float"

    @property
    def range(self) -> str:
        return f"in {'(' if self.low_open else '['}{self.low:g}, {self.high:g}]"

    def __call__(self, text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be a number {self.range}; got {text!r}") from None
        if not math.isfinite(value) or not (value > self.low if self.low_open else value >= self.low) \
                or value > self.high:
            raise argparse.ArgumentTypeError(f"must be a finite number {self.range}; got {text}")
        return value


def with_range(help_text: str, kind) -> str:
    """``help_text`` with the option's range appended, as --help shows it."""
    return f"{help_text} ({kind.range})"


N_JOBS = int_in(1, 256, also=(-1,))
"""Worker processes: -1 (all cores) or 1 to 256."""
