"""Export: a trained variant or ensemble to TensorFlow Lite, for phones, small boards and quick CPUs.

    python -m pipelines.export [--model PATH] --out DIR [--format float32 float16 int8 int8-full onnx] [--force]

Writes ``DIR/<format>/`` for each format: the model laid out as before (``ensemble.json`` and
member folders, or a variant's files) with ``model.tflite`` networks, ready for
``ensemble-fer predict --model DIR/<format>`` (TFLite, or ONNX with ``--format onnx``); and ``DIR/export.json``: per format the size of
every member and the largest difference from the Keras model's probabilities on 256 check
crops. An existing DIR is refused unless --force (it is replaced only once the new export is
complete). See ``ensemble_fer/inference/export.py``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ensemble_fer import release

from .cli_errors import CommandLineParser, reports_errors


def build_parser() -> argparse.ArgumentParser:
    from ensemble_fer.inference.export import ALL_FORMATS, FORMATS

    p = CommandLineParser(prog="python -m pipelines.export", description=__doc__.split("\n")[0])
    p.add_argument("--model", metavar="MODEL", help=release.MODEL_HELP)
    p.add_argument("--out", type=Path, required=True, metavar="DIR", help="the export folder")
    p.add_argument("--format", nargs="+", choices=ALL_FORMATS, default=list(FORMATS), metavar="FORMAT",
                   help=f"formats to write, of {', '.join(ALL_FORMATS)} (default: {' '.join(FORMATS)}; int8-full "
                        f"quantises activations too, calibrated on the bundled sample's crops: the quickest, a little "
                        f"coarser (a BOVW input's normalisation stays float); "
                        f"onnx needs pip install 'ensemble_fer[onnx]')")
    p.add_argument("--force", action="store_true", help="replace an existing DIR")
    p.add_argument("--quiet", action="store_true", help="only the final table")
    return p


@reports_errors
def main(argv=None) -> int:
    from ensemble_fer.inference import export

    args = build_parser().parse_args(argv)
    say = (lambda *a, **k: None) if args.quiet else (lambda m: print(m, file=sys.stderr))
    report = export.export_model(release.resolve_model(args.model), args.out, args.format, force=args.force, say=say)
    print(f"{'format':<8} {'size (MB)':>10} {'max |p - p_keras|':>18} {'same top class':>15}")
    for precision, entry in report["formats"].items():
        print(f"{precision:<8} {entry['total_bytes'] / 1e6:>10.2f} {entry['max_abs_diff_vs_keras']:>18.5f} "
              f"{entry['same_top_class']:>15.1%}")
    print(f"wrote {args.out} (predict with --model {args.out / report_first(report)})")
    return 0


def report_first(report) -> str:
    return next(iter(report["formats"]))


if __name__ == "__main__":
    sys.exit(main())
