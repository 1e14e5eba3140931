"""Stage 3: fit the weighted ensemble of trained variants on their validation predictions.

    python -m pipelines.fit_ensemble [--models DIR] [--variants NAME ...] [--objective accuracy|log-loss]
        [--seed 0] [--cv-splits 5] [--tta N [--features DIR]] [--out models/ensemble.json] [--force]

Inputs: variant folders (``config.json`` + ``predictions.npz``; the models themselves are not
loaded): every one under --models, searched recursively as ``pipelines.compare`` does
(``ensemble_fer.models.variant_dir.find_variants``), or the --variants named (folder names
under --models, or paths). They must share one feature store (config and manifest
hash), one label set and the same val/test ids; otherwise nothing is written and the error
names the variant and what differs.

Outputs: ``ensemble.json`` (members as paths relative to it, the SHA-256 of each member's
config.json and model.keras, weights, objective, seed, classes, label set, extractor config,
feature store hashes, scores) and, beside it, ``ensemble_report.md``, ``ensemble_report.json``
and ``ensemble_confusion_matrix.png`` (for ``--out NAME.json``: ``NAME_report.md``, ...): every
member, the equal-weight average, the best single member and the learnt ensemble on val (and
test when the store has it), the weights, the ensemble's per-class scores and confusion
matrix, the cross-validated accuracy over val folds, how much each pair of members errs on
the same val rows (the error correlation that decides whether a member can add anything), and
the face-found subset when the store flags faces. Weights are fitted on val only, so the
ensemble's val figures are optimistic; the report says so.

--tta N: the members' models are loaded and predict the feature store's val (and test) rows
averaged over N test-time views (identity, mirror, ...); the weights are fitted on those, and
``ensemble.json`` records ``tta`` so that evaluate and predict average the same views unless
told otherwise (--tta 0). --features names the store when it is not at the path the members
record.

The members must be inside the folder of --out (the ensemble names them by relative paths
and can only be loaded with them); loading refuses a member whose config.json or model.keras
changed after the fit. An existing ensemble (or its report) is refused before any work
unless --force; with --force the new files are built beside the old ones and replace them
only once all are complete.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ensemble_fer import paths
from ensemble_fer.ensemble import fit
from ensemble_fer.ensemble.ensemble_file import ENSEMBLE_FILE, check_ensemble_outputs, ensemble_outputs
from ensemble_fer.ensemble.weighted import OBJECTIVES
from ensemble_fer.errors import InputError, MissingInputError
from ensemble_fer.models.variant_dir import find_variants
from ensemble_fer.features.augment import MAX_TTA, check_tta

from .cli_errors import CommandLineParser, reports_errors
from .cli_numbers import MAX_SEED, int_in


def build_parser() -> argparse.ArgumentParser:
    p = CommandLineParser(prog="python -m pipelines.fit_ensemble", description=__doc__.split("\n")[0])
    p.add_argument("--models", type=Path, default=paths.models_dir(),
                   help="folder searched recursively for variant folders (default: models/ in the current folder)")
    p.add_argument("--variants", nargs="+", metavar="NAME",
                   help="only these variants: folder names under --models, or paths (default: all found)")
    p.add_argument("--objective", choices=OBJECTIVES, default="accuracy",
                   help="what the weights optimise on val (default accuracy, the paper's; ties broken by log-loss)")
    p.add_argument("--seed", type=int_in(0, MAX_SEED), default=0,
                   help=f"seed of differential evolution and of the CV folds (0 to {MAX_SEED})")
    p.add_argument("--cv-splits", type=int_in(2, 100), default=fit.CV_SPLITS,
                   help="folds of the cross-validated estimate over val (2 to 100; default 5)")
    p.add_argument("--tta", type=int_in(0, MAX_TTA), default=0, metavar="N",
                   help="fit on the members' predictions averaged over N test-time views (default 0: their saved "
                        "predictions); the ensemble then predicts with N views by default")
    p.add_argument("--features", type=Path, metavar="DIR",
                   help="with --tta: the members' feature store (default: the path they record)")
    p.add_argument("--out", type=Path, help="the ensemble file, in the folder holding the members (default: "
                                            "<models>/ensemble.json); refused if it exists, unless --force")
    p.add_argument("--force", action="store_true",
                   help="replace an existing ensemble and its report; the old files stay until the new ones are "
                        "complete")
    return p


def resolve_variants(models: Path, names) -> list[Path]:
    folders = []
    for name in names:
        candidate = models / name
        folder = candidate if candidate.is_dir() else Path(name)
        if not folder.is_dir():
            raise MissingInputError(f"{candidate}: no such variant folder (nor {name} as a path)")
        folders.append(folder)
    return folders


@reports_errors
def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.cv_splits < 2:
        raise InputError(f"--cv-splits must be at least 2; got {args.cv_splits}")
    check_tta(args.tta, where="--tta")
    if args.features is not None and not args.tta:
        raise InputError("--features is read only with --tta N (the saved predictions need no store)")
    out = args.out or args.models / ENSEMBLE_FILE
    check_ensemble_outputs(out, args.force)   # before any work
    folders = (resolve_variants(args.models, args.variants) if args.variants
               else find_variants(args.models, say=print))
    report = fit.fit_ensemble(folders, out, objective=args.objective, seed=args.seed, cv_splits=args.cv_splits,
                              say=print, force=args.force, tta=args.tta, features=args.features)
    print(summary(report))
    print(f"wrote {out} and {ensemble_outputs(out)['markdown']}")
    return 0


def summary(report: dict) -> str:
    splits = report["splits"]
    header = f"{'model':<32}" + "".join(f"{s + ' acc':>10}{s + ' F1':>10}" for s in splits)
    lines = [header]
    for name in report["results"][splits[0]]:
        cells = "".join(f"{report['results'][s][name]['accuracy']:>10.4f}{report['results'][s][name]['macro_f1']:>10.4f}"
                        for s in splits)
        lines.append(f"{name:<32}{cells}")
    lines.append("weights: " + ", ".join(f"{n} {w:.3f}" for n, w in report["weights"].items()))
    cv = report["cross_validation"]
    if cv:
        lines.append(f"cross-validated val accuracy ({cv['n_splits']} folds): {cv['mean']:.4f} ± {cv['std']:.4f} "
                     f"(equal weights {cv['equal_weight_mean']:.4f}); the ensemble's in-sample val figures are "
                     f"optimistic")
    if report.get("shared_errors"):
        lines.append("error correlation on val (1: wrong on the same rows): " + ", ".join(
            f"{'/'.join(pair['members'])} {fit.error_correlation_text(pair, 2)}" for pair in report["shared_errors"]))
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
