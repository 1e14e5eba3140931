"""Predict: the emotion of every face in photos, videos and folders, as CSV.

    python -m pipelines.predict PATH... [--model PATH] [--csv FILE] [--annotate DIR|FILE] [--gradcam DIR]
        [--force | --resume] [--tta N] [--detector hog|mmod] [--upsample auto|fast|N] [--recursive] [--batch-size N]
        [--workers N] [--fps N] [--quiet]

Videos (any container OpenCV reads) are handled by :mod:`ensemble_fer.inference.prediction_run`: frames
sampled at --fps, one row per face per sampled frame with ``frame``, ``time_s`` and
``track`` columns appended (empty in photo rows; the columns exist only when an input is a
video), a per-track summary on stderr, ``--annotate out.mp4`` for one video.

PATHs are image files or folders (a folder's image files, chosen by extension; --recursive
descends into sub-folders). The CSV (to FILE, or to stdout) has the columns
``path, face, left, top, right, bottom, emotion``, one probability column per class, then
``status`` and ``reason``. Every input file gets at least one row, written as soon as it is
done: one row per face (status ``ok``; ``face`` counts from 0, largest face first); for a
photo without a face one row with an empty emotion and status ``no_face``; for a file that cannot be
read (corrupt, not an image, over Pillow's size limit, missing) one row with status ``error``
and the reason, also reported on stderr. A 48x48 image is taken as a face crop (box = whole
frame). The exit status is non-zero only when no input could be read at all.

--workers N (N >= 2) decodes photos and finds their faces in N worker processes while this
process runs the network on the crops as they come; the rows (and their order), the errors
and the pictures are those of --workers 1. Videos are read in this process, frame after frame.

--annotate DIR writes every photo with its boxes and ``<emotion> <score>`` labels (and every
video as ``DIR/<name>.mp4``); --annotate FILE, with a picture suffix for one photo or a video
suffix for one video, writes that one input there;
--gradcam DIR writes, per face, the face crop the network saw beside its Grad-CAM map of the
predicted emotion (the members' maps weighted as their share of the score), 192 px with a
caption (``<photo>_face<k>_<emotion>.png``).

Existing outputs are never overwritten silently: an existing --csv FILE, --annotate DIR or
--gradcam DIR is refused before any work, unless --force (start over) or --resume (continue).
Rows and pictures go to ``FILE.partial`` and ``DIR.partial`` while the run goes, and replace
FILE and DIR only when every input is done, so an interrupted run keeps what it did and an
earlier result stays until the new one is complete. --resume continues from ``FILE.partial``
(or from a finished FILE, to add new inputs), skipping every file that already has an ``ok``
or ``no_face`` row; files with an ``error`` row are tried again.

A face crop that is near-blank (all black or white; extraction's ``blank_std``) gets status
``blank`` and no emotion. --resume continues only the run that wrote the CSV: a hidden record
beside it (``.FILE.run.json``) holds the model's fingerprint and the options that change rows,
and a mismatch is refused; inputs match by place (``photos/`` and ``/abs/photos/`` are one).
An output that is, contains or lies inside an input file (or is an input folder) is refused,
whatever the flags; an output inside an input folder is never read back as an input. File
names that are not UTF-8 are written with their bytes escaped (``caf\\xe9.jpg``), and a text
cell a spreadsheet would evaluate (starting with ``= + - @``, tab, CR) gets a leading ``'``.
See docs/RELIABILITY.md.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np

from ensemble_fer import release
from ensemble_fer.features.faces import FAST_SEARCH_GIVES_UP, UPSAMPLE_FAST

from .cli_errors import CommandLineParser, EXIT_BAD_INPUT, reports_errors

def build_parser() -> argparse.ArgumentParser:
    from ensemble_fer.features.faces import MAX_UPSAMPLE
    from ensemble_fer.features.augment import MAX_TTA

    from .cli_numbers import MAX_BATCH, MAX_FPS, MAX_WORKERS, float_in, int_in

    p = CommandLineParser(prog="python -m pipelines.predict", description=__doc__.split("\n")[0])
    p.add_argument("paths", nargs="+", type=Path, metavar="PATH",
                   help="photos, videos (mp4, mov, avi, mkv, webm, ... : any container OpenCV reads) and/or folders "
                        "of them (--recursive for their sub-folders)")
    p.add_argument("--model", metavar="MODEL", help=f"{release.MODEL_HELP}; {FAST_SEARCH_GIVES_UP}")
    p.add_argument("--csv", type=file_path, metavar="FILE",
                   help="write the CSV here, row by row into FILE.partial, renamed to FILE when every input is "
                        "done (default: stdout); an existing FILE is refused unless --force or --resume")
    p.add_argument("--annotate", type=output_path, metavar="PATH",
                   help="write the inputs with boxes and labels: to a folder (one picture per photo, NAME.mp4 per "
                        "video), or, for a single input, to a file: a picture (.jpg, .png, .bmp) for a photo, a "
                        "video (.mp4, ...) for a video; refused if it exists, unless --force (or --resume for a "
                        "folder)")
    p.add_argument("--gradcam", type=output_path, metavar="DIR",
                   help="write a Grad-CAM overlay per face of each photo here (not for videos; refused if it "
                        "exists, unless --force or --resume); "
                        "Keras models only: the release or a trained variant, not the fast model or another export, "
                        "which keep no gradients")
    again = p.add_mutually_exclusive_group()
    again.add_argument("--force", action="store_true",
                       help="start over, replacing existing outputs (they stay until the new ones are complete) "
                            "and discarding an interrupted run's FILE.partial")
    again.add_argument("--resume", action="store_true",
                       help="continue an interrupted run (FILE.partial) or add to a finished FILE: files that "
                            "already have an ok, no_face or blank row are skipped, the rest predicted (needs --csv)")
    p.add_argument("--tta", type=int_in(0, MAX_TTA), metavar="N",
                   help=f"test-time augmentation views (0: none, up to {MAX_TTA}; default: the model's own, 2 for the "
                        f"release)")
    p.add_argument("--detector", choices=("hog", "mmod"), default="hog",
                   help="dlib face detector: hog (fast, frontal) or mmod (CNN, more poses, slow on a CPU)")
    p.add_argument("--upsample", type=upsample_value, metavar="auto|fast|N",
                   help=f"times the photo is doubled before detection, 0 to {MAX_UPSAMPLE} (1: faces down to ~37 px; "
                        f"0: ~73 px, 4x faster); auto: 0, then 1 unless every face found is 146 px or more; fast: "
                        f"the photo at 0.6, then at 1.6 unless a face was found (faces down to ~46 px). Default: "
                        f"fast for --model fast, auto for any other model. A photo that would need more memory "
                        f"than is available gets an error row")
    p.add_argument("--recursive", action="store_true", help="also read the folders inside a folder")
    p.add_argument("--batch-size", type=int_in(1, MAX_BATCH), default=64, metavar="N",
                   help=f"face crops per network batch (1 to {MAX_BATCH})")
    p.add_argument("--workers", type=int_in(1, MAX_WORKERS), default=1, metavar="N",
                   help=f"processes that decode photos and find their faces while this one runs the network, 1 to "
                        f"{MAX_WORKERS} (1: all in this process; more than the cores gains nothing); the rows are the "
                        f"same whatever N. Photos only: videos are read here, frame after frame")
    p.add_argument("--fps", type=float_in(0, MAX_FPS), default=4.0, metavar="N",
                   help=f"video frames sampled per second of video, in (0, {MAX_FPS:g}]; at most the clip's own frame "
                        f"rate is used (videos: any container OpenCV reads)")
    p.add_argument("--quiet", action="store_true", help="no progress bar or summary")
    return p


def output_path(text: str) -> Path:
    """An output path; ``.``, ``..`` or ``x/..`` made absolute, since the output is built beside
    it under its name (``.out.partial``) and swapped in, and those have no usable name."""
    path = Path(text)
    return Path(os.path.abspath(path)) if path.name in ("", ".", "..") else path


def file_path(text: str) -> Path:
    """``--csv``'s FILE: a path ending in a separator names a folder, not a file to write."""
    if text.endswith(("/", os.sep)):
        raise argparse.ArgumentTypeError(f"{text!r} ends with '/', which names a folder; give the path of the CSV "
                                         f"file to write, e.g. {text.rstrip('/' + os.sep) or '.'}/predictions.csv")
    return output_path(text)


def upsample_value(text: str) -> int | str:
    """``--upsample``'s value, checked as parsed (:func:`ensemble_fer.features.faces.parse_upsample`)."""
    from ensemble_fer.errors import InputError
    from ensemble_fer.features.faces import parse_upsample

    try:
        return parse_upsample(text)
    except InputError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


@reports_errors
def main(argv=None) -> int:
    from ensemble_fer import EmotionRecognizer
    from ensemble_fer.errors import InputError

    args = build_parser().parse_args(argv)
    if args.resume and not args.csv:
        raise InputError("--resume needs --csv FILE: the CSV's rows say which inputs are done")
    from ensemble_fer.inference import video
    from ensemble_fer.inference.prediction_csv import Outputs, run_record
    from ensemble_fer.inference.prediction_run import (annotate_target, any_readable, list_inputs, own_outputs,
                                                       predict_files, predict_videos, skipped_folder_notes)

    video.check_fps(args.fps)
    own = own_outputs(args)
    from ensemble_fer import artifacts
    for option, path in own:      # before --force is looked at: an input is never replaced
        artifacts.check_apart(path, args.paths, output_name=option, allow_inside=True)
    artifacts.check_outputs_apart({"--csv": args.csv, "--annotate": args.annotate, "--gradcam": args.gradcam})
    files, problems = list_inputs(args.paths, args.recursive, exclude=[path for _, path in own])
    if not args.quiet:
        for note in skipped_folder_notes(args.paths, args.recursive, exclude=[path for _, path in own]):
            print(f"note: {note}", file=sys.stderr)
    n_videos = sum(video.is_video(path) for path, _ in files)
    if args.gradcam and files and n_videos == len(files):
        raise InputError(f"--gradcam {args.gradcam}: Grad-CAM maps are drawn for photos only, and every input is "
                         f"a video; predict the videos without --gradcam")
    if args.gradcam and n_videos and not args.quiet:
        print(f"note: --gradcam: no maps for the {n_videos} video(s); Grad-CAM maps are drawn for photos only",
              file=sys.stderr)
    annotate_file = annotate_target(args, files)     # --annotate out.mp4 / out.jpg: one input
    if (args.annotate is not None and annotate_file is None and not args.annotate.exists()
            and args.annotate.suffix[1:].isalpha()):
        # --annotate out.txt, out.gif: not a suffix a picture is written in, so a folder (as --help
        # says); likely not what was meant, so said even under --quiet
        print(f"warning: --annotate {args.annotate}: a folder of pictures is written there ({args.annotate.suffix} "
              f"is not a picture or video suffix)", file=sys.stderr)
    outputs = Outputs(args.csv, None if annotate_file else args.annotate, args.gradcam, force=args.force,
                      resume=args.resume, video=n_videos > 0)
    outputs.check()     # before the model loads: a refused output costs nothing
    if not files and not problems:
        folders = [str(path) for path in args.paths if Path(path).is_dir()]
        print(f"error: {', '.join(folders) or 'the inputs'}: no image files to read", file=sys.stderr)
        return EXIT_BAD_INPUT
    if not any_readable(files, problems):
        # Every input is missing or broken: said now, before TensorFlow starts (10-25 s).
        print("error: no input could be read", file=sys.stderr)
        return EXIT_BAD_INPUT
    # after the inputs: the predictor module brings scipy and scikit-learn (seconds)
    from ensemble_fer.features.augment import check_tta

    if args.tta is not None:
        check_tta(args.tta, where="--tta")
    recognizer = EmotionRecognizer.load(args.model, detector=args.detector, upsample=args.upsample)
    classes = recognizer.classes
    if args.gradcam:
        recognizer.gradcam_models()     # a BOVW-only model fails here, before any work
    # One blank crop through every member loads the models now, so that a model file Keras
    # cannot read stops the run before any output is started.
    recognizer.predict(np.zeros((48, 48), np.uint8))
    outputs.record = run_record(recognizer, args)

    with outputs.open(classes) as sink:
        videos = [(path, name) for path, name in files if video.is_video(path) and not sink.is_done(path)]
        counts = predict_files(recognizer, [f for f in files if not video.is_video(f[0])], problems, sink, args,
                               None if annotate_file is None or video.is_video(annotate_file) else annotate_file)
        predict_videos(recognizer, videos, sink, args, counts, annotate_file)
    if not args.quiet:
        written = [str(path) for path in (args.csv, annotate_file) if path is not None] + [
            f"{what} in {path}" for what, path in (("pictures", None if annotate_file else args.annotate),
                                                   ("Grad-CAM maps", args.gradcam)) if path is not None]
        where = f"; wrote {', '.join(written)}" if written else ""
        skipped = f", {counts['skipped']} done before (--resume)" if counts["skipped"] else ""
        n_videos = counts.get("videos", 0)
        read = f"{counts['read'] - n_videos} photo(s)" + (f" and {n_videos} video(s)" if n_videos else "")
        # the fast search's trade-off, where it is made: small faces beside others go unseen
        search = (f" (--upsample {recognizer.upsample}: faces under ~46 px may be missed; --upsample auto finds "
                  f"them)" if recognizer.upsample == UPSAMPLE_FAST else "")
        print(f"{read} read, {counts['faces']} face(s){search}, {counts['errors']} unreadable{skipped}"
              f"{where}", file=sys.stderr)
    if counts["read"] == 0 and counts["skipped"] == 0:
        print("error: no input could be read", file=sys.stderr)
        return EXIT_BAD_INPUT
    return 0


if __name__ == "__main__":
    sys.exit(main())
