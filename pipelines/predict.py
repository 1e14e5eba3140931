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
BLANK = "blank"
"""Status of a near-blank face crop (all black, all white), flagged as extraction flags them."""
FIXED_COLUMNS = ("path", "face", "left", "top", "right", "bottom", "emotion")
STATUS_COLUMNS = ("status", "reason")
PARTIAL = ".partial"
"""Suffix of the outputs of a run still going (or interrupted): FILE.partial, DIR.partial."""
ANNOTATION_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp"}
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
"""What makes a spreadsheet evaluate a cell (OWASP, CSV injection): such text cells get a leading '."""
RESUMED_KEYS = ("model_sha256", "tta", "detector", "upsample")
"""What --resume requires to be the same as in the run it continues (and ``fps`` with a video)."""


def build_parser() -> argparse.ArgumentParser:
    from ensemble_fer.features.faces import MAX_UPSAMPLE
    from ensemble_fer.features.augment import MAX_TTA

    from .cli_numbers import MAX_BATCH, MAX_FPS, float_in, int_in

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
    p.add_argument("--tta", type=int_in(0, MAX_TTA), metavar="N",
                   help=f"test-time augmentation views (0: none, up to {MAX_TTA}; default: the model's own, 2 for the "
                        f"release)")
    p.add_argument("--detector", choices=("hog", "mmod"), default="hog",
                   help="dlib face detector: hog (fast, frontal) or mmod (CNN, more poses, slow on a CPU)")
    p.add_argument("--upsample", type=upsample_value, metavar="auto|fast|N",
                   help=f"times the photo is doubled before detection, 0 to {MAX_UPSAMPLE} (1: faces down to ~40 px; "
                        f"0: ~75 px, 4x faster); auto: 0, then 1 unless every face found is 146 px or more; fast: "
                        f"the photo at 0.6, then at 1.6 unless a face was found (faces down to ~46 px). Default: "
                        f"fast for --model fast, auto for any other model. A photo that would need more memory "
                        f"than is available gets an error row")
    p.add_argument("--recursive", action="store_true", help="also read the folders inside a folder")
    p.add_argument("--batch-size", type=int_in(1, MAX_BATCH), default=64, metavar="N",
                   help=f"face crops per network batch (1 to {MAX_BATCH})")
    p.add_argument("--fps", type=float_in(0, MAX_FPS), default=4.0, metavar="N",
                   help=f"video frames sampled per second of video, in (0, {MAX_FPS:g}]; at most the clip's own frame "
                        f"rate is used (videos: any container OpenCV reads)")
    p.add_argument("--quiet", action="store_true", help="no progress bar or summary")
    return p


def upsample_value(text: str) -> int | str:
    """``--upsample``'s value: ``auto``, ``fast`` or a whole number in [0, MAX_UPSAMPLE], checked
    as parsed."""
    from ensemble_fer.features.faces import MAX_UPSAMPLE, UPSAMPLE_MODES

    try:
        value = int(text)
    except ValueError:
        if text in UPSAMPLE_MODES:
            return text
        value = None
    if value is None or not 0 <= value <= MAX_UPSAMPLE:
        raise argparse.ArgumentTypeError(f"must be {' or '.join(UPSAMPLE_MODES)} or an int in [0, {MAX_UPSAMPLE}] "
                                         f"(each doubles the photo before detection); got {text!r}")
    return value


@reports_errors
def main(argv=None) -> int:
    from ensemble_fer import EmotionRecognizer
    from ensemble_fer.errors import InputError

    args = build_parser().parse_args(argv)
    if args.resume and not args.csv:
        raise InputError("--resume needs --csv FILE: the CSV's rows say which inputs are done")
    from ensemble_fer.inference import video
    from . import predict_videos

    video.check_fps(args.fps)
    own = own_outputs(args)
    from ensemble_fer import artifacts
    for option, path in own:      # before --force is looked at: an input is never replaced
        artifacts.check_apart(path, args.paths, output_name=option, allow_inside=True)
    files, problems = list_inputs(args.paths, args.recursive, exclude=[path for _, path in own])
    if not args.quiet:
        for note in skipped_folder_notes(args.paths, args.recursive, exclude=[path for _, path in own]):
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
    from ensemble_fer.errors import InputError
    from ensemble_fer.errors import DatasetError
    from ensemble_fer.features.image_io import read_image_file
    from ensemble_fer.features.faces import check_detection_memory

    classes = recognizer.classes
    counts = {"read": 0, "faces": 0, "errors": 0, "skipped": 0}
    for problem in problems:
        print(problem, file=sys.stderr)
        path, _, reason = problem.partition(": ")
        sink.write(path, [error_row(path, reason, classes)])
        counts["errors"] += 1
    todo = [(path, name) for path, name in files if not sink.is_done(path)]
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
                if image.shape[:2] != (48, 48):
                    check_detection_memory(image.shape, recognizer.upsample, path)
            except (DatasetError, InputError) as exc:   # this file only; anything else is a bug: it stops the run
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
    """``image_io.read_image_file``, with pictures past Pillow's decompression-bomb limit
    (about 89 megapixels) refused as unreadable like a corrupt file: decoding one would take
    gigabytes, and face detection on it far more."""
    from PIL import Image

    from ensemble_fer.errors import DatasetError
    from ensemble_fer.features.image_io import read_image_file

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


def skipped_folder_notes(paths, recursive: bool, exclude=()) -> list[str]:
    """One line per folder argument whose sub-folders are not read (no --recursive);
    ``exclude``: this run's own outputs, which are not inputs anyway."""
    if recursive:
        return []
    excluded = {Path(os.path.realpath(p)) for p in exclude}
    notes = []
    for path in map(Path, paths):
        try:
            if not path.is_dir():
                continue
            inside = [child for child in path.iterdir() if child.is_dir() and not child.name.startswith(".")
                      and Path(os.path.realpath(child)) not in excluded]
        except OSError:     # a folder that cannot be listed: list_inputs reports it
            continue
        if inside:
            names = ", ".join(sorted(child.name for child in inside)[:3]) + (", ..." if len(inside) > 3 else "")
            notes.append(f"{path}: {len(inside)} sub-folder(s) not read ({names}); pass --recursive to "
                         f"include them")
    return notes


def list_inputs(paths, recursive: bool = False, exclude=()) -> tuple[list[tuple[Path, Path]], list[str]]:
    """``(file, output name)`` for every image to read, and one message per path that cannot be.

    A file named on the command line is read whatever its extension (so a file that is not
    an image is reported, not ignored); in a folder only files with an image extension are
    taken, hidden ones left out. The output name is the file's path relative to its folder
    argument (its name for a file argument); names whose stems collide (``x.png``, ``x.gif``)
    get ``_2``, ``_3``, ... so that the pictures named after them never share a file.
    ``exclude``: this run's own outputs, never read back as inputs. A path that is missing, a
    folder that cannot be listed and a broken link with an image name each get a message
    (and so an error row), never silence or a traceback.
    """
    from ensemble_fer.features.datasets import IMAGE_SUFFIXES
    from ensemble_fer.inference.video import VIDEO_SUFFIXES

    suffixes = IMAGE_SUFFIXES | VIDEO_SUFFIXES
    excluded = [Path(os.path.realpath(p)) for p in exclude]
    files, problems, used = [], [], set()
    for path in paths:
        path = Path(path)
        try:
            is_dir = path.is_dir()
            exists = is_dir or path.exists()
        except OSError as exc:      # e.g. inside a folder that cannot be searched
            problems.append(f"{path}: cannot be read ({exc.strerror})")
            continue
        if is_dir:
            found, unreadable = _folder_files(path, recursive, suffixes, excluded)
            problems += unreadable
            entries = [(f, f.relative_to(path)) for f in found]
        elif exists:
            entries = [(path, Path(path.name))]
        elif path.is_symlink():
            problems.append(f"{path}: broken symbolic link (to {os.readlink(path)}); nothing to read")
            continue
        else:
            problems.append(f"{path}: no such file or folder")
            continue
        for file, name in entries:
            unique, k = name, 1
            while unique.with_suffix("") in used:
                k += 1
                unique = name.with_name(f"{name.stem}_{k}{name.suffix}")
            used.add(unique.with_suffix(""))
            files.append((file, unique))
    return files, problems


def _folder_files(folder: Path, recursive: bool, suffixes, excluded) -> tuple[list[Path], list[str]]:
    """The files of ``folder`` to read (see :func:`list_inputs`), and a message per folder
    that cannot be listed and per broken link. Non-regular files with an image name (a FIFO)
    are kept: reading them is refused with a reason (``image_io.read_image_file``)."""
    found, problems, todo = [], [], [folder]
    while todo:
        current = todo.pop()
        try:
            entries = list(os.scandir(current))
        except OSError as exc:
            problems.append(f"{current}: cannot list this folder ({exc.strerror}); its files are not read")
            continue
        for entry in entries:
            path = Path(entry.path)
            real = Path(os.path.realpath(path))
            if entry.name.startswith(".") or any(real == out or out in real.parents for out in excluded):
                continue
            if entry.is_dir(follow_symlinks=False):     # as rglob: links to folders are not followed
                if recursive:
                    todo.append(path)
                continue
            if path.suffix.lower() not in suffixes:
                continue
            if entry.is_symlink() and not path.exists():
                problems.append(f"{path}: broken symbolic link (to {os.readlink(path)}); nothing to read")
                continue
            found.append(path)
    return sorted(found), problems


def own_outputs(args) -> list[tuple[str, Path]]:
    """``(option, path)`` of everything this run writes: each output and its ``.partial``."""
    named = [("--csv", args.csv), ("--annotate", args.annotate), ("--gradcam", args.gradcam)]
    return [(option, path) for option, out in named if out is not None
            for path in (Path(out), Outputs.partial(Path(out)))]


def text_cell(text) -> str:
    """A CSV cell of text: bytes of a file name that are not UTF-8 escaped (``\\xe9``), and a
    cell a spreadsheet would evaluate as a formula (starting with ``= + - @``, a tab or a
    carriage return) neutralised with a leading ``'`` (OWASP's rule for CSV injection)."""
    from ensemble_fer.features.datasets import name_text

    text = name_text(str(text))
    return "'" + text if text[:1] in FORMULA_STARTS else text


def path_cell(path) -> str:
    """The ``path`` column of an input (see :func:`text_cell`)."""
    return text_cell(os.fspath(path))


def run_record(recognizer, args) -> dict:
    """What decides an input's rows, recorded beside the CSV (``.FILE.run.json``) so that
    --resume continues only the same run: the model (the hash of its files), the options
    that change rows, and the working folders that relative input paths were given from."""
    return {"model": str(recognizer.source), "model_sha256": recognizer.fingerprint(), "tta": args.tta,
            "detector": args.detector, "upsample": recognizer.upsample, "fps": args.fps, "cwd": [os.getcwd()]}


def csv_rows(path, faces, classes) -> list[list]:
    """The CSV rows of one photo (see the module doc)."""
    if not faces:
        # emotion empty: no_face is a status, not an emotion (a column of emotions stays one)
        return [[path_cell(path), "", "", "", "", "", ""] + [""] * len(classes) + [NO_FACE, "no face found"]]
    return [[path_cell(path), k, *face.box, ""] + [""] * len(classes) + [BLANK, blank_reason()] if face.blank else
            [path_cell(path), k, *face.box, face.emotion] + [f"{face.scores[c]:.6f}" for c in classes] + [OK, ""]
            for k, face in enumerate(faces)]


def blank_reason() -> str:
    return "the face crop is blank (almost no contrast), as extraction flags it: no expression to read"


def error_row(path, reason: str, classes) -> list:
    """The one row of an input that could not be read."""
    return [path_cell(path), "", "", "", "", "", ""] + [""] * len(classes) + [ERROR, text_cell(reason)]


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
        self.record: dict = {}
        """What produced the rows (:func:`run_record`), set before :meth:`open`."""
        self._cwds: list[str] = []

    @staticmethod
    def partial(path: Path) -> Path:
        return path.with_name(path.name + PARTIAL)

    @staticmethod
    def record_path(path: Path) -> Path:
        """Where the record of the run that wrote the CSV ``path`` lies (hidden, beside it)."""
        return path.with_name(f".{path.name}.run.json")

    def is_done(self, path) -> bool:
        """Whether ``path`` has its rows already: as given, absolute, or relative to a working
        folder of the run being continued (so ``photos/`` and ``/abs/photos/`` are one input)."""
        absolute = os.path.abspath(path)
        names = {path_cell(path), path_cell(absolute)}
        names.update(path_cell(os.path.relpath(absolute, cwd)) for cwd in self._cwds)
        return not names.isdisjoint(self.done)

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
        from ensemble_fer.errors import InputError

        header = self.header = csv_header(classes, self.video)
        finals = ([self.csv] if self.csv is not None else []) + list(self.dirs.values())
        with contextlib.ExitStack() as stack:
            for path in finals:
                stack.enter_context(artifacts.output_lock(path))
            # Decided under the lock: another run may have written the outputs since main's check.
            self.check()
            for folder in dict.fromkeys(path.parent for path in finals):
                artifacts.complete_interrupted_swaps(folder)     # a run killed while swapping in
            self.building = {key: self.partial(folder) for key, folder in self.dirs.items()}
            rows = self._start(header)
            if self.csv is None:
                handle = sys.stdout
            else:
                # unbuffered: a row is on disk once written, and a full disk fails that write
                # alone, with nothing left in a buffer to fail again on close
                with artifacts.reporting_disk_full(self.partial(self.csv)):
                    handle = stack.enter_context(open(self.partial(self.csv), "ab" if self.resume else "wb",
                                                      buffering=0))
            self._handle = handle
            self._rows_written = 0
            try:
                if rows is None:
                    self._emit([header])
                yield self
            except InputError:
                if self._rows_written == 0 and not self.resume:
                    self._discard()     # a full disk before any row: no empty FILE.partial left
                raise
            if self.csv is not None:
                handle.close()
            # every input is done: swap the new results in as one unit, pictures first, the
            # CSV (which says what is done) last, with the record of the run that wrote it
            built = {folder: self.building[key] for key, folder in self.dirs.items()}
            if self.csv is not None:
                built[self.record_path(self.csv)] = self.record_path(self.partial(self.csv))
                built[self.csv] = self.partial(self.csv)
            if built:
                artifacts.swap_in_together(built)

    def _emit(self, rows) -> None:
        from ensemble_fer import artifacts

        buffer = io.StringIO()
        csv.writer(buffer, lineterminator="\n").writerows(rows)
        if self.csv is None:
            self._handle.write(buffer.getvalue())
            self._handle.flush()
            return
        data = memoryview(buffer.getvalue().encode())
        with artifacts.reporting_disk_full(self.partial(self.csv)):
            while data:
                data = data[self._handle.write(data):]

    def _discard(self) -> None:
        """Remove what a fresh start made (FILE.partial, its record, DIR.partial)."""
        scratch = [*self.building.values()]
        if self.csv is not None:
            scratch += [self.partial(self.csv), self.record_path(self.partial(self.csv))]
        for path in scratch:
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()

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
            if partial is not None:
                self._cwds = list(self.record.get("cwd", []))
                artifacts.write_json(self.record_path(partial), self.record)
            return None
        source = partial if partial.exists() else self.csv if self.csv.exists() else None
        if source is not None:
            self._check_record(source)
        rows = [] if source is None else self._kept_rows(source, header)
        self._cwds = list(dict.fromkeys(self._cwds + list(self.record.get("cwd", []))))
        artifacts.write_json(self.record_path(partial), {**self.record, "cwd": self._cwds})
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

    def _check_record(self, source: Path) -> None:
        """Refuse to continue ``source`` unless the run that wrote it used this model and these
        options (its record, :func:`run_record`); keeps its working folders for :meth:`is_done`."""
        from ensemble_fer import artifacts
        from ensemble_fer.errors import InputError

        path = self.record_path(source)
        if not path.is_file():
            raise InputError(f"{source}: has no record of the run that wrote it ({path.name}: written by an older "
                             f"predict, or copied without it), so --resume cannot check it continues the same model "
                             f"and options; pass --force to start over")
        old = artifacts.read_json(path)
        if not isinstance(old, dict) or not isinstance(old.get("cwd", []), list):
            raise InputError(f"{path}: not a run record (a JSON object); pass --force to start over")
        keys = RESUMED_KEYS + ("fps",) * self.video
        changed = [key for key in keys if old.get(key) != self.record.get(key)]
        if changed:
            said = [f"model {old.get('model')} then, {self.record.get('model')} now (their files differ)"
                    if key == "model_sha256" else f"--{key} {old.get(key)} then, {self.record.get(key)} now"
                    for key in changed]
            raise InputError(f"{source}: written by another run ({'; '.join(said)}); resume with the same --model "
                             f"and options, or pass --force to start over")
        self._cwds = [str(cwd) for cwd in old.get("cwd", [])]

    def _kept_rows(self, source: Path, header) -> list[list[str]]:
        """The rows of ``source`` for files that are done: ``ok`` or ``no_face`` rows. The last
        file's rows are dropped (an interruption may have cut them short), and so is every
        file with an ``error`` row or a malformed one: those are done again."""
        from ensemble_fer.errors import InputError

        try:
            with open(source, newline="", encoding="utf-8") as handle:
                rows = list(csv.reader(handle))
        except UnicodeDecodeError as exc:
            raise InputError(f"{source}: not UTF-8 text (byte {exc.start}: {exc.reason}), so not a CSV this predict "
                             f"wrote; pass --force to start over") from None
        except csv.Error as exc:
            raise InputError(f"{source}: not a readable CSV ({exc}); pass --force to start over") from None
        if not rows or rows[0] != header:
            raise InputError(f"{source}: its columns {rows[0] if rows else []} are not this model's {header}; "
                             f"resume with the model that wrote it, or pass --force to start over")
        rows = rows[1:]
        status = header.index("status")
        bad = {row[0] for row in rows if len(row) != len(header) or row[status] not in (OK, NO_FACE, BLANK)}
        if source.name.endswith(PARTIAL) and rows:
            bad.add(rows[-1][0])
        return [row for row in rows if row[0] not in bad]

    def write(self, path, rows) -> None:
        """The rows of one input, flushed so that an interruption keeps them."""
        # photo rows in a run with videos: empty frame, time_s, track
        self._emit([row + [""] * (len(self.header) - len(row)) for row in rows])
        self._rows_written += len(rows)
        self.done.add(path_cell(path))

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
