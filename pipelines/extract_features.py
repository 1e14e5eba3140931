"""Stage 1: faces, landmarks, HOG and BOVW for every image of a dataset.

    python -m pipelines.extract_features [--data PATH] [--format auto|fer2013-csv|fer2013-folders|folders]
        [--out DIR] [--detector hog|mmod|none] [--filter blank|paper] [--n-jobs N] [--limit N] [--force]
        [--scheduler tcp://host:8786]

Inputs: a dataset (default: the bundled sample, read only). Outputs: features/<name>/ under
the current folder (or --out) with one .npz per split and manifest.json (see docs/ARCHITECTURE.md).

An interrupted run (Ctrl-C, kill, crash) keeps its finished chunks in <out>/.partial; rerun it
with the same arguments to resume. An existing store is kept: a rerun on the same images (by
content, not file name) and settings reports it up to date; anything else needs --force, and
--force replaces the old store only once the new one is complete. One run at a time writes an
--out folder (a second stops at once, naming the first's pid).

--scheduler ADDRESS runs the joblib chunks on a running dask cluster (``dask scheduler`` and
``dask worker ADDRESS`` on the machines, each with this package and ``ensemble_fer[cluster]``
installed); the arrays are the same as on one machine (tests/test_distributed.py).
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path

from ensemble_fer import paths
from ensemble_fer.errors import InputError
from ensemble_fer.features import bovw, datasets, feature_store

from .cli_errors import CommandLineParser, RawDescriptionDefaultsHelpFormatter, reports_errors
from .cli_numbers import MAX_SEED, N_JOBS, int_in, with_range

# The module docstring without its usage line (argparse writes its own).
_DESCRIPTION = "\n\n".join(part for i, part in enumerate(__doc__.strip().split("\n\n")) if i != 1)


def build_parser() -> argparse.ArgumentParser:
    p = CommandLineParser(prog="python -m pipelines.extract_features", description=_DESCRIPTION,
                                formatter_class=RawDescriptionDefaultsHelpFormatter)
    p.add_argument("--data", type=Path, help="dataset CSV or folder (default: the bundled sample)")
    p.add_argument("--format", choices=datasets.FORMATS, default="auto")
    p.add_argument("--out", type=Path, help="output folder (default: features/<dataset name> in the current folder)")
    p.add_argument("--detector", choices=bovw.DETECTORS, default="hog",
                   help="face detector run on each crop (default hog; measured hit rates: the project's data/README.md)")
    p.add_argument("--filter", choices=feature_store.FILTERS, default="blank",
                   help="blank: drop near-blank train crops; paper: also drop train crops with zero or "
                        "several faces (EmoNet). Val/test are never dropped, only flagged.")
    p.add_argument("--n-jobs", type=N_JOBS, default=-1, help=with_range("worker processes (-1: all cores)", N_JOBS))
    p.add_argument("--limit", type=int_in(1), help="at most this many images per split (seeded sample; >= 1)")
    p.add_argument("--seed", type=int_in(0, MAX_SEED), default=0,
                   help=f"seed for --limit and the held-out val split (0 to {MAX_SEED})")
    p.add_argument("--ignore-unknown-labels", action="store_true",
                   help="leave out label folders that are not emotions instead of stopping")
    p.add_argument("--force", action="store_true",
                   help="replace an existing store (or an interrupted run made with other settings); the old "
                        "store stays until the new one is complete")
    p.add_argument("--scheduler", metavar="ADDRESS",
                   help="run the extraction on this dask scheduler, e.g. tcp://host:8786 (needs ensemble_fer[cluster])")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


@reports_errors
def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    from ensemble_fer.features import faces

    faces.require_model_files("extraction (68 landmarks per face for the BOVW features)")
    dataset = datasets.open_dataset(args.data or paths.sample_data(), args.format, ignore_unknown_labels=args.ignore_unknown_labels)
    out = args.out or paths.features_dir(dataset.name)
    config = bovw.ExtractorConfig(detector=args.detector)
    with on_cluster(args.scheduler):
        manifest = feature_store.extract(dataset, out, config, filter=args.filter, n_jobs=args.n_jobs,
                                         limit=args.limit, force=args.force, seed=args.seed,
                                         progress=not args.quiet)
    if manifest.get("up_to_date"):
        print(f"{out}: already extracted with these settings (pass --force to redo)")
    print(summary_table(manifest))
    print(f"wrote {out}")
    return 0


@contextlib.contextmanager
def on_cluster(address):
    """Run the joblib work inside on the dask cluster at ``address`` (nothing when ``None``):
    ``joblib.parallel_config(backend="dask")`` in a ``dask.distributed`` client for it."""
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


def summary_table(manifest: dict) -> str:
    rows = ["split   images    kept  face_found  no_face  several  blank"]
    for split, s in manifest["splits"].items():
        face = "-" if s["face_found"] is None else s["face_found"]
        f = s["flags"]
        rows.append(f"{split:<6}{s['n']:>8}{s['kept']:>8}{face:>12}{f['no_face']:>9}{f['several_faces']:>9}"
                    f"{f['blank']:>7}")
    t = manifest["timing"]
    rate = f", {t['images_per_second']} img/s" if t.get("images_per_second") else ""
    rows.append(f"{t['images']} images, read {t['read_seconds']} s, extract {t['extract_seconds']} s{rate} "
                f"(detector {manifest['config']['detector']}, filter {manifest['filter']})")
    skipped = manifest["dataset"].get("skipped_non_images", {"count": 0, "files": []})
    if skipped["count"]:
        names = sorted({Path(f).name for f in skipped["files"]})
        rows.append(f"skipped {skipped['count']} files that are not images ({', '.join(names[:5])}"
                    f"{', ...' if len(names) > 5 else ''})")
    sharp = manifest["sharpness"]
    rows.append(f"sharpness (median Laplacian variance): {sharp['median_laplacian_variance']}")
    rows += [f"warning: {warning}" for warning in sharp["warnings"]]
    return "\n".join(rows)


if __name__ == "__main__":
    sys.exit(main())
