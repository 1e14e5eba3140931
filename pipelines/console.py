"""``ensemble-fer``: one console command with a subcommand per stage.

    ensemble-fer predict photo.jpg clip.mp4 [--csv out.csv] [--annotate DIR] ...
    ensemble-fer extract --data DIR --out features/x [--scheduler tcp://host:8786]
    ensemble-fer train --block cnn5 --bovw --features features/x
    ensemble-fer fit-ensemble | evaluate | export | demo | compare | search ...
    ensemble-fer --version

Each subcommand runs the same ``main(argv)`` as ``python -m pipelines.<stage>`` (those entry
points stay), so options, outputs and exit statuses are the same; ``ensemble-fer <stage>
--help`` shows every option with its default. TensorFlow starts without its C++ start-up
lines, as in every stage (``pipelines/__init__.py``, :mod:`ensemble_fer.tf_startup`).

``ensemble-fer extract --scheduler ADDRESS`` runs the extraction's joblib chunks on a running
dask cluster (``dask scheduler`` + ``dask worker ADDRESS`` on the machines, each with this
package installed): ``joblib.parallel_config(backend="dask")`` inside a ``dask.distributed``
client for ADDRESS. The arrays are the same as on one machine (``tests/test_distributed.py``).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import sys

from ensemble_fer.errors import InputError

from .cli_errors import EXIT_BAD_INPUT, invoked_as

PROG = "ensemble-fer"

# subcommand -> (pipelines module, one-line description)
STAGES = {
    "extract": ("extract_features", "faces, landmarks, HOG and BOVW features of a dataset"),
    "train": ("train_variant", "train one two-input variant on a feature store"),
    "fit-ensemble": ("fit_ensemble", "fit the weighted ensemble of trained variants on validation"),
    "evaluate": ("evaluate", "score a model on labelled data"),
    "predict": ("predict", "emotions of every face in photos and videos, as CSV"),
    "export": ("export", "export a model to TFLite (float32, float16, int8)"),
    "demo": ("demo", "the whole pipeline on the bundled sample, in a few minutes"),
    "compare": ("compare", "compare the trained variants under a folder"),
    "search": ("search_hparams", "hyperparameter grid search of one variant"),
}


def version() -> str:
    from ensemble_fer import __version__

    return f"{PROG} {__version__}"


def _usage() -> str:
    width = max(map(len, STAGES))
    lines = [f"usage: {PROG} [--version] <command> [options]   ({PROG} <command> --help for its options)",
             "", "commands:"]
    lines += [f"  {name:<{width}}  {description}" for name, (_, description) in STAGES.items()]
    return "\n".join(lines)


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


def stage_parser(command: str) -> argparse.ArgumentParser:
    """The stage's own parser, named and formatted as a subcommand of ``ensemble-fer``."""
    module = importlib.import_module(f"pipelines.{STAGES[command][0]}")
    parser = module.build_parser()
    parser.prog = f"{PROG} {command}"
    parser.formatter_class = DefaultsHelpFormatter
    if command == "extract":
        parser.add_argument("--scheduler", metavar="ADDRESS",
                            help="run the extraction on this dask scheduler, e.g. tcp://host:8786")
    return parser


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0 if argv else 2
    if argv[0] in ("--version", "-V", "version"):
        print(version())
        return 0
    command, rest = argv[0], argv[1:]
    if command not in STAGES:
        print(f"{PROG}: unknown command {command!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    if "-h" in rest or "--help" in rest:
        stage_parser(command).print_help()
        return 0
    module = importlib.import_module(f"pipelines.{STAGES[command][0]}")
    try:
        scheduler, rest = _take_option(rest, "--scheduler") if command == "extract" else (None, rest)
        with on_cluster(scheduler), invoked_as(f"{PROG} {command}"):
            return module.main(rest)
    except InputError as exc:      # the console's own options; the stages report theirs
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT


@contextlib.contextmanager
def on_cluster(address):
    """Run joblib work inside on the dask cluster at ``address`` (nothing when ``None``)."""
    if address is None:
        yield
        return
    try:
        import joblib
        from dask.distributed import Client
    except ImportError:
        raise InputError("--scheduler needs dask.distributed: pip install 'ensemble_fer[cluster]'") from None
    try:
        client = Client(address, timeout="20s")
    except OSError as exc:
        raise InputError(f"--scheduler {address}: cannot reach the scheduler ({exc})") from None
    with client, joblib.parallel_config(backend="dask"):
        yield


def _take_option(argv: list[str], name: str) -> tuple[str | None, list[str]]:
    """``--name VALUE`` or ``--name=VALUE`` removed from ``argv``: (VALUE or None, the rest)."""
    rest, value, i = [], None, 0
    while i < len(argv):
        arg = argv[i]
        if arg == name:
            if i + 1 >= len(argv):
                raise InputError(f"{name} needs a value")
            value, i = argv[i + 1], i + 2
            continue
        if arg.startswith(name + "="):
            value = arg.split("=", 1)[1]
        else:
            rest.append(arg)
        i += 1
    return value, rest


if __name__ == "__main__":
    sys.exit(main())
