"""Video prediction on a short video this test writes from the bundled photos (real dlib,
real Keras model, real OpenCV codecs)."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np
import pytest

from ensemble_fer.inference import video
from ensemble_fer.features.image_io import read_image_file
from ensemble_fer.errors import InputError

PHOTOS = Path(__file__).resolve().parent / "data" / "photos"
SEGMENTS = ("2008_002470.jpg", "2008_007676.jpg")     # 6 and 7 faces
FPS, SECONDS_PER_PHOTO, DRIFT = 10, 1.0, 2


def write_video(path: Path, photos=SEGMENTS, fps=FPS, size=(640, 480)) -> Path:
    """Each photo for one second, drifting DRIFT pixels right per frame (faces move, tracks
    must follow), on a black 640x480 canvas."""
    import cv2

    width, height = size
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (width, height))
    assert writer.isOpened()
    for name in photos:
        image = read_image_file(PHOTOS / name)[..., :3]
        canvas = np.zeros((height, width, 3), np.uint8)
        canvas[:min(height, image.shape[0]), :min(width, image.shape[1])] = image[:height, :width]
        for k in range(int(fps * SECONDS_PER_PHOTO)):
            writer.write(cv2.cvtColor(np.roll(canvas, DRIFT * k, axis=1), cv2.COLOR_RGB2BGR))
    writer.release()
    return path


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    return write_video(tmp_path_factory.mktemp("video") / "clip.mp4")


def test_frames_are_sampled_at_the_asked_rate(clip):
    frames = list(video.read_frames(clip, fps=4))
    # 20 frames at 10 fps, one every 2.5 frames: 0, 3, 5, 8, 10, 13, 15, 18
    assert [f for f, _, _ in frames] == [0, 3, 5, 8, 10, 13, 15, 18]
    assert [t for _, t, _ in frames] == pytest.approx([f / FPS for f, _, _ in frames])
    assert all(rgb.shape == (480, 640, 3) and rgb.dtype == np.uint8 for _, _, rgb in frames)
    # a rate above the video's takes every frame
    assert len(list(video.read_frames(clip, fps=100))) == 20
    _, info = video.open_video(clip)
    assert video.sampled_frame_count(info, 4) == 8


def test_unreadable_video_is_one_line_naming_the_file(tmp_path):
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"not a video at all")
    with pytest.raises(InputError, match="broken.mp4: "):
        list(video.read_frames(broken))
    with pytest.raises(InputError, match="fps must be a finite number > 0"):
        list(video.read_frames(broken, fps=0))


def test_tracker_follows_boxes_by_overlap():
    tracker = video.Tracker(min_iou=0.3, max_gap_s=1.0)
    assert tracker.update([(0, 0, 10, 10), (50, 50, 70, 70)], 0.0) == [0, 1]
    # moved a little, listed in the other order; a new face appears
    assert tracker.update([(52, 51, 72, 71), (1, 0, 11, 10), (100, 100, 120, 120)], 0.25) == [1, 0, 2]
    # track 0 unseen for longer than max_gap_s ends: the same place starts a new track
    assert tracker.update([(52, 51, 72, 71)], 1.0) == [1]
    assert tracker.update([(1, 0, 11, 10)], 1.5) == [3]
    assert video.iou((0, 0, 9, 9), (0, 0, 9, 9)) == 1.0 and video.iou((0, 0, 9, 9), (10, 10, 19, 19)) == 0.0


def test_video_rows_match_the_photo_path_and_tracks_follow_faces(tiny_variant, clip):
    from ensemble_fer import EmotionRecognizer

    recognizer = EmotionRecognizer.load(tiny_variant)
    frames = list(video.iter_video_frames(recognizer, clip, fps=4, batch_size=5))
    assert len(frames) == 8
    for _, _, rgb, rows in frames[::3]:
        # faces batched across frames give what one frame at a time gives
        single = recognizer.predict(rgb)
        assert [r.box for r in rows] == [f.box for f in single]
        for row, face in zip(rows, single):
            np.testing.assert_allclose(list(row.face.scores.values()), list(face.scores.values()), atol=1e-5)
    rows = [row for *_, frame_rows in frames for row in frame_rows]
    first = {len(r) for t, r in [(t, [x for x in rows if x.time_s < 1.0 and x.track == t]) for t in range(6)]}
    # the six faces of the first photo keep their tracks through its four sampled frames
    assert [len(frame_rows) for *_, frame_rows in frames[:4]] == [6, 6, 6, 6]
    assert first == {4}
    summaries = video.summarize_tracks(rows)
    assert len(summaries) == 6 + 7
    for s in summaries:
        track_rows = [r for r in rows if r.track == s.track]
        assert s.n_frames == len(track_rows)
        assert s.share == pytest.approx(sum(r.emotion == s.emotion for r in track_rows) / len(track_rows))
        assert s.share >= max(sum(r.emotion == e for r in track_rows) for e in s.mean_scores) / len(track_rows)


def test_cli_mixes_photos_and_videos_and_annotates_a_video(tiny_variant, clip, tmp_path, capsys):
    import shutil

    import cv2

    from pipelines import console

    folder = tmp_path / "inputs"
    folder.mkdir()
    shutil.copy(clip, folder / "clip.mp4")
    shutil.copy(PHOTOS / "2009_004587.jpg", folder / "photo.jpg")
    out_csv = tmp_path / "out.csv"
    assert console.main(["predict", str(folder), "--model", str(tiny_variant), "--csv", str(out_csv),
                         "--fps", "2"]) == 0
    err = capsys.readouterr().err
    assert "clip.mp4: 13 face track(s)" in err and "mostly" in err
    assert "1 photo(s) and 1 video(s) read" in err       # a video is not counted as a photo
    rows = list(csv.DictReader(io.StringIO(out_csv.read_text())))
    photo = [r for r in rows if r["path"].endswith("photo.jpg")]
    clip_rows = [r for r in rows if r["path"].endswith("clip.mp4")]
    assert photo and all(r["frame"] == "" and r["track"] == "" for r in photo)
    assert sorted({int(r["frame"]) for r in clip_rows}) == [0, 5, 10, 15]
    assert {float(r["time_s"]) for r in clip_rows} == {0.0, 0.5, 1.0, 1.5}
    assert len({r["track"] for r in clip_rows}) == 13
    assert all(r["status"] == "ok" and r["emotion"] for r in clip_rows)

    annotated = tmp_path / "annotated.mp4"
    args = ["predict", str(clip), "--model", str(tiny_variant), "--fps", "2", "--annotate", str(annotated), "--quiet"]
    assert console.main(args) == 0
    capture = cv2.VideoCapture(str(annotated))
    assert capture.get(cv2.CAP_PROP_FRAME_COUNT) == 4 and capture.get(cv2.CAP_PROP_FPS) == 2
    ok, frame = capture.read()
    capture.release()
    original = next(video.read_frames(clip, fps=2))[2]
    # boxes and labels drawn: many pixels change a lot
    assert ok and (np.abs(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB).astype(int) - original).max(axis=2) > 100).sum() > 300
    capsys.readouterr()
    assert console.main(args) == 2                              # not overwritten without --force
    assert "exists; pass --force" in capsys.readouterr().err
    assert console.main(args + ["--force"]) == 0
    assert console.main(["predict", str(clip), str(PHOTOS / "dogs.jpg"), "--model", str(tiny_variant),
                         "--annotate", str(tmp_path / "two.mp4")]) == 2
    assert "a video file is for one video input" in capsys.readouterr().err


def test_sampled_frames_without_a_face_get_a_no_face_row(tiny_variant, tmp_path, capsys):
    """A timeline without holes: one second of faces, then one second of dogs (no face); every
    sampled frame has rows, the faceless ones a no_face row with its frame and time and an
    empty emotion and track."""
    from pipelines import console

    clip = write_video(tmp_path / "faces_then_dogs.mp4", photos=("2008_002470.jpg", "dogs.jpg"))
    out_csv = tmp_path / "out.csv"
    assert console.main(["predict", str(clip), "--model", str(tiny_variant), "--csv", str(out_csv), "--fps", "2",
                         "--quiet"]) == 0
    rows = list(csv.DictReader(io.StringIO(out_csv.read_text())))
    assert sorted({int(r["frame"]) for r in rows}) == [0, 5, 10, 15]
    faceless = [r for r in rows if r["status"] == "no_face"]
    assert sorted(int(r["frame"]) for r in faceless) == [10, 15]
    assert all(r["emotion"] == "" and r["track"] == "" and r["time_s"] for r in faceless)
    assert all(r["status"] == "ok" and r["emotion"] for r in rows if int(r["frame"]) < 10)


def test_video_progress_counts_frames_as_they_are_detected(tiny_variant, clip, monkeypatch):
    """The bar moves as frames are taken for detection, not when their batch of faces comes
    back: fed by results, it stood at 0 for a whole batch's work and then jumped, and its
    first estimate was many times the real length."""
    import tqdm

    from ensemble_fer import EmotionRecognizer

    bars = []

    class Recording(tqdm.tqdm):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            bars.append(self)

    monkeypatch.setattr(tqdm, "tqdm", Recording)
    recognizer = EmotionRecognizer.load(tiny_variant)
    frames = video.iter_video_frames(recognizer, clip, fps=FPS, batch_size=64, progress=True)
    next(frames)       # the first result: once 64 faces (6 then 7 per frame) have filled a batch
    assert bars and bars[0].n >= 9
    for _ in frames:
        pass
    assert bars[0].n == 20
