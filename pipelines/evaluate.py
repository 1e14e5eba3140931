"""Evaluate a trained variant or an ensemble on a dataset: the whole split and its face-found subset.

    python -m pipelines.evaluate [--model PATH] [--data PATH] [--format auto|fer2013-csv|fer2013-folders|folders]
        [--split train|val|test|all] [--tta N] [--ignore-unknown-labels] [--face-detector auto|hog|mmod|none]
        [--cache DIR | --no-cache] [--n-jobs N] [--json FILE] [--out DIR] [--force]

--model: a variant folder (models/cnn5) or an ensemble.json. --data: a dataset (CSV, FER2013
folders, class folders) or a feature store folder made with the model's extractor config (default: the bundled sample).

Features of the split are extracted with the model's own extractor config (only that split,
in parallel) and cached in ``<cache>/eval-<dataset>-<hash>/<split>.npz`` (default cache:
the user's cache folder, ``$XDG_CACHE_HOME/ensemble_fer/features`` or
``~/.cache/ensemble_fer/features``), so a rerun or another model with the same features skips the extraction.
The cache is keyed on the files' content (sizes and modification times), so pictures replaced
under the same names are extracted again.
--split defaults to test when the data has it, else val (printed either way); a class-folder
set without split folders (happy/, sad/, ... directly inside it) is scored whole (``all``); any
other dataset without a val split gets the feature store's held-out val (10 % of train, seed
0) for --split val or train, and ``all`` scores every image. In class-folder sets each
picture's face is the one ``pipelines.predict`` reports first (dlib HOG, upsample auto, the
largest; a 48x48 picture is the face itself), so every split scores what predict says about
the same pictures; pictures without a face are left out and counted (counts.no_face). Labels outside the model's label set are left out and counted;
label folders that are not emotions stop the run unless --ignore-unknown-labels.

Reported: accuracy, macro-F1, log-loss, per-class precision/recall/F1 and the confusion
matrix, on the whole split and on the face-found subset (exactly one face detected: the
EmoNet paper's filtered protocol; counted with the model's detector, or dlib's HOG detector
when the model was trained without one), each labelled; for an ensemble also each member.
--tta N averages N deterministic views per image (identity, mirror, small rotations/zooms);
without it the model's own views are used (an ensemble's ``tta``: 2 for the release, 0 for a
variant), --tta 0 turns them off.

--json FILE writes the result; its keys: model {path, kind, members, member_folders, weights,
classes, label_set, extractor, default_tta, feature_store}, data {path, format, name, kind,
ignored_label_folders}, split, split_note, tta, classes, counts {images, evaluated, no_face,
left_out {outside_label_set, by_label}, face_found}, face_detector, subsets, all (metrics of
the whole split: n, accuracy, macro_f1, weighted_f1, log_loss, classes, per_class,
confusion_matrix), face_found (the same for the subset, or null), face_found_note, members
{name: {all, face_found: {n, accuracy, macro_f1}}}, features, seconds.
--out DIR writes evaluation.md, evaluation.json and confusion_matrix[_face_found].png.
An existing --json FILE or --out DIR is refused before any work unless --force; with --force
the new result is built beside it and replaces it only once complete (an interrupted run
leaves the old one as it was).
"""

from __future__ import annotations

import argparse
import sys
import contextlib
from pathlib import Path

from ensemble_fer import artifacts, paths
from ensemble_fer.features import bovw, datasets
from ensemble_fer.evaluation import evaluate as evaluation
from ensemble_fer.features.augment import MAX_TTA, check_tta
from ensemble_fer.inference.loading import load_predictor
from ensemble_fer.errors import InputError
from ensemble_fer import release

from .cli_errors import CommandLineParser, reports_errors
from .cli_numbers import MAX_BATCH, N_JOBS, int_in, with_range


def build_parser() -> argparse.ArgumentParser:
    p = CommandLineParser(prog="python -m pipelines.evaluate", description=__doc__.split("\n")[0])
    p.add_argument("--model", metavar="MODEL", help=release.MODEL_HELP)
    p.add_argument("--data", type=Path, help="dataset CSV or folder, or a feature store folder (default: the "
                                              "bundled sample, as for extract)")
    p.add_argument("--format", choices=datasets.FORMATS, default="auto")
    p.add_argument("--split", choices=("train", "val", "test", "all"),
                   help="split to score (default: test if the data has it, else val; a folder of class folders "
                        "with no split folders is scored whole)")
    p.add_argument("--tta", type=int_in(0, MAX_TTA), metavar="N",
                   help=f"test-time augmentation: average N views per image (0 none, up to {MAX_TTA}; "
                        f"default: the model's own, 2 for the release)")
    p.add_argument("--ignore-unknown-labels", action="store_true",
                   help="leave out label folders that are not emotions instead of stopping")
    # --detector as in every stage; --face-detector, its first name, still works
    p.add_argument("--detector", "--face-detector", dest="face_detector",
                   choices=("auto",) + tuple(sorted(bovw.DETECTORS)), default="auto",
                   help="detector that decides the face-found subset (auto: the model's, or hog if it has none; "
                        "none: no subset)")
    p.add_argument("--cache", type=Path,
                   help=f"folder of the extraction cache (default: {paths.evaluation_cache()}, the user's cache "
                        f"folder)")
    p.add_argument("--no-cache", action="store_true", help="extract in memory only")
    p.add_argument("--n-jobs", type=N_JOBS, default=-1,
                   help=with_range("worker processes for extraction (-1: all cores)", N_JOBS))
    p.add_argument("--batch-size", type=int_in(1, MAX_BATCH), default=256, help=f"crops per batch (1 to {MAX_BATCH})")
    p.add_argument("--json", type=Path, help="write the result as JSON here (refused if it exists, unless --force)")
    p.add_argument("--out", type=Path, help="write evaluation.md, evaluation.json and figures into this folder "
                                            "(refused if it exists, unless --force)")
    p.add_argument("--force", action="store_true",
                   help="replace an existing --json file or --out folder; the old one stays until the new one "
                        "is complete")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    return p


@reports_errors
def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.tta is not None:
        check_tta(args.tta, where="--tta")   # fail before any extraction, not after it
    if args.json is not None and args.json.is_dir():
        raise InputError(f"--json {args.json}: is a folder; give the path of a .json file")
    if args.out is not None and args.out.exists() and not args.out.is_dir():
        raise InputError(f"--out {args.out}: is a file; give a folder for evaluation.md, evaluation.json and figures")
    say = (lambda *a, **k: None) if args.quiet else print
    outputs = {key: path for key, path in (("json", args.json), ("out", args.out)) if path is not None}
    artifacts.check_outputs_apart({f"--{key}": path for key, path in outputs.items()})
    for key, path in outputs.items():     # before --force is looked at: an input is never replaced
        artifacts.check_apart(path, {"--data": args.data, "--model": release.resolve_model(args.model)},
                              output_name=f"--{key}")
    with contextlib.ExitStack() as stack:
        # Locked and checked before the model is loaded or anything extracted: a refused
        # overwrite costs nothing, and nothing is replaced until the new result is complete.
        for path in outputs.values():
            stack.enter_context(artifacts.output_lock(path))
        # --json and --out are one result: swapped in as one unit
        together = stack.enter_context(artifacts.replacing_together(outputs.values(), force=args.force))
        building = {key: together[path] for key, path in outputs.items()}
        predictor = load_predictor(release.resolve_model(args.model))
        data = evaluation.load_eval_data(args.data or paths.sample_data(), predictor, split=args.split, format=args.format,
                                         ignore_unknown_labels=args.ignore_unknown_labels,
                                         cache=None if args.no_cache else args.cache or paths.evaluation_cache(), n_jobs=args.n_jobs,
                                         face_detector=args.face_detector, progress=not args.quiet, say=say)
        result = evaluation.evaluate_predictor(predictor, data, tta=args.tta, batch_size=args.batch_size)
        print(evaluation.evaluation_summary(result))
        if args.json:
            artifacts.write_json(building["json"], result)
        if args.out:
            evaluation.write_evaluation(result, building["out"])
    if args.json:
        print(f"wrote {args.json}")
    if args.out:
        print(f"wrote {args.out / 'evaluation.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
