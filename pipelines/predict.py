"""Predict: the emotion of every face in photos and folders, as CSV.

    python -m pipelines.predict PATH... [--model PATH] [--csv FILE] [--annotate DIR] [--gradcam DIR]
        [--tta N] [--detector hog|mmod] [--upsample N] [--recursive] [--batch-size N] [--quiet]

PATHs are image files or folders (a folder's image files, chosen by extension; --recursive
descends into sub-folders). The CSV (to FILE, written atomically, or to stdout) has the columns
``path, face, left, top, right, bottom, emotion`` and one probability column per class: one row
per face (``face`` counts from 0, largest face first), and for a photo without a face one row
with emotion ``no_face`` and the other columns empty. A 48x48 image is taken as a face crop
(box = whole frame). Files that cannot be read are reported on stderr, one line each, and
skipped; the exit status is non-zero only when no input could be read at all.

--annotate DIR writes every photo with its boxes and ``<emotion> <score>`` labels;
--gradcam DIR writes, per face, the 48x48 crop the network saw overlaid with the Grad-CAM
map of the predicted emotion (``<photo>_face<k>_<emotion>.png``).
"""

from __future__ import annotations

import argparse
import csv
import io
import sys
from collections import deque
from pathlib import Path

from .cli_errors import EXIT_BAD_INPUT, reports_errors

NO_FACE = "no_face"
FIXED_COLUMNS = ("path", "face", "left", "top", "right", "bottom", "emotion")
ANNOTATION_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp"}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m pipelines.predict", description=__doc__.split("\n")[0])
    p.add_argument("paths", nargs="+", type=Path, metavar="PATH", help="image files and/or folders")
    p.add_argument("--model", type=Path, metavar="PATH",
                   help="a trained variant folder or an ensemble.json (default: models/release)")
    p.add_argument("--csv", type=Path, metavar="FILE", help="write the CSV here (default: stdout)")
    p.add_argument("--annotate", type=Path, metavar="DIR", help="write each photo with boxes and labels here")
    p.add_argument("--gradcam", type=Path, metavar="DIR", help="write a Grad-CAM overlay per face here")
    p.add_argument("--tta", type=int, default=0, metavar="N", help="test-time augmentation views (0: none, up to 10)")
    p.add_argument("--detector", choices=("hog", "mmod"), default="hog",
                   help="dlib face detector: hog (fast, frontal) or mmod (CNN, more poses, slow on a CPU)")
    p.add_argument("--upsample", type=int, default=1, metavar="N",
                   help="times the photo is doubled before detection (1: faces down to ~40 px; 0: faster)")
    p.add_argument("--recursive", action="store_true", help="also read the folders inside a folder")
    p.add_argument("--batch-size", type=int, default=64, metavar="N", help="face crops per network batch")
    p.add_argument("--quiet", action="store_true", help="no progress bar or summary")
    return p


@reports_errors
def main(argv=None) -> int:
    from ensemble_fer import EmotionRecognizer
    from ensemble_fer.datasets import DatasetError, read_image_file

    args = build_parser().parse_args(argv)
    from ensemble_fer.inference import MAX_TTA

    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1; got {args.batch_size}")
    if not 0 <= args.tta <= MAX_TTA:
        raise ValueError(f"--tta must be from 0 (none) to {MAX_TTA}; got {args.tta}")
    files, problems = list_inputs(args.paths, args.recursive)
    for problem in problems:
        print(problem, file=sys.stderr)
    if not files:
        print("error: no image files to read", file=sys.stderr)
        return EXIT_BAD_INPUT
    recognizer = EmotionRecognizer.load(args.model, detector=args.detector, upsample=args.upsample)
    classes = recognizer.classes
    if args.gradcam:
        recognizer.gradcam_model()      # a BOVW-only model fails here, before any work

    read_ok: deque = deque()     # (path, output name) of the images handed to the recognizer, in order
    unreadable = []

    def images():
        progress = files
        if not args.quiet and (len(files) > 1 or any(p.is_dir() for p in args.paths)):
            from tqdm import tqdm

            progress = tqdm(files, desc="photos", unit="photo", file=sys.stderr)
        for path, name in progress:
            try:
                image = read_image_file(path)
            except DatasetError as exc:
                unreadable.append(path)
                _write_above_progress(progress, str(exc))
                continue
            read_ok.append((path, name))
            yield image

    rows = []
    n_faces = 0
    for faces in recognizer.iter_predict(images(), batch_size=args.batch_size, tta=args.tta):
        path, name = read_ok.popleft()
        rows.extend(csv_rows(path, faces, classes))
        n_faces += len(faces)
        if args.annotate or args.gradcam:
            write_pictures(recognizer, read_image_file(path), faces, name, args.annotate, args.gradcam)

    n_read = len(files) - len(unreadable)
    text = format_csv(rows, classes)
    if args.csv:
        from ensemble_fer.artifacts import atomic_path

        with atomic_path(args.csv) as tmp:
            tmp.write_text(text, newline="")
    else:
        sys.stdout.write(text)
    if not args.quiet:
        where = f"; wrote {args.csv}" if args.csv else ""
        print(f"{n_read} photo(s) read, {n_faces} face(s), {len(unreadable)} unreadable{where}", file=sys.stderr)
    if n_read == 0:
        print("error: no input could be read", file=sys.stderr)
        return EXIT_BAD_INPUT
    return 0


def list_inputs(paths, recursive: bool = False) -> tuple[list[tuple[Path, Path]], list[str]]:
    """``(file, output name)`` for every image to read, and one message per path that is missing.

    A file named on the command line is read whatever its extension (so a file that is not
    an image is reported, not ignored); in a folder only files with an image extension are
    taken, hidden ones left out. The output name is the file's path relative to its folder
    argument (its name for a file argument); names that collide get ``_2``, ``_3``, ...
    """
    from ensemble_fer.datasets import IMAGE_SUFFIXES

    files, problems, used = [], [], set()
    for path in paths:
        path = Path(path)
        if path.is_dir():
            pattern = path.rglob("*") if recursive else path.iterdir()
            found = sorted(f for f in pattern if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES
                           and not any(part.startswith(".") for part in f.relative_to(path).parts))
            entries = [(f, f.relative_to(path)) for f in found]
        elif path.exists():
            entries = [(path, Path(path.name))]
        else:
            problems.append(f"{path}: no such file or folder")
            continue
        for file, name in entries:
            unique, k = name, 1
            while unique in used:
                k += 1
                unique = name.with_name(f"{name.stem}_{k}{name.suffix}")
            used.add(unique)
            files.append((file, unique))
    return files, problems


def csv_rows(path, faces, classes) -> list[list]:
    """The CSV rows of one photo (see the module doc)."""
    if not faces:
        return [[str(path), "", "", "", "", "", NO_FACE] + [""] * len(classes)]
    return [[str(path), k, *face.box, face.emotion] + [f"{face.scores[c]:.6f}" for c in classes]
            for k, face in enumerate(faces)]


def format_csv(rows, classes) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(list(FIXED_COLUMNS) + list(classes))
    writer.writerows(rows)
    return buffer.getvalue()


def write_pictures(recognizer, image, faces, name: Path, annotate_dir, gradcam_dir) -> None:
    from ensemble_fer import annotate

    if annotate_dir:
        suffix = name.suffix.lower() if name.suffix.lower() in ANNOTATION_SUFFIXES else ".png"
        annotate.write_image(Path(annotate_dir) / name.with_suffix(suffix), annotate.draw_faces(image, faces))
    if gradcam_dir:
        for k, face in enumerate(faces):
            crop = recognizer.face_crop(image, face)
            overlay = annotate.heatmap_overlay(crop, recognizer.grad_cam(image, face))
            out = Path(gradcam_dir) / name.parent / f"{name.stem}_face{k}_{face.emotion}.png"
            annotate.write_image(out, overlay)


def _write_above_progress(progress, message: str) -> None:
    if hasattr(progress, "write"):
        progress.write(message, file=sys.stderr)
    else:
        print(message, file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
