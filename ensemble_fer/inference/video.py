"""Facial expressions in videos: sampled frames, faces followed across frames, a summary per face.

::

    from ensemble_fer import EmotionRecognizer
    from ensemble_fer.inference.video import predict_video, summarize_tracks

    recognizer = EmotionRecognizer.load()
    faces = list(predict_video(recognizer, "clip.mp4", fps=4))    # VideoFace rows
    for track in summarize_tracks(faces):
        print(track.track, track.emotion, f"{track.share:.0%}")

How a video becomes rows
------------------------
1. OpenCV reads the file (any container and codec its FFmpeg build reads). Frames are
   sampled at ``fps`` per second of video time (the first frame at or after each sampling instant;
   every frame when the video has fewer); skipped frames are only grabbed, not decoded to
   pixels, which is what makes sampling cheap.
2. The sampled frames stream through :meth:`EmotionRecognizer.iter_predict`, so the faces of
   consecutive frames fill the network's batches together.
3. A :class:`Tracker` gives each face a track id: a face continues the track whose box in an
   earlier sampled frame overlaps it most (intersection over union >= ``min_iou``, greedy,
   best pairs first); a track not seen for ``max_gap_s`` seconds ends, and an unmatched
   face starts a new track. Simple, and enough for faces that move less than their own
   width between sampled frames.
4. :func:`summarize_tracks` gives each track its dominant emotion (the most frequent top
   emotion over its sampled frames) and that emotion's share of the track's time.

Frames are RGB throughout (OpenCV's BGR is converted once, in :func:`read_frames`).
"""

from __future__ import annotations

import os
from collections import Counter, deque
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ensemble_fer.errors import InputError

VIDEO_SUFFIXES = frozenset({".mp4", ".m4v", ".mov", ".avi", ".mkv", ".webm", ".mpg", ".mpeg", ".wmv", ".flv",
                            ".3gp", ".ts", ".mts", ".ogv"})
"""File extensions taken for videos (any container OpenCV reads; the rest are read as photos)."""

DEFAULT_FPS = 4.0
"""Frames sampled per second of video: enough for expressions, which last about half a second
or more, at a quarter of the work of 15 fps."""

FALLBACK_FPS = 25.0
"""Frame rate assumed when the container does not give one."""


def is_video(path) -> bool:
    """Whether ``path`` is taken for a video (by its extension)."""
    return Path(path).suffix.lower() in VIDEO_SUFFIXES


@dataclass(frozen=True)
class VideoFace:
    """One face in one sampled frame: where and when, which track, and the recognizer's result."""

    frame: int            # index of the frame in the video (0-based, all frames counted)
    time_s: float         # its time from the video's start
    track: int            # track id, from 0, stable across frames
    face: object          # the ensemble_fer.inference.recognizer.FaceResult

    @property
    def box(self):
        return self.face.box

    @property
    def emotion(self) -> str:
        return self.face.emotion


@dataclass(frozen=True)
class TrackSummary:
    """One face followed through a video."""

    track: int
    first_s: float
    last_s: float
    n_frames: int         # sampled frames it was seen in
    emotion: str          # dominant emotion: the most frequent top emotion
    share: float          # that emotion's share of the track's sampled frames (its time)
    mean_scores: dict     # each class's mean probability over the track


@dataclass(frozen=True)
class VideoInfo:
    path: Path
    fps: float            # the container's frame rate (FALLBACK_FPS when unknown)
    n_frames: int         # frames the container announces (0 when unknown)
    width: int
    height: int


def open_video(path):
    """``(cv2.VideoCapture, VideoInfo)``; :class:`InputError` naming the file when OpenCV cannot read it."""
    import cv2

    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: file not found")
    capture = cv2.VideoCapture(os.fspath(path))
    if not capture.isOpened():
        capture.release()
        raise InputError(f"{path}: not a video OpenCV can read (unknown container or codec, or a broken file)")
    fps = capture.get(cv2.CAP_PROP_FPS)
    fps = float(fps) if fps and np.isfinite(fps) and 0 < fps < 1000 else FALLBACK_FPS
    info = VideoInfo(path, fps, max(0, int(capture.get(cv2.CAP_PROP_FRAME_COUNT) or 0)),
                     int(capture.get(cv2.CAP_PROP_FRAME_WIDTH)), int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT)))
    return capture, info


def check_video(path) -> VideoInfo:
    """The video's :class:`VideoInfo` once its first frame decodes; :class:`InputError` naming the
    file otherwise. Cheap (no model, one frame): callers check inputs with it before loading one."""
    capture, info = open_video(path)
    try:
        if not capture.grab() or not capture.retrieve()[0]:
            raise InputError(f"{path}: no frame could be decoded (unsupported codec or a broken file)")
    finally:
        capture.release()
    return info


def sampled_frame_count(info: VideoInfo, fps: float) -> int:
    """How many frames :func:`read_frames` yields (from the announced frame count; an estimate
    for containers that do not announce it exactly)."""
    step = max(1.0, info.fps / fps)
    return int(np.ceil(info.n_frames / step)) if info.n_frames else 0


def read_frames(path, fps: float = DEFAULT_FPS) -> Iterator[tuple[int, float, np.ndarray]]:
    """``(frame index, time in s, RGB uint8 frame)`` of the frames sampled at ``fps`` per second."""
    import cv2

    check_fps(fps)
    capture, info = open_video(path)
    step = max(1.0, info.fps / fps)      # source frames per sample; fractional steps keep the rate exact
    try:
        index, next_sample, yielded = 0, 0.0, 0
        while True:
            wanted = index >= next_sample - 1e-9
            if not capture.grab():
                break
            if wanted:
                ok, frame = capture.retrieve()
                if not ok:
                    break
                yield index, index / info.fps, cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
                yielded += 1
                next_sample = yielded * step
            index += 1
        if index == 0:
            raise InputError(f"{path}: no frame could be decoded (unsupported codec or a broken file)")
    finally:
        capture.release()


def check_fps(fps) -> None:
    if (isinstance(fps, bool) or not isinstance(fps, (int, float, np.integer, np.floating)) or not fps > 0
            or not np.isfinite(fps)):
        raise InputError(f"fps must be a finite number > 0 (frames sampled per second); got {fps!r}")


def video_info(path) -> VideoInfo:
    """The :class:`VideoInfo` of a video (:func:`open_video`, the file closed again)."""
    capture, info = open_video(path)
    capture.release()
    return info


def sampling_rate(info: VideoInfo, fps: float) -> float:
    """The rate :func:`read_frames` really samples at: ``fps``, or the clip's own frame rate
    when that is lower (then every frame is read). An annotated video written at this rate
    lasts as long as the clip."""
    return min(float(fps), info.fps)


def iou(a, b) -> float:
    """Intersection over union of two ``(left, top, right, bottom)`` boxes (inclusive pixels)."""
    w = min(a[2], b[2]) - max(a[0], b[0]) + 1
    h = min(a[3], b[3]) - max(a[1], b[1]) + 1
    if w <= 0 or h <= 0:
        return 0.0
    inter = w * h
    area = lambda r: (r[2] - r[0] + 1) * (r[3] - r[1] + 1)   # noqa: E731
    return inter / float(area(a) + area(b) - inter)


class Tracker:
    """Track ids for the faces of successive frames by greedy IoU matching (see the module doc)."""

    def __init__(self, min_iou: float = 0.3, max_gap_s: float = 1.0):
        self.min_iou = float(min_iou)
        self.max_gap_s = float(max_gap_s)
        self._tracks: dict[int, tuple] = {}      # id -> (last box, last time)
        self._next = 0

    def update(self, boxes, time_s: float) -> list[int]:
        """Track ids of ``boxes`` (one frame's faces, seen at ``time_s``), in their order."""
        self._tracks = {t: (box, seen) for t, (box, seen) in self._tracks.items()
                        if time_s - seen <= self.max_gap_s}
        pairs = sorted(((iou(box, last), k, t) for k, box in enumerate(boxes)
                        for t, (last, _) in self._tracks.items()), reverse=True)
        ids: list[int | None] = [None] * len(boxes)
        taken = set()
        for overlap, k, t in pairs:
            if overlap < self.min_iou:
                break
            if ids[k] is None and t not in taken:
                ids[k] = t
                taken.add(t)
        for k in range(len(boxes)):
            if ids[k] is None:
                ids[k] = self._next
                self._next += 1
        for k, box in enumerate(boxes):
            self._tracks[ids[k]] = (tuple(box), time_s)
        return ids


def predict_video(recognizer, path, fps: float = DEFAULT_FPS, *, batch_size: int = 64, tta: int | None = None,
                  tracker: Tracker | None = None, progress: bool = False) -> Iterator[VideoFace]:
    """The :class:`VideoFace` rows of a video, frame by frame (see the module doc);
    ``progress`` shows a tqdm bar on stderr (sampled frames, frames/s)."""
    for _, _, _, rows in iter_video_frames(recognizer, path, fps, batch_size=batch_size, tta=tta,
                                           tracker=tracker, progress=progress):
        yield from rows


def iter_video_frames(recognizer, path, fps: float = DEFAULT_FPS, *, batch_size: int = 64, tta: int | None = None,
                      tracker: Tracker | None = None, progress: bool = False):
    """``(frame, time_s, RGB frame, [VideoFace])`` for every sampled frame, in order; frames
    wait in memory only until the batch holding their faces has run."""
    tracker = tracker or Tracker()
    _, info = open_video(path)      # fails early, with the file's name, before any model work
    waiting: deque = deque()
    bar = None
    if progress:
        import sys

        from tqdm import tqdm

        bar = tqdm(total=sampled_frame_count(info, fps) or None, desc=Path(path).name, unit="frame",
                   file=sys.stderr, leave=False)

    def frames():
        for frame, time_s, rgb in read_frames(path, fps):
            waiting.append((frame, time_s, rgb))
            yield rgb
            if bar is not None:
                # Resumed: the frame's faces are detected (the costly part). Counted here, not
                # when its batch comes back: results arrive a batch of faces at a time, so a
                # bar fed by them saw its first frame only after a whole batch's work and
                # extrapolated a first estimate many times too long.
                bar.update(1)

    try:
        for faces in recognizer.iter_predict(frames(), batch_size=batch_size, tta=tta):
            frame, time_s, rgb = waiting.popleft()
            ids = tracker.update([face.box for face in faces], time_s)
            rows = [VideoFace(frame, round(time_s, 3), track, face) for track, face in zip(ids, faces)]
            yield frame, time_s, rgb, rows
    finally:
        if bar is not None:
            bar.close()


def summarize_tracks(rows) -> list[TrackSummary]:
    """One :class:`TrackSummary` per track of ``rows`` (:class:`VideoFace`), by track id."""
    by_track: dict[int, list[VideoFace]] = {}
    for row in rows:
        by_track.setdefault(row.track, []).append(row)
    summaries = []
    for track, faces in sorted(by_track.items()):
        counts = Counter(face.emotion for face in faces)
        # ties: the emotion with the higher mean probability
        classes = list(faces[0].face.scores)
        mean = {c: float(np.mean([face.face.scores[c] for face in faces])) for c in classes}
        emotion = max(counts, key=lambda e: (counts[e], mean[e]))
        summaries.append(TrackSummary(track, faces[0].time_s, faces[-1].time_s, len(faces), emotion,
                                      counts[emotion] / len(faces), mean))
    return summaries


def format_summary(path, summaries: list[TrackSummary]) -> str:
    """A few readable lines: one per track."""
    if not summaries:
        return f"{path}: no face in the sampled frames"
    lines = [f"{path}: {len(summaries)} face track(s)"]
    for s in summaries:
        lines.append(f"  track {s.track}: {s.first_s:.1f}-{s.last_s:.1f} s, {s.n_frames} frame(s), "
                     f"mostly {s.emotion} ({s.share:.0%} of the time)")
    return "\n".join(lines)


class AnnotatedVideoWriter:
    """Writes sampled frames with their faces drawn (boxes, ``#track emotion score``) to a
    video file at the sampling rate; the container follows the suffix (``.mp4``: MPEG-4 part
    2, which every OpenCV build writes; ``.avi``: MJPG). Written to a temporary name in the
    target folder and renamed on :meth:`close`, so a failed run leaves no half file."""

    FOURCC = {".mp4": "mp4v", ".m4v": "mp4v", ".mov": "mp4v", ".avi": "MJPG", ".mkv": "mp4v"}

    def __init__(self, path, fps: float, suffix: str | None = None):
        path = Path(path)
        self.suffix = (suffix or path.suffix).lower()      # a temporary target may lack one
        if self.suffix not in self.FOURCC:
            raise InputError(f"{path}: annotated video must end in one of {sorted(self.FOURCC)}")
        self.path, self.fps = path, float(fps)
        self._tmp = path.with_name(f".{path.name}.writing{os.getpid()}{self.suffix}")
        self._writer = None
        self.frames = 0

    def write(self, rgb: np.ndarray, rows) -> None:
        import cv2

        from ensemble_fer.inference import annotate
        faces = [row.face for row in rows]
        labels = ["#{} {} {:.2f}".format(row.track, *row.face.top_emotion) for row in rows]
        drawn = annotate.draw_faces(rgb, faces, labels=labels)
        if self._writer is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            height, width = drawn.shape[:2]
            fourcc = cv2.VideoWriter_fourcc(*self.FOURCC[self.suffix])
            self._writer = cv2.VideoWriter(os.fspath(self._tmp), fourcc, self.fps, (width, height))
            if not self._writer.isOpened():
                raise InputError(f"{self.path}: OpenCV cannot write this video format here")
        self._writer.write(cv2.cvtColor(drawn, cv2.COLOR_RGB2BGR))
        self.frames += 1

    def close(self, keep: bool = True) -> None:
        if self._writer is not None:
            self._writer.release()
            self._writer = None
            if keep:
                os.replace(self._tmp, self.path)
        if self._tmp.exists():
            self._tmp.unlink()

    def __enter__(self):
        return self

    def __exit__(self, kind, value, traceback):
        self.close(keep=kind is None)
