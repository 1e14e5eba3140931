"""Predict: the emotion of every face in photos, videos and folders, as CSV.

    python -m pipelines.predict PATH... [--model PATH] [--csv FILE] [--annotate DIR|FILE] [--gradcam DIR]
        [--force | --resume] [--tta N] [--detector hog|mmod] [--upsample auto|fast|N] [--recursive] [--batch-size N]
        [--fps N] [--quiet]

Videos (any container OpenCV reads) are handled by ``pipelines/predict_videos.py``: frames
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
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import os
import shutil
import sys
import warnings
from collections import deque
from pathlib import Path

import numpy as np

from ensemble_fer import release
from ensemble_fer.features.faces import FAST_SEARCH_GIVES_UP

from .cli_errors import EXIT_BAD_INPUT, reports_errors

NO_FACE = "no_face"
OK, ERROR = "ok", "error"
FIXED_COLUMNS = ("path", "face", "left", "top", "right", "bottom", "emotion")
STATUS_COLUMNS = ("status", "reason")
PARTIAL = ".partial"
"""Suffix of the outputs of a run still going (or interrupted): FILE.partial, DIR.partial."""
ANNOTATION_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp"}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m pipelines.predict", description=__doc__.split("\n")[0])
    p.add_argument("paths", nargs="+", type=Path, metavar="PATH",
                   help="photos, videos (mp4, mov, avi, mkv, webm, ... : any container OpenCV reads) and/or folders "
                        "of them (--recursive for their sub-folders)")
    p.add_argument("--model", metavar="MODEL", help=f"{release.MODEL_HELP}; {FAST_SEARCH_GIVES_UP}")
    p.add_argument("--csv", type=Path, metavar="FILE",
                   help="write the CSV here, row by row into FILE.partial, renamed to FILE when every input is "
                        "done (default: stdout); an existing FILE is refused unless --force or --resume")
    p.add_argument("--annotate", type=Path, metavar="PATH",
                   help="write the inputs with boxes and labels: to a folder (one picture per photo, NAME.mp4 per "
                        "video), or, for a single input, to a file: a picture (.jpg, .png, .bmp) for a photo, a "
                        "video (.mp4, ...) for a video; refused if it exists, unless --force (or --resume for a "
                        "folder)")
    p.add_argument("--gradcam", type=Path, metavar="DIR",
                   help="write a Grad-CAM overlay per face here (refused if it exists, unless --force or --resume); "
                        "Keras models only: the release or a trained variant, not the fast model or another export, "
                        "which keep no gradients")
    again = p.add_mutually_exclusive_group()
    again.add_argument("--force", action="store_true",
                       help="start over, replacing existing outputs (they stay until the new ones are complete) "
                            "and discarding an interrupted run's FILE.partial")
    again.add_argument("--resume", action="store_true",
                       help="continue an interrupted run (FILE.partial) or add to a finished FILE: files that "
                            "already have an ok or no_face row are skipped, the rest predicted (needs --csv)")
    p.add_argument("--tta", type=int, metavar="N",
                   help="test-time augmentation views (0: none, up to 10; default: the model's own, 2 for the release)")
    p.add_argument("--detector", choices=("hog", "mmod"), default="hog",
                   help="dlib face detector: hog (fast, frontal) or mmod (CNN, more poses, slow on a CPU)")
    p.add_argument("--upsample", type=upsample_value, metavar="auto|fast|N",
                   help="times the photo is doubled before detection (1: faces down to ~40 px; 0: ~75 px, 4x "
                        "faster); auto: 0, then 1 unless every face found is 146 px or more; fast: the photo at "
                        "0.6, then at 1.6 unless a face was found (faces down to ~46 px). Default: fast for "
                        "--model fast, auto for any other model")
    p.add_argument("--recursive", action="store_true", help="also read the folders inside a folder")
    p.add_argument("--batch-size", type=int, default=64, metavar="N", help="face crops per network batch")
    p.add_argument("--fps", type=float, default=4.0, metavar="N",
                   help="video frames sampled per second of video (videos: any container OpenCV reads)")
    p.add_argument("--quiet", action="store_true", help="no progress bar or summary")
    return p


def upsample_value(text: str) -> int | str:
    """``--upsample``'s value: ``auto`` or a whole number (checked, with the other options, in main)."""
    try:
        return int(text)
    except ValueError:
        return text


@reports_errors
def main(argv=None) -> int:
    from ensemble_fer import EmotionRecognizer
    from ensemble_fer.errors import InputError

    args = build_parser().parse_args(argv)
    if args.batch_size < 1:
        raise InputError(f"--batch-size must be >= 1; got {args.batch_size}")
    if args.resume and not args.csv:
        raise InputError("--resume needs --csv FILE: the CSV's rows say which inputs are done")
    from ensemble_fer.inference import video
    from . import predict_videos

    video.check_fps(args.fps)
    files, problems = list_inputs(args.paths, args.recursive)
    if not args.quiet:
        for note in skipped_folder_notes(args.paths, args.recursive):
            print(f"note: {note}", file=sys.stderr)
    annotate_file = predict_videos.annotate_target(args, files)     # --annotate out.mp4 / out.jpg: one input
    outputs = Outputs(args.csv, None if annotate_file else args.annotate, args.gradcam, force=args.force,
                      resume=args.resume, video=any(video.is_video(path) for path, _ in files))
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
    from ensemble_fer.inference.predictor import check_tta

    if args.tta is not None:
        check_tta(args.tta, where="--tta")
    recognizer = EmotionRecognizer.load(args.model, detector=args.detector, upsample=args.upsample)
    classes = recognizer.classes
    if args.gradcam:
        recognizer.gradcam_models()     # a BOVW-only model fails here, before any work
    # One blank crop through every member loads the models now, so that a model file Keras
    # cannot read stops the run before any output is started.
    recognizer.predict(np.zeros((48, 48), np.uint8))

    with outputs.open(classes) as sink:
        videos = [(path, name) for path, name in files if video.is_video(path) and str(path) not in sink.done]
        counts = predict_files(recognizer, [f for f in files if not video.is_video(f[0])], problems, sink, args,
                               None if annotate_file is None or video.is_video(annotate_file) else annotate_file)
        predict_videos.predict_videos(recognizer, videos, sink, args, counts, annotate_file)
    if not args.quiet:
        where = f"; wrote {args.csv}" if args.csv else ""
        skipped = f", {counts['skipped']} done before (--resume)" if counts["skipped"] else ""
        n_videos = counts.get("videos", 0)
        read = f"{counts['read'] - n_videos} photo(s)" + (f" and {n_videos} video(s)" if n_videos else "")
        print(f"{read} read, {counts['faces']} face(s), {counts['errors']} unreadable{skipped}"
              f"{where}", file=sys.stderr)
    if counts["read"] == 0 and counts["skipped"] == 0:
        print("error: no input could be read", file=sys.stderr)
        return EXIT_BAD_INPUT
    return 0


def predict_files(recognizer, files, problems, sink, args, annotate_file=None) -> dict[str, int]:
    """Predict every ``(path, output name)`` in ``files`` not done yet, writing each file's
    rows (and pictures) through ``sink`` as soon as its batch has run, in input order;
    ``annotate_file``: the one photo's annotated picture (``--annotate out.jpg``)."""
    from ensemble_fer.features.datasets import DatasetError, read_image_file

    classes = recognizer.classes
    counts = {"read": 0, "faces": 0, "errors": 0, "skipped": 0}
    for problem in problems:
        print(problem, file=sys.stderr)
        path, _, reason = problem.partition(": ")
        sink.write(path, [error_row(path, reason, classes)])
        counts["errors"] += 1
    todo = [(path, name) for path, name in files if str(path) not in sink.done]
    counts["skipped"] = len(files) - len(todo)
    # Every input in order; error entries wait here until the files before them are written.
    queue: deque = deque()      # (path, name, reason or None)

    def images():
        progress = todo
        if not args.quiet and (len(todo) > 1 or any(p.is_dir() for p in args.paths)):
            from tqdm import tqdm

            progress = tqdm(todo, desc="photos", unit="photo", file=sys.stderr)
        for path, name in progress:
            try:
                image = read_photo(path)
            except DatasetError as exc:     # this file only; anything else is a bug and stops the run
                queue.append((path, name, str(exc)))
                _write_above_progress(progress, str(exc))
                continue
            queue.append((path, name, None))
            yield image

    def flush_errors():
        while queue and queue[0][2] is not None:
            path, _, reason = queue.popleft()
            sink.write(path, [error_row(path, reason.removeprefix(f"{path}: "), classes)])
            counts["errors"] += 1

    for faces in recognizer.iter_predict(images(), batch_size=args.batch_size, tta=args.tta):
        flush_errors()
        path, name, _ = queue.popleft()
        if sink.pictures:
            sink.write_pictures(recognizer, read_image_file(path), faces, name)
        if annotate_file is not None:
            from ensemble_fer import artifacts
            from ensemble_fer.inference import annotate

            with artifacts.output_lock(annotate_file):
                annotate.write_image(annotate_file, annotate.draw_faces(read_image_file(path), faces))
        sink.write(path, csv_rows(path, faces, classes))
        counts["read"] += 1
        counts["faces"] += len(faces)
    flush_errors()
    return counts


def read_photo(path):
    """``datasets.read_image_file``, with pictures past Pillow's decompression-bomb limit
    (about 89 megapixels) refused as unreadable like a corrupt file: decoding one would take
    gigabytes, and face detection on it far more."""
    from PIL import Image

    from ensemble_fer.features.datasets import DatasetError, read_image_file

    try:
        with warnings.catch_warnings():
            # Pillow only warns between its limit and twice it; both are refused alike.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            return read_image_file(path)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise DatasetError(f"{path}: not read, too large ({exc})") from None


def any_readable(files, problems) -> bool:
    """Whether some input can be read, probed in order up to the first that can (a photo
    decoded, a video's first frame): cheap, and no model is needed. When none can, each one's
    problem is printed, as the run would have reported it."""
    from ensemble_fer.errors import InputError
    from ensemble_fer.inference import video

    reasons = list(problems)
    for path, _ in files:
        try:
            if video.is_video(path):
                video.check_video(path)
            else:
                read_photo(path)
            return True
        except InputError as exc:
            reasons.append(str(exc))
    for reason in reasons:
        print(reason, file=sys.stderr)
    return False


def skipped_folder_notes(paths, recursive: bool) -> list[str]:
    """One line per folder argument whose sub-folders are not read (no --recursive)."""
    if recursive:
        return []
    notes = []
    for path in map(Path, paths):
        if path.is_dir():
            inside = [child for child in path.iterdir() if child.is_dir() and not child.name.startswith(".")]
            if inside:
                names = ", ".join(sorted(child.name for child in inside)[:3]) + (", ..." if len(inside) > 3 else "")
                notes.append(f"{path}: {len(inside)} sub-folder(s) not read ({names}); pass --recursive to "
                             f"include them")
    return notes


def list_inputs(paths, recursive: bool = False) -> tuple[list[tuple[Path, Path]], list[str]]:
    """``(file, output name)`` for every image to read, and one message per path that is missing.

    A file named on the command line is read whatever its extension (so a file that is not
    an image is reported, not ignored); in a folder only files with an image extension are
    taken, hidden ones left out. The output name is the file's path relative to its folder
    argument (its name for a file argument); names that collide get ``_2``, ``_3``, ...
    """
    from ensemble_fer.features.datasets import IMAGE_SUFFIXES
    from ensemble_fer.inference.video import VIDEO_SUFFIXES

    files, problems, used = [], [], set()
    for path in paths:
        path = Path(path)
        if path.is_dir():
            pattern = path.rglob("*") if recursive else path.iterdir()
            found = sorted(f for f in pattern if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES | VIDEO_SUFFIXES
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
        # emotion empty: no_face is a status, not an emotion (a column of emotions stays one)
        return [[str(path), "", "", "", "", "", ""] + [""] * len(classes) + [NO_FACE, "no face found"]]
    return [[str(path), k, *face.box, face.emotion] + [f"{face.scores[c]:.6f}" for c in classes] + [OK, ""]
            for k, face in enumerate(faces)]


def error_row(path, reason: str, classes) -> list:
    """The one row of an input that could not be read."""
    return [str(path), "", "", "", "", "", ""] + [""] * len(classes) + [ERROR, reason]


def csv_header(classes, video: bool = False) -> list[str]:
    """The columns; a run with a video input gets ``frame, time_s, track`` at the end
    (``pipelines/predict_videos.py``), empty in photo rows."""
    from .predict_videos import VIDEO_COLUMNS

    return list(FIXED_COLUMNS) + list(classes) + list(STATUS_COLUMNS) + list(VIDEO_COLUMNS) * video


def format_csv(rows, classes, video: bool = False) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(csv_header(classes, video))
    writer.writerows(rows)
    return buffer.getvalue()


class Outputs:
    """Where a run's rows and pictures go, and how they replace or continue earlier ones.

    With a --csv FILE, rows are appended to ``FILE.partial`` (flushed after every input) and
    pictures written into ``DIR.partial``; when every input is done they replace FILE and
    DIR (an old DIR goes only once the new one is in place). Without --csv, rows go to
    stdout as they come.
    """

    def __init__(self, csv_path, annotate, gradcam, force: bool, resume: bool, video: bool = False):
        self.csv = None if csv_path is None else Path(csv_path)
        self.video = video
        self.dirs = {key: Path(d) for key, d in (("annotate", annotate), ("gradcam", gradcam)) if d is not None}
        self.force, self.resume = force, resume
        self.done: set[str] = set()
        self.pictures = bool(self.dirs)

    @staticmethod
    def partial(path: Path) -> Path:
        return path.with_name(path.name + PARTIAL)

    def check(self) -> None:
        """Refuse outputs that would be overwritten, or that are of the wrong kind."""
        from ensemble_fer.errors import InputError

        if self.csv is not None and self.csv.is_dir():
            raise InputError(f"--csv {self.csv}: is a folder; give the path of the CSV file to write")
        for key, folder in self.dirs.items():
            if folder.exists() and not folder.is_dir():
                raise InputError(f"--{key} {folder}: is a file; give a folder for the pictures")
        if self.force or self.resume:
            return
        for path in [self.csv] * (self.csv is not None) + list(self.dirs.values()):
            if self.partial(path).exists():
                raise InputError(f"{self.partial(path)}: holds what an interrupted run wrote; pass --resume to "
                                 f"continue it or --force to start over")
            if path.exists():
                raise InputError(f"{path}: exists; pass --force to replace it, --resume to add the inputs it "
                                 f"lacks, or choose another output")

    @contextlib.contextmanager
    def open(self, classes):
        """Lock the outputs, prepare FILE.partial and DIR.partial (fresh, or continued with
        --resume), yield self to write through, and swap the results in when the block ends
        without an exception."""
        from ensemble_fer import artifacts

        header = self.header = csv_header(classes, self.video)
        finals = ([self.csv] if self.csv is not None else []) + list(self.dirs.values())
        with contextlib.ExitStack() as stack:
            for path in finals:
                stack.enter_context(artifacts.output_lock(path))
            self.building = {key: self.partial(folder) for key, folder in self.dirs.items()}
            rows = self._start(header)
            if self.csv is None:
                handle = sys.stdout
            else:
                handle = stack.enter_context(open(self.partial(self.csv), "a" if self.resume else "w", newline=""))
            self._handle, self._writer = handle, csv.writer(handle, lineterminator="\n")
            if rows is None:
                self._writer.writerow(header)
                handle.flush()
            yield self
            handle.flush()
            if self.csv is not None:
                handle.close()
            # every input is done: swap the new results in, pictures first, the CSV (which
            # says what is done) last
            for key, folder in self.dirs.items():
                with artifacts.replacing(folder, force=True) as tmp:
                    os.rename(self.building[key], tmp)
            if self.csv is not None:
                os.replace(self.partial(self.csv), self.csv)

    def _start(self, header) -> list | None:
        """Prepare FILE.partial and DIR.partial; the rows kept from before (None: a fresh start)."""
        from ensemble_fer import artifacts

        partial = None if self.csv is None else self.partial(self.csv)
        if not self.resume:
            # A fresh start (--force, or nothing there): an interrupted run's scratch is
            # discarded; finished outputs stay until this run's replace them.
            for path in [partial, *self.building.values()]:
                if path is not None and path.is_dir():
                    shutil.rmtree(path)
                elif path is not None and path.exists():
                    path.unlink()
            for folder in self.building.values():
                folder.mkdir(parents=True)
            return None
        source = partial if partial.exists() else self.csv if self.csv.exists() else None
        rows = [] if source is None else self._kept_rows(source, header)
        # The rows kept go into a fresh FILE.partial (atomically); the rest is appended to it.
        with artifacts.atomic_path(partial) as tmp:
            tmp.write_text(format_csv(rows, header[len(FIXED_COLUMNS):header.index(STATUS_COLUMNS[0])], self.video),
                           newline="")
        for key, folder in self.dirs.items():
            building = self.building[key]
            if not building.exists():
                if folder.is_dir():     # continue a finished folder: links, not copies, of its files
                    shutil.copytree(folder, building, copy_function=_link_or_copy)
                else:
                    building.mkdir(parents=True)
        self.done = {row[0] for row in rows}
        return rows

    def _kept_rows(self, source: Path, header) -> list[list[str]]:
        """The rows of ``source`` for files that are done: ``ok`` or ``no_face`` rows. The last
        file's rows are dropped (an interruption may have cut them short), and so is every
        file with an ``error`` row or a malformed one: those are done again."""
        from ensemble_fer.errors import InputError

        with open(source, newline="") as handle:
            rows = list(csv.reader(handle))
        if not rows or rows[0] != header:
            raise InputError(f"{source}: its columns {rows[0] if rows else []} are not this model's {header}; "
                             f"resume with the model that wrote it, or pass --force to start over")
        rows = rows[1:]
        status = header.index("status")
        bad = {row[0] for row in rows if len(row) != len(header) or row[status] not in (OK, NO_FACE)}
        if source.name.endswith(PARTIAL) and rows:
            bad.add(rows[-1][0])
        return [row for row in rows if row[0] not in bad]

    def write(self, path, rows) -> None:
        """The rows of one input, flushed so that an interruption keeps them."""
        # photo rows in a run with videos: empty frame, time_s, track
        self._writer.writerows(row + [""] * (len(self.header) - len(row)) for row in rows)
        self._handle.flush()
        self.done.add(str(path))

    def write_pictures(self, recognizer, image, faces, name: Path) -> None:
        write_pictures(recognizer, image, faces, name, self.building.get("annotate"), self.building.get("gradcam"))


def _link_or_copy(source, target):
    """Pictures are written through atomic renames, never in place, so a hard link to a
    finished folder's file is as safe as a copy and costs nothing."""
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def write_pictures(recognizer, image, faces, name: Path, annotate_dir, gradcam_dir) -> None:
    from ensemble_fer.inference import annotate
    if annotate_dir:
        suffix = name.suffix.lower() if name.suffix.lower() in ANNOTATION_SUFFIXES else ".png"
        annotate.write_image(Path(annotate_dir) / name.with_suffix(suffix), annotate.draw_faces(image, faces))
    if gradcam_dir:
        for k, face in enumerate(faces):
            figure = annotate.gradcam_figure(recognizer.face_crop(image, face), recognizer.grad_cam(image, face),
                                             gradcam_caption(recognizer, face))
            out = Path(gradcam_dir) / name.parent / f"{name.stem}_face{k}_{face.emotion}.png"
            annotate.write_image(out, figure)


def gradcam_caption(recognizer, face) -> str:
    emotion, score = face.top_emotion
    n = len(recognizer.gradcam_models())
    return f"{emotion} {score:.2f} | Grad-CAM of {n} member{'s' * (n != 1)}, weighted"


def _write_above_progress(progress, message: str) -> None:
    if hasattr(progress, "write"):
        progress.write(message, file=sys.stderr)
    else:
        print(message, file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
