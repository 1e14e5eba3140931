"""Compare trained variants: parameters, val loss/accuracy/macro-F1, training time and measured inference speed.

    python -m pipelines.compare [--models models/] [--out DIR] [--speed-images 256] [--repeats 3]
        [--batch-size 256] [--no-speed] [--quiet]

Inputs: every variant folder under --models (one holding ``config.json``, searched recursively, so
runs of `pipelines.search_hparams` count too; the rule `pipelines.fit_ensemble` shares).
Val scores come from the saved predictions; the parameter count and training time from
``config.json``; images/s is measured here: ``predict_proba`` on --speed-images rows (the
variant's own val inputs from its feature store, or, when that store is gone, crops of the
bundled sample with their BOVW), one warm-up call, then the best of --repeats calls. Only the
network is timed, not the feature extraction. --no-speed skips the timing.

Outputs in --out (default <models>/comparison): ``comparison.csv``, ``comparison.md`` and
``comparison.png`` (val accuracy against images/s and against parameters, labelled points),
rows sorted by val accuracy; existing ones are replaced only with --force, and --out may not be
or lie inside a variant folder. A folder without any variant is refused.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .cli_errors import CommandLineParser, reports_errors
from .cli_numbers import MAX_BATCH, int_in


def build_parser() -> argparse.ArgumentParser:
    from ensemble_fer import paths
    from ensemble_fer.evaluation import comparison
    p = CommandLineParser(prog="python -m pipelines.compare", description=__doc__.split("\n")[0])
    p.add_argument("--models", type=Path, default=paths.models_dir(),
                   help="folder searched recursively for variant folders (default: models/ in the current folder)")
    p.add_argument("--out", type=Path, help="output folder (default: <models>/comparison)")
    p.add_argument("--speed-images", type=int_in(1, 100_000), default=comparison.SPEED_IMAGES, metavar="N",
                   help=f"rows each variant is timed on (1 to 100000; default {comparison.SPEED_IMAGES})")
    p.add_argument("--repeats", type=int_in(1, 1000), default=comparison.REPEATS, metavar="N",
                   help=f"timed calls after the warm-up; the best counts (1 to 1000; default {comparison.REPEATS})")
    p.add_argument("--batch-size", type=int_in(1, MAX_BATCH), default=comparison.BATCH_SIZE, metavar="N",
                   help=f"batch size of predict_proba (1 to {MAX_BATCH}; default {comparison.BATCH_SIZE})")
    p.add_argument("--no-speed", action="store_true", help="do not load the models to time them")
    p.add_argument("--force", action="store_true",
                   help="replace the comparison files already in --out (refused otherwise, before any scoring)")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    return p


@reports_errors
def main(argv=None) -> int:
    from ensemble_fer import paths
    from ensemble_fer.evaluation import comparison

    args = build_parser().parse_args(argv)
    say = (lambda *a, **k: None) if args.quiet else print
    out = args.out or args.models / "comparison"
    comparison.check_out(out, force=args.force)     # before any model is scored or timed
    result = comparison.compare_variants(args.models, speed_images=args.speed_images, repeats=args.repeats,
                                         batch_size=args.batch_size, sample_dir=paths.sample_data(), speed=not args.no_speed,
                                         say=say)
    paths = comparison.write_comparison(result, out, force=args.force)
    print(summary(result))
    print(f"wrote {paths['csv']}, {paths['md']} and {paths['png']}")
    return 0


def summary(result: dict) -> str:
    lines = [f"{'variant':<32}{'params':>12}{'val loss':>10}{'val acc':>9}{'val F1':>9}{'train s':>9}{'img/s':>10}"]
    for r in result["rows"]:
        speed = f"{r['images_per_second']:>10.1f}" if r["images_per_second"] is not None else f"{'-':>10}"
        train = f"{r['train_seconds']:>9.1f}" if r["train_seconds"] is not None else f"{'-':>9}"
        lines.append(f"{r['name']:<32}{r['n_params']:>12,}{r['val_loss']:>10.4f}{r['val_accuracy']:>9.4f}"
                     f"{r['val_macro_f1']:>9.4f}{train}{speed}")
    lines += [f"note: {n}" for n in result["notes"]]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
