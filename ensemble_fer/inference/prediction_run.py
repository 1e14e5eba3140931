"""A ``pipelines.predict`` run over its inputs: the photos, videos and folders given listed
(:func:`list_inputs`), probed before any model loads (:func:`any_readable`), and predicted in
order, each input's rows written through :class:`~ensemble_fer.inference.prediction_csv.Outputs`
as soon as it is done (:func:`predict_files` for photos, :func:`predict_videos` for videos).

``args`` is the parsed command line of ``pipelines.predict`` (its ``build_parser``): the
options these steps read (``paths``, ``recursive``, ``csv``, ``annotate``, ``gradcam``,
``force``, ``tta``, ``fps``, ``batch_size``, ``detector``, ``quiet``, ``workers``).

A photo is decoded and its faces found and cropped by :func:`photo_faces`, which needs no
model: with ``--workers N`` (N >= 2) N spawned worker processes run it
(:func:`ensemble_fer.features.workers.ordered_map`) while this process runs the network on
the crops as they arrive, in input order, so the rows are those of ``--workers 1``. N
workers, not N - 1: finding faces is most of a photo's time (dlib's search 105 of the
release's 127 ms CPU a multi-face photo, 48 of the fast model's 55; benchmarks/RESULTS.md,
session 11), so this process mostly waits for them, and N - 1 would leave a core of 2 idle.
Videos are read in this process, frame after frame.
"""

from __future__ import annotations

import contextlib
import functools
import os
import sys
import warnings
from collections import deque
from pathlib import Path

from ensemble_fer.inference.prediction_csv import (ANNOTATION_SUFFIXES, Outputs, csv_rows, error_row,
                                                   video_error_row, video_rows)

def own_outputs(args) -> list[tuple[str, Path]]:
    """``(option, path)`` of everything this run writes: each output and its ``.partial``."""
    named = [("--csv", args.csv), ("--annotate", args.annotate), ("--gradcam", args.gradcam)]
    return [(option, path) for option, out in named if out is not None
            for path in (Path(out), Outputs.partial(Path(out)))]


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


def annotate_target(args, files) -> Path | None:
    """The one file ``--annotate`` names, checked: a video suffix (``out.mp4``) for one video
    input, a picture suffix (``out.jpg``) for one photo; None for a folder (any other name,
    or an existing folder). The rule ``predict --help`` states."""
    from ensemble_fer.inference import video
    from ensemble_fer.errors import InputError

    if args.annotate is None or args.annotate.is_dir():
        return None
    if video.is_video(args.annotate):
        kind, matching = "video", [path for path, _ in files if video.is_video(path)]
    elif args.annotate.suffix.lower() in ANNOTATION_SUFFIXES:
        kind, matching = "picture", [path for path, _ in files if not video.is_video(path)]
    else:
        return None
    if len(matching) != 1 or len(files) != 1:
        inputs = "video" if kind == "video" else "photo"
        raise InputError(f"--annotate {args.annotate}: a {kind} file is for one {inputs} input "
                         f"(got {len(matching)} {inputs}(s) among {len(files)} input(s)); give a folder instead")
    if args.annotate.exists() and not args.force:
        raise InputError(f"{args.annotate}: exists; pass --force to replace it")
    return args.annotate


def photo_faces(path, detector: str, upsample) -> tuple | str:
    """A photo's faces as the network takes them, ``(boxes, detection scores, 48x48 crops)``
    (:func:`ensemble_fer.features.faces.picture_crops`), or the one-line reason it cannot be
    read (corrupt, over Pillow's limit, a search needing more memory than is available).
    What ``predict`` runs per photo, in this process or in a worker (``--workers``): plain
    tuples, arrays and text, so nothing of dlib's leaves the process that made it."""
    from ensemble_fer.errors import DatasetError, InputError
    from ensemble_fer.features import faces
    from ensemble_fer.features.image_io import to_gray

    try:
        image = read_photo(path)
        if image.shape[:2] != (48, 48):
            faces.check_detection_memory(image.shape, upsample, path)
    except (DatasetError, InputError) as exc:   # this file only; anything else is a bug: it stops the run
        return str(exc)
    return faces.picture_crops(to_gray(image), detector, upsample)


@contextlib.contextmanager
def photos_in_order(paths, recognizer, workers: int = 1):
    """:func:`photo_faces` of every path, in order: in this process with ``workers`` 1 (or
    one path), else by that many worker processes (at most one per path), as a context that
    ends them."""
    task = functools.partial(photo_faces, detector=recognizer.detector, upsample=recognizer.upsample)
    workers = min(workers, len(paths))
    if workers <= 1:
        yield map(task, paths)
        return
    from ensemble_fer.features.workers import ordered_map

    with ordered_map(task, paths, workers) as results:
        yield results


def predict_files(recognizer, files, problems, sink, args, annotate_file=None) -> dict[str, int]:
    """Predict every ``(path, output name)`` in ``files`` not done yet, writing each file's
    rows (and pictures) through ``sink`` as soon as its batch has run, in input order;
    ``annotate_file``: the one photo's annotated picture (``--annotate out.jpg``)."""
    from ensemble_fer.features.image_io import read_image_file

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

    def found(results):
        progress = zip(todo, results)
        if not args.quiet and (len(todo) > 1 or any(p.is_dir() for p in args.paths)):
            from tqdm import tqdm

            progress = tqdm(progress, total=len(todo), desc="photos", unit="photo", file=sys.stderr)
        for (path, name), result in progress:
            if isinstance(result, str):     # the reason it cannot be read
                queue.append((path, name, result))
                _write_above_progress(progress, result)
                continue
            queue.append((path, name, None))
            yield result

    def flush_errors():
        while queue and queue[0][2] is not None:
            path, _, reason = queue.popleft()
            sink.write(path, [error_row(path, reason.removeprefix(f"{path}: "), classes)])
            counts["errors"] += 1

    with photos_in_order([path for path, _ in todo], recognizer, args.workers) as results:
        for faces in recognizer.iter_classify(found(results), batch_size=args.batch_size, tta=args.tta):
            flush_errors()
            path, name, _ = queue.popleft()
            if sink.pictures:
                sink.write_pictures(recognizer, read_image_file(path), faces, name)
            if annotate_file is not None:
                _write_annotated(annotate_file, path, faces, args.force)
            sink.write(path, csv_rows(path, faces, classes))
            counts["read"] += 1
            counts["faces"] += len(faces)
    flush_errors()
    return counts


def _write_annotated(annotate_file: Path, path, faces, force: bool) -> None:
    """``--annotate out.jpg``: the one photo, ``path``, with its boxes and labels."""
    from ensemble_fer import artifacts
    from ensemble_fer.errors import InputError
    from ensemble_fer.features.image_io import read_image_file
    from ensemble_fer.inference import annotate

    with artifacts.output_lock(annotate_file):
        # decided again under the lock: another run may have written it since annotate_target
        if annotate_file.exists() and not force:
            raise InputError(f"{annotate_file}: exists; pass --force to replace it")
        annotate.write_image(annotate_file, annotate.draw_faces(read_image_file(path), faces))


def predict_videos(recognizer, videos, sink, args, counts, annotate_file=None) -> None:
    """Predict every ``(path, output name)`` video, writing its rows through ``sink``."""
    from ensemble_fer import artifacts
    from ensemble_fer.inference import video
    from ensemble_fer.errors import InputError

    classes = recognizer.classes
    for path, name in videos:
        annotate_dir = getattr(sink, "building", {}).get("annotate")
        target = annotate_file if annotate_file is not None else (
            Path(annotate_dir) / name.with_suffix(".mp4") if annotate_dir else None)
        rows, sampled = [], []
        try:
            info = video.video_info(path)
            rate = video.sampling_rate(info, args.fps)
            if rate < args.fps:
                print(f"{path}: --fps {args.fps:g} is above the clip's frame rate ({info.fps:g} fps): every frame is "
                      f"read, at {rate:g} fps", file=sys.stderr)
            frames = video.iter_video_frames(recognizer, path, args.fps, batch_size=args.batch_size,
                                             tta=args.tta, progress=not args.quiet)
            if target is None:
                for frame, time_s, _, frame_rows in frames:
                    rows.extend(frame_rows)
                    sampled.append((frame, time_s, frame_rows))
            else:
                # one --annotate out.mp4 is decided again under its lock (replacing refuses an
                # existing file without --force); a folder's videos are built inside its new copy
                force = args.force or target != annotate_file
                with artifacts.output_lock(target), artifacts.replacing(target, force=force) as tmp, \
                        video.AnnotatedVideoWriter(tmp, rate, suffix=target.suffix) as writer:
                    for frame, time_s, rgb, frame_rows in frames:
                        writer.write(rgb, frame_rows)
                        rows.extend(frame_rows)
                        sampled.append((frame, time_s, frame_rows))
        except InputError as exc:
            print(str(exc), file=sys.stderr)
            sink.write(path, [video_error_row(path, str(exc).removeprefix(f"{path}: "), classes)])
            counts["errors"] += 1
            continue
        sink.write(path, video_rows(path, sampled, classes))
        counts["read"] += 1
        counts["videos"] = counts.get("videos", 0) + 1
        counts["faces"] += len(rows)
        if not args.quiet:
            print(video.format_summary(path, video.summarize_tracks(rows)), file=sys.stderr)


def _write_above_progress(progress, message: str) -> None:
    if hasattr(progress, "write"):
        progress.write(message, file=sys.stderr)
    else:
        print(message, file=sys.stderr)
