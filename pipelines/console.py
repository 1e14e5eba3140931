"""``ensemble-fer``: one console command with a subcommand per stage.

    ensemble-fer predict photo.jpg clip.mp4 [--csv out.csv] [--annotate DIR] ...
    ensemble-fer extract --data DIR --out features/x [--scheduler tcp://host:8786]
    ensemble-fer train --block cnn5 --bovw --features features/x
    ensemble-fer fit-ensemble | evaluate | export | demo | compare | search ...
    ensemble-fer --version

Each subcommand runs the same ``main(argv)`` as ``python -m pipelines.<stage>`` (those entry
points stay), so options, ``--help`` (every option with its default), outputs and exit
statuses are the same; only the stage's name in messages differs. TensorFlow starts without
its C++ start-up lines, as in every stage (``pipelines/__init__.py``,
:mod:`ensemble_fer.tf_startup`).
"""

from __future__ import annotations

import importlib
import sys

from .cli_errors import invoked_as

PROG = "ensemble-fer"

# subcommand -> (pipelines module, one-line description)
STAGES = {
    "extract": ("extract_features", "faces, landmarks, HOG and BOVW features of a dataset"),
    "train": ("train_variant", "train one two-input variant on a feature store"),
    "fit-ensemble": ("fit_ensemble", "fit the weighted ensemble of trained variants on validation"),
    "evaluate": ("evaluate", "score a model on labelled data"),
    "predict": ("predict", "emotions of every face in photos and videos, as CSV"),
    "export": ("export", "export a model to TFLite (float32, float16, int8, int8-full) or ONNX"),
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


def stage_parser(command: str) -> argparse.ArgumentParser:
    """The stage's own parser, named and formatted as a subcommand of ``ensemble-fer``."""
    module = importlib.import_module(f"pipelines.{STAGES[command][0]}")
    parser = module.build_parser()
    parser.prog = f"{PROG} {command}"
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
    with invoked_as(f"{PROG} {command}"):
        return module.main(rest)


if __name__ == "__main__":
    sys.exit(main())
