"""The video part of ``pipelines.predict``: rows, annotated videos and per-track summaries.

A video's CSV rows have the photo rows' columns plus ``frame``, ``time_s`` and ``track``
(appended, so that a run without videos keeps the photo CSV unchanged): one row per face per
sampled frame, and one ``no_face`` row for a video in which no sampled frame has a face.
``--annotate FILE.mp4`` (one video input) writes that video annotated; ``--annotate DIR``
writes ``DIR/<video name>.mp4`` beside the annotated photos. A summary per track (dominant
emotion, share of the time) goes to stderr unless ``--quiet``.
"""

from __future__ import annotations

import sys
from pathlib import Path

VIDEO_COLUMNS = ("frame", "time_s", "track")


def annotate_target(args, files) -> Path | None:
    """The annotated-video file named by ``--annotate FILE.mp4``, checked; None for a folder."""
    from ensemble_fer.inference import video
    from ensemble_fer.errors import InputError

    if args.annotate is None or not video.is_video(args.annotate):
        return None
    videos = [path for path, _ in files if video.is_video(path)]
    if len(videos) != 1 or len(files) != 1:
        raise InputError(f"--annotate {args.annotate}: a video file is for one video input "
                         f"(got {len(videos)} video(s) among {len(files)} input(s)); give a folder instead")
    if args.annotate.exists() and not args.force:
        raise InputError(f"{args.annotate}: exists; pass --force to replace it")
    return args.annotate


def video_rows(path, rows, classes) -> list[list]:
    """CSV rows of one video's :class:`ensemble_fer.inference.video.VideoFace` rows (see the module doc)."""
    from .predict import BLANK, NO_FACE, OK, blank_reason, path_cell

    if not rows:
        return [[path_cell(path), "", "", "", "", "", NO_FACE] + [""] * len(classes)
                + [NO_FACE, "no face in the sampled frames", "", "", ""]]
    out, face_in_frame, last_frame = [], 0, None
    for row in rows:
        face_in_frame = face_in_frame + 1 if row.frame == last_frame else 0
        last_frame = row.frame
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
        rows = []
        try:
            info = video.video_info(path)
            rate = video.sampling_rate(info, args.fps)
            if rate < args.fps:
                print(f"{path}: --fps {args.fps:g} is above the clip's frame rate ({info.fps:g} fps): every frame is "
                      f"read, at {rate:g} fps", file=sys.stderr)
            frames = video.iter_video_frames(recognizer, path, args.fps, batch_size=args.batch_size,
                                             tta=args.tta, progress=not args.quiet)
            if target is None:
                for _, _, _, frame_rows in frames:
                    rows.extend(frame_rows)
            else:
                with artifacts.output_lock(target), artifacts.replacing(target, force=True) as tmp, \
                        video.AnnotatedVideoWriter(tmp, rate, suffix=target.suffix) as writer:
                    for _, _, rgb, frame_rows in frames:
                        writer.write(rgb, frame_rows)
                        rows.extend(frame_rows)
        except InputError as exc:
            print(str(exc), file=sys.stderr)
            sink.write(path, [error_row(path, str(exc).removeprefix(f"{path}: "), classes)])
            counts["errors"] += 1
            continue
        sink.write(path, video_rows(path, rows, classes))
        counts["read"] += 1
        counts["faces"] += len(rows)
        if not args.quiet:
            print(video.format_summary(path, video.summarize_tracks(rows)), file=sys.stderr)


def error_row(path, reason, classes) -> list:
    from .predict import error_row as photo_error_row

    return photo_error_row(path, reason, classes) + [""] * len(VIDEO_COLUMNS)
