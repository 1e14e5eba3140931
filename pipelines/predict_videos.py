"""The video part of ``pipelines.predict``: rows, annotated videos and per-track summaries.

A video's CSV rows have the photo rows' columns plus ``frame``, ``time_s`` and ``track``
(appended, so that a run without videos keeps the photo CSV unchanged): one row per face per
sampled frame, and one ``no_face`` row (empty emotion and track) for each sampled frame without
a face, so that the rows are a timeline without holes.
``--annotate FILE.mp4`` (one video input) writes that video annotated; ``--annotate DIR``
writes ``DIR/<video name>.mp4`` beside the annotated photos. A summary per track (dominant
emotion, share of the time) goes to stderr unless ``--quiet``.
"""

from __future__ import annotations

import sys
from pathlib import Path

VIDEO_COLUMNS = ("frame", "time_s", "track")


def annotate_target(args, files) -> Path | None:
    """The one file ``--annotate`` names, checked: a video suffix (``out.mp4``) for one video
    input, a picture suffix (``out.jpg``) for one photo; None for a folder (any other name,
    or an existing folder). The rule ``predict --help`` states."""
    from ensemble_fer.inference import video
    from ensemble_fer.errors import InputError

    from .predict import ANNOTATION_SUFFIXES

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


def video_rows(path, frames, classes) -> list[list]:
    """CSV rows of one video's sampled frames, ``(frame, time_s, [VideoFace])`` each (see the
    module doc): a row per face (``blank`` for a blank crop), or one ``no_face`` row for a
    frame without one."""
    from .predict import BLANK, NO_FACE, OK, blank_reason, path_cell

    out = []
    for frame, time_s, rows in frames:
        if not rows:
            out.append([path_cell(path), "", "", "", "", "", ""] + [""] * len(classes)
                       + [NO_FACE, "no face in this frame", frame, f"{time_s:.3f}", ""])
        for face_in_frame, row in enumerate(rows):
            if row.face.blank:
                out.append([path_cell(path), face_in_frame, *row.box, ""] + [""] * len(classes)
                           + [BLANK, blank_reason(), row.frame, f"{row.time_s:.3f}", row.track])
                continue
            out.append([path_cell(path), face_in_frame, *row.box, row.emotion]
                       + [f"{row.face.scores[c]:.6f}" for c in classes]
                       + [OK, "", row.frame, f"{row.time_s:.3f}", row.track])
    return out


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
                with artifacts.output_lock(target), artifacts.replacing(target, force=True) as tmp, \
                        video.AnnotatedVideoWriter(tmp, rate, suffix=target.suffix) as writer:
                    for frame, time_s, rgb, frame_rows in frames:
                        writer.write(rgb, frame_rows)
                        rows.extend(frame_rows)
                        sampled.append((frame, time_s, frame_rows))
        except InputError as exc:
            print(str(exc), file=sys.stderr)
            sink.write(path, [error_row(path, str(exc).removeprefix(f"{path}: "), classes)])
            counts["errors"] += 1
            continue
        sink.write(path, video_rows(path, sampled, classes))
        counts["read"] += 1
        counts["videos"] = counts.get("videos", 0) + 1
        counts["faces"] += len(rows)
        if not args.quiet:
            print(video.format_summary(path, video.summarize_tracks(rows)), file=sys.stderr)


def error_row(path, reason, classes) -> list:
    from .predict import error_row as photo_error_row

    return photo_error_row(path, reason, classes) + [""] * len(VIDEO_COLUMNS)
