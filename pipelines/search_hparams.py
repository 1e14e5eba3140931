"""Grid search of a variant's training hyperparameters: one resumable run per combination, ranked by val accuracy.

    python -m pipelines.search_hparams --block NAME|none [--bovw] [--features DIR] --grid FILE.json
        [--out runs/search/<variant>] [--labels fer7] [--max-minutes-per-run M] [--retry-failed] [--quiet]

--grid: a JSON object mapping `train_variant` arguments to lists of values, e.g.
``{"lr": [1e-3, 3e-4], "batch_size": [32, 64], "dropout": [0.3, 0.5], "epochs": [30], "patience": [5]}``
(or a list of such objects); every combination (sklearn's ParameterGrid) is trained. Names
a grid may use: lr, batch_size, dropout, epochs, patience, lr_patience, lr_factor, min_lr,
label_smoothing, mixup, class_weight, augment, lr_schedule, epochs_frozen, frozen_lr,
scratch_optimizer, weights, image_size, bovw_units, dense_units, seed, aux_targets,
aux_loss_weight (the fields of ensemble_fer.training.config.TrainConfig).
Parameters not in the grid keep train_variant's defaults (note: augment on, epochs 50).

Outputs in --out: ``run-NNN/`` (one variant folder per combination, kept for good: the
mapping is in ``search.json``), ``results.csv`` and ``results.md`` (runs ranked by val
accuracy with their parameters, val accuracy, macro-F1, val loss, epochs run and training
time; rewritten after every run). Rerunning the command skips finished runs, resumes
interrupted ones (and runs cut short by --max-minutes-per-run), and trains new combinations
after a grid edit. --out is a search's own folder: one that holds other files (or lies inside
--features) is refused, and two searches never write one folder at once. Exit status 1 when a run failed (it is listed with its error and skipped
on reruns unless --retry-failed), 2 on bad input.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .cli_errors import CommandLineParser, reports_errors
from .cli_numbers import MAX_MINUTES, float_in
from .train_variant import add_variant_arguments, check_store_first


def build_parser() -> argparse.ArgumentParser:
    p = CommandLineParser(prog="python -m pipelines.search_hparams", description=__doc__.split("\n")[0])
    add_variant_arguments(p)
    p.add_argument("--grid", type=Path, required=True, help="JSON file: parameter name -> list of values")
    p.add_argument("--out", type=Path, help="search folder (default: runs/search/<variant> in the current folder)")
    p.add_argument("--max-minutes-per-run", type=float_in(0, MAX_MINUTES), metavar="M",
                   help=f"wall-clock budget of each run in this call, in (0, {MAX_MINUTES:g}]; a rerun resumes the "
                        f"runs it cut short")
    p.add_argument("--retry-failed", action="store_true", help="train again the runs that failed before")
    p.add_argument("--quiet", action="store_true", help="no progress output (the ranked table is still printed)")
    return p


@reports_errors
def main(argv=None) -> int:
    check_store_first(argv)     # before the parser, which imports TensorFlow
    from ensemble_fer import paths
    from ensemble_fer.training import hparam_search
    from ensemble_fer.models import networks

    args = build_parser().parse_args(argv)
    block = None if args.block == "none" else args.block
    out = args.out or paths.runs_dir("search", networks.variant_name(block, args.bovw))
    search = hparam_search.HparamSearch(block, args.bovw, args.grid, labels=args.labels,
                                        max_minutes_per_run=args.max_minutes_per_run,
                                        retry_failed=args.retry_failed, progress=not args.quiet)
    search.fit(args.features, out)
    print(summary(search.results_))
    print(f"wrote {out / hparam_search.RESULTS_CSV} and {out / hparam_search.RESULTS_MD}")
    failed = [row for row in search.results_ if row["status"] == hparam_search.FAILED]
    for row in failed:
        print(f"run {out / row['run']} failed: {row['error']}", file=sys.stderr)
    return 1 if failed else 0


def summary(rows: list[dict]) -> str:
    params = sorted({name for row in rows for name in row["params"]})
    lines = [f"{'rank':>4}  {'run':<8}  {'parameters':<40}{'val acc':>9}{'val F1':>9}{'val loss':>9}"
             f"{'epochs':>7}{'train s':>9}  status"]
    for row in rows:
        text = ", ".join(f"{p}={row['params'][p]}" for p in params if p in row["params"])
        scores = (f"{row['val_accuracy']:>9.4f}{row['val_macro_f1']:>9.4f}{row['val_loss']:>9.4f}"
                  f"{row['epochs_run']:>7}{row['train_seconds']:>9.1f}" if row["rank"] is not None
                  else f"{'':>43}")
        lines.append(f"{row['rank'] or '-':>4}  {row['run']:<8}  {text:<40}{scores}  {row['status']}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
