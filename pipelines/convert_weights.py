"""Port a published pretrained trunk into a block's weights, checked against the original.

    python -m pipelines.convert_weights BLOCK [--source ../shared/weights] [--out pretrained] [--force] [--no-check]

Inputs: the original files under --source (``shared/weights/<trunk>/``, hash-checked).
Outputs in --out: ``<block>_<weights>.npz`` (pickle-free), ``.npz.json`` (provenance, licence, the
content hash, the port's max |difference| from the original network) and the licence. Without
--force a port changes none of these that exist (a rebuild may rewrite identical bytes); a folder
in the place of one is never replaced. Run from
the repository root, the default --out is the ``pretrained/`` folder the blocks load from
(elsewhere, point ENSEMBLE_FER_PRETRAINED at --out).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from .cli_errors import CommandLineParser, reports_errors


def build_parser() -> argparse.ArgumentParser:
    p = CommandLineParser(prog="python -m pipelines.convert_weights", description=__doc__.split("\n")[0])
    p.add_argument("block", help="a block with ported weights (faceres_mobilenet, ...)")
    p.add_argument("--source", type=Path, default=Path("../shared/weights"),
                   help="folder holding the published originals (default ../shared/weights)")
    p.add_argument("--out", type=Path, default=Path("pretrained"), help="output folder (default pretrained/)")
    p.add_argument("--force", action="store_true", help="replace the port's files that exist")
    p.add_argument("--no-check", action="store_true",
                   help="do not run the original network (its framework may be missing: PyTorch for "
                        "efficientnet_lite0); refused unless the arrays are exactly the registered, checked ones")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    return p


@reports_errors
def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    from ensemble_fer.models import blocks  # noqa: F401  registers every family
    from ensemble_fer.models.porting import port

    port(args.block, args.source, args.out, force=args.force, say=(lambda *a, **k: None) if args.quiet else print,
         check=not args.no_check)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
