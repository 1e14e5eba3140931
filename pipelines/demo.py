"""The whole method on the bundled sample, in a few minutes: extract, train two variants, fit the
ensemble, evaluate, and write one readable report.

    python -m pipelines.demo [--out runs/demo] [--epochs 4] [--detector hog|mmod|none]
        [--max-minutes 1.5] [--tta 0] [--n-jobs -1] [--force] [--quiet]

Steps (library calls, the same code as the stage CLIs):

1. ``features/sample``: faces, landmarks, HOG and BOVW of data/sample (280 train, 105 val).
2. ``models/cnn5`` and ``models/cnn5+bovw``: the compact five-layer block without and with the
   BOVW input, trained from scratch for ``--epochs`` epochs (each capped at ``--max-minutes``).
3. ``models/ensemble.json``: their weights fitted on val (+ ``models/ensemble_report.md``).
4. the ensemble evaluated on the sample's val split through ``pipelines.evaluate``'s path
   (features re-extracted from the raw images into ``features/eval-*``).

Outputs in --out: ``report.md`` (what ran, the member/ensemble table, weights, per-class
table, figures linked), ``report.json``, ``evaluation.{md,json}`` and the confusion matrices.

--out is the demo's own folder: a file, or a folder holding other files, is refused (with or
without --force), and two demos never write one folder at once. Reruns reuse what is done: the store when it is up to date, finished variants (an
interrupted one resumes), so a second run only refits and re-evaluates; ``--force`` redoes
everything. The sample has no test split and is far too small to learn from: its figures
show that the pipeline works, not how well the method does.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from ensemble_fer.errors import InputError

from .cli_errors import CommandLineParser, reports_errors
from .cli_numbers import MAX_MINUTES, N_JOBS, float_in, int_in, with_range

def build_parser() -> argparse.ArgumentParser:
    from ensemble_fer import paths
    from ensemble_fer.features import bovw

    # the first paragraph, whole: its first line alone stops mid-sentence
    p = CommandLineParser(prog="python -m pipelines.demo", description=" ".join(__doc__.split("\n\n")[0].split()))
    p.add_argument("--out", type=Path, default=paths.runs_dir("demo"),
                   help="output folder (default runs/demo in the current folder)")
    p.add_argument("--epochs", type=int_in(1, 1000), default=4, help="epochs per variant (1 to 1000; default 4)")
    p.add_argument("--max-minutes", type=float_in(0, MAX_MINUTES), default=1.5,
                   help=f"wall-clock cap per variant's training, so the demo ends in minutes on any machine "
                        f"(0 to {MAX_MINUTES:g})")
    p.add_argument("--detector", choices=bovw.DETECTORS, default="hog",
                   help="face detector of the extraction (default hog; none is quicker)")
    p.add_argument("--tta", type=int_in(0, 10), default=0,
                   help="test-time views averaged in the evaluation (0: none, up to 10)")
    p.add_argument("--n-jobs", type=N_JOBS, default=-1,
                   help=with_range("worker processes for extraction (-1: all cores)", N_JOBS))
    p.add_argument("--force", action="store_true", help="redo every step, replacing earlier outputs")
    p.add_argument("--quiet", action="store_true", help="only the final lines")
    return p


@reports_errors
def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.epochs < 1:
        raise InputError(f"--epochs must be at least 1; got {args.epochs}")
    from ensemble_fer.features import faces
    from ensemble_fer.features.augment import check_tta
    check_tta(args.tta)
    faces.require_model_files("the demo (its extraction computes 68 landmarks per face)")
    from ensemble_fer.demo import run_demo

    started = time.time()
    report = run_demo(args.out, epochs=args.epochs, max_minutes=args.max_minutes, detector=args.detector,
                      tta=args.tta, n_jobs=args.n_jobs, force=args.force, quiet=args.quiet)
    print(f"demo finished in {time.time() - started:.0f} s; ensemble val accuracy "
          f"{report['evaluation']['all']['accuracy']:.4f} (tiny sample: noise-level)")
    print(f"report: {args.out / 'report.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
