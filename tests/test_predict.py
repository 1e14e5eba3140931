"""EmotionRecognizer and `python -m pipelines.predict` on real photos (dlib's PASCAL VOC test
photos with their ground-truth face boxes), with a variant trained for one epoch."""

from __future__ import annotations

import contextlib
import csv
import io
import os
import shutil
import signal
import struct
import subprocess
import sys
import time
import zlib

from pathlib import Path

import numpy as np
import pytest

from conftest import REPO, SAMPLE, TEST_DATA
from ensemble_fer import artifacts
from ensemble_fer import EmotionRecognizer
from ensemble_fer.features.image_io import read_image_file, to_gray
from ensemble_fer.errors import InputError
from ensemble_fer.inference.recognizer import FaceResult
from pipelines import predict as cli
from test_faces import GROUND_TRUTH, iou

PHOTOS = TEST_DATA / "photos"
FILES = sorted(GROUND_TRUTH)                       # 5 photos, 25 faces
DOGS = PHOTOS / "dogs.jpg"


@pytest.fixture(scope="module")
def recognizer(tiny_variant):
    return EmotionRecognizer.load(tiny_variant)


@pytest.fixture(scope="module")
def one_at_a_time(recognizer):
    """{file: predict(path)} for every photo, computed once."""
    return {file: recognizer.predict(PHOTOS / file) for file in FILES}


def _same(a: list[FaceResult], b: list[FaceResult], atol=1e-6):
    assert [f.box for f in a] == [f.box for f in b]
    assert [f.emotion for f in a] == [f.emotion for f in b]
    for fa, fb in zip(a, b):
        assert list(fa.scores) == list(fb.scores)
        np.testing.assert_allclose(list(fa.scores.values()), list(fb.scores.values()), atol=atol)


# ----------------------------------------------------------------------------- library

@pytest.mark.parametrize("file", FILES)
def test_faces_match_the_ground_truth_and_scores_are_probabilities(file, one_at_a_time, recognizer):
    faces = one_at_a_time[file]
    assert all(isinstance(f, FaceResult) for f in faces)
    for truth, _ in GROUND_TRUTH[file]:
        assert max(iou(truth, f.box) for f in faces) >= 0.5, (file, truth, [f.box for f in faces])
    areas = [(f.box[2] - f.box[0]) * (f.box[3] - f.box[1]) for f in faces]
    assert areas == sorted(areas, reverse=True)                 # largest first
    for face in faces:
        assert all(isinstance(v, int) for v in face.box)
        assert list(face.scores) == list(recognizer.classes)     # the documented order
        assert sum(face.scores.values()) == pytest.approx(1.0, abs=1e-5)
        assert all(0.0 <= v <= 1.0 for v in face.scores.values())
        assert face.emotion == max(face.scores, key=face.scores.get)


def test_no_face_in_the_dog_photo(recognizer):
    assert recognizer.predict(DOGS) == []


def test_rgb_rgba_and_gray_inputs_give_the_same_result(recognizer, one_at_a_time):
    file = "2008_002506.jpg"
    rgb = read_image_file(PHOTOS / file)
    assert rgb.ndim == 3 and rgb.shape[2] == 3
    rgba = np.dstack([rgb, np.full(rgb.shape[:2], 200, np.uint8)])
    gray = to_gray(rgb)
    expected = one_at_a_time[file]
    assert len(expected) == 3
    for image in (rgb, rgba, gray, gray[..., None]):
        _same(recognizer.predict(image), expected)


def test_a_48x48_input_is_the_face_itself(recognizer):
    path = sorted(SAMPLE.glob("train/happy/*.jpg"))[0]
    faces = recognizer.predict(path)
    assert len(faces) == 1 and faces[0].box == (0, 0, 47, 47)
    crop = read_image_file(path)
    _same(recognizer.predict(np.dstack([crop] * 3)), faces)
    np.testing.assert_array_equal(recognizer.face_crop(crop, faces[0]), to_gray(crop))


class _CountingPredictor:
    """The real predictor, recording how many crops each call gets."""

    def __init__(self, predictor):
        self.predictor, self.calls = predictor, []

    def __getattr__(self, name):
        return getattr(self.predictor, name)

    def predict_proba(self, images, tta=0):
        self.calls.append(len(images))
        return self.predictor.predict_proba(images, tta=tta)


def test_batching_gives_the_results_of_one_at_a_time(recognizer, one_at_a_time):
    counting = _CountingPredictor(recognizer._predictor)
    batched = EmotionRecognizer(counting, detector="hog", upsample=1)
    inputs = [PHOTOS / f for f in FILES[:2]] + [DOGS] + [PHOTOS / f for f in FILES[2:]]
    results = batched.predict_many(inputs, batch_size=8)
    assert len(results) == len(inputs) and results[2] == []
    for file, faces in zip(FILES, results[:2] + results[3:]):
        _same(faces, one_at_a_time[file], atol=1e-5)
    # 25 faces of 6 photos went through the network 8 at a time, not photo by photo
    assert counting.calls == [8, 8, 8, 1]
    # arrays and paths mix, and a stack of crops is many inputs
    crops = np.stack([read_image_file(p) for p in sorted(SAMPLE.glob("train/sad/*.jpg"))[:3]])
    stacked = recognizer.predict_many(crops, batch_size=2)
    assert [len(f) for f in stacked] == [1, 1, 1]
    for crop, faces in zip(crops, stacked):
        _same(recognizer.predict(crop), faces, atol=1e-5)


def test_bad_arguments(recognizer, tmp_path):
    with pytest.raises(TypeError, match="use predict for one"):
        recognizer.predict_many(PHOTOS / FILES[0])
    with pytest.raises(ValueError, match="batch_size must be an int >= 1"):
        recognizer.predict_many([DOGS], batch_size=0)
    with pytest.raises(ValueError, match="uint8"):
        recognizer.predict(np.zeros((100, 100), np.float32))
    (tmp_path / "notes.txt").write_text("not an image")
    with pytest.raises(ValueError, match="notes.txt: not a readable image"):
        recognizer.predict(tmp_path / "notes.txt")
    with pytest.raises(ValueError, match="detector must be one of"):
        EmotionRecognizer(recognizer._predictor, detector="haar")


def test_the_release_predicts_with_the_views_its_weights_were_fitted_on():
    """Release 0.6's ensemble.json records tta 2: photos are scored with the face and its mirror
    image unless the caller passes tta (0: the networks alone)."""
    recognizer = EmotionRecognizer.load()
    assert recognizer._predictor.default_tta == 2
    photo = PHOTOS / "2008_002470.jpg"
    default, two, none = (recognizer.predict(photo, **kwargs) for kwargs in ({}, {"tta": 2}, {"tta": 0}))
    assert [f.scores for f in default] == [f.scores for f in two]
    assert len(default) == len(none) and [f.scores for f in default] != [f.scores for f in none]


def test_missing_release_model_says_what_to_do(monkeypatch, tmp_path, capsys):
    from ensemble_fer import release
    monkeypatch.setattr(release, "SEARCH_PATH", (tmp_path / "package", tmp_path))
    with pytest.raises(FileNotFoundError, match="train_variant.*--model PATH"):
        EmotionRecognizer.load()
    assert cli.main([str(DOGS)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "no release model" in err and "--model PATH" in err


# ----------------------------------------------------------------------------- CLI

@pytest.fixture(scope="module")
def cli_run(tiny_variant, tmp_path_factory):
    """One CLI run over a folder with two photos, the dog photo, a corrupt JPEG and a text
    file, plus a text file named on the command line: (folder, notes file, out, exit code, stderr)."""
    root = tmp_path_factory.mktemp("predict")
    photos = root / "photos"
    photos.mkdir()
    for name in ("2008_002506.jpg", "2009_004587.jpg", "dogs.jpg"):
        shutil.copy(PHOTOS / name, photos / name)
    (photos / "broken.jpg").write_bytes((PHOTOS / "2008_002506.jpg").read_bytes()[:2500])
    (photos / "readme.txt").write_text("a folder's non-image file is not an input")
    notes = root / "notes.txt"
    notes.write_text("not an image")
    out = root / "out"
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr):
        code = cli.main([str(photos), str(notes), "--model", str(tiny_variant), "--csv", str(out / "faces.csv"),
                         "--annotate", str(out / "annotated"), "--gradcam", str(out / "gradcam"),
                         "--batch-size", "4"])
    return photos, notes, out, code, stderr.getvalue()


def test_cli_writes_the_documented_csv_and_skips_unreadable_files(cli_run, recognizer):
    photos, notes, out, code, err = cli_run
    assert code == 0
    problems = [line for line in err.splitlines() if "not a readable image" in line]
    assert len(problems) == 2
    assert any(line.startswith(f"{photos / 'broken.jpg'}: not a readable image (") for line in problems)
    assert any(line.startswith(f"{notes}: not a readable image (") for line in problems)
    assert "readme.txt" not in err

    with open(out / "faces.csv", newline="") as handle:
        reader = csv.reader(handle)
        header = next(reader)
        rows = list(reader)
    n = len(recognizer.classes)
    assert header == ["path", "face", "left", "top", "right", "bottom", "emotion", *recognizer.classes,
                      "status", "reason"]
    by_photo = {}
    for row in rows:
        by_photo.setdefault(row[0], []).append(row)
    # one row per input file at least, unreadable ones included (with the reason)
    assert set(by_photo) == {str(photos / n) for n in ("2008_002506.jpg", "2009_004587.jpg", "dogs.jpg",
                                                       "broken.jpg")} | {str(notes)}
    assert by_photo[str(photos / "dogs.jpg")] == [[str(photos / "dogs.jpg"), "", "", "", "", "", ""]
                                                  + [""] * n + ["no_face", "no face found"]]
    for path in (photos / "broken.jpg", notes):
        [row] = by_photo[str(path)]
        assert row[:7 + n] == [str(path)] + [""] * (6 + n)
        assert row[-2] == "error" and row[-1].startswith("not a readable image (")
    for name in ("2008_002506.jpg", "2009_004587.jpg"):
        expected = recognizer.predict(photos / name)
        got = by_photo[str(photos / name)]
        assert len(got) == len(expected) == len(GROUND_TRUTH[name])       # one row per face
        for k, (row, face) in enumerate(zip(got, expected)):
            assert row[1] == str(k)
            assert tuple(int(v) for v in row[2:6]) == face.box
            scores = [float(v) for v in row[7:7 + n]]
            assert row[7 + n:] == ["ok", ""]
            assert sum(scores) == pytest.approx(1.0, abs=1e-5)
            np.testing.assert_allclose(scores, list(face.scores.values()), atol=2e-6)
            assert row[6] == face.emotion


def test_cli_annotates_and_writes_grad_cam_maps(cli_run):
    photos, _, out, code, _ = cli_run
    assert code == 0
    for name in ("2008_002506.jpg", "2009_004587.jpg", "dogs.jpg"):
        original = read_image_file(photos / name)
        drawn = read_image_file(out / "annotated" / name)
        assert drawn.shape == original.shape
        # JPEG re-encoding changes pixels a little; boxes and labels change some a lot
        assert (np.abs(drawn.astype(int) - original).max(axis=2) > 100).sum() > 200
    maps = sorted((out / "gradcam").glob("*.png"))
    assert len(maps) == 3 + 2
    assert {m.name.split("_face")[0] for m in maps} == {"2008_002506", "2009_004587"}
    for path in maps:
        overlay = read_image_file(path)
        assert overlay.shape[1] == 2 * 192 and overlay.shape[0] > 192   # crop | overlay, caption below
        assert overlay.std() > 5                                # not a constant picture


def test_cli_prints_csv_without_csv_option_and_recurses_on_request(tiny_variant, tmp_path, capsys):
    crops = sorted(SAMPLE.glob("train/fear/*.jpg"))[:2]
    (tmp_path / "sub").mkdir()
    shutil.copy(crops[0], tmp_path / "a.jpg")
    shutil.copy(crops[1], tmp_path / "sub" / "b.jpg")
    assert cli.main([str(tmp_path), "--model", str(tiny_variant), "--quiet"]) == 0
    rows = list(csv.reader(io.StringIO(capsys.readouterr().out)))
    assert [r[:7] for r in rows[1:]] == [[str(tmp_path / "a.jpg"), "0", "0", "0", "47", "47", rows[1][6]]]
    assert cli.main([str(tmp_path), "--model", str(tiny_variant)]) == 0
    # the sub-folder left out is said, with how to include it
    assert (f"note: {tmp_path}: 1 sub-folder(s) not read (sub); pass --recursive to include them"
            in capsys.readouterr().err)
    assert cli.main([str(tmp_path), "--model", str(tiny_variant), "--quiet", "--recursive", "--tta", "2"]) == 0
    rows = list(csv.reader(io.StringIO(capsys.readouterr().out)))
    assert [r[0] for r in rows[1:]] == [str(tmp_path / "a.jpg"), str(tmp_path / "sub" / "b.jpg")]
    assert all(sum(float(v) for v in r[7:-2]) == pytest.approx(1.0, abs=1e-5) for r in rows[1:])


def test_cli_fails_only_when_nothing_could_be_read(tiny_variant, tmp_path, capsys):
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is no JPEG")
    (tmp_path / "notes.txt").write_text("hello")
    code = cli.main([str(tmp_path / "broken.jpg"), str(tmp_path / "notes.txt"), str(tmp_path / "missing.png"),
                     "--model", str(tiny_variant), "--quiet"])
    assert code != 0
    err = capsys.readouterr().err
    assert "broken.jpg: not a readable image" in err and "notes.txt: not a readable image" in err
    assert "missing.png: no such file or folder" in err and "no input could be read" in err
    assert cli.main([str(tmp_path / "empty_dir_missing"), "--model", str(tiny_variant)]) != 0


# ----------------------------------------------------------------------------- one row per file, resume, outputs

def _black_png(path, width, height):
    """A real (valid) grayscale PNG, written row by row so it costs no memory to make."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    compressor, row = zlib.compressobj(9), b"\x00" * (width + 1)
    data = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
                     + chunk(b"IDAT", data) + chunk(b"IEND", b""))
    return path


def _read_csv(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_an_oversized_or_unreadable_file_gets_its_row_and_the_batch_goes_on(tiny_variant, tmp_path, capsys):
    photos = tmp_path / "photos"
    photos.mkdir()
    shutil.copy(sorted(SAMPLE.glob("train/happy/*.jpg"))[0], photos / "a.jpg")
    _black_png(photos / "huge.png", 14000, 14000)               # over Pillow's decompression-bomb limit
    (photos / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is no JPEG")
    shutil.copy(sorted(SAMPLE.glob("train/sad/*.jpg"))[0], photos / "z.jpg")
    out = tmp_path / "faces.csv"
    assert cli.main([str(photos), "--model", str(tiny_variant), "--csv", str(out), "--quiet"]) == 0
    err = capsys.readouterr().err
    assert f"{photos / 'huge.png'}: not read, too large (Image size (196000000 pixels) exceeds limit" in err
    rows = _read_csv(out)
    assert [(Path(r["path"]).name, r["status"]) for r in rows] == [("a.jpg", "ok"), ("broken.jpg", "error"),
                                                                   ("huge.png", "error"), ("z.jpg", "ok")]
    assert rows[2]["reason"].startswith("not read, too large") and rows[2]["emotion"] == ""
    assert not out.with_name("faces.csv.partial").exists()


def test_an_interrupted_run_keeps_its_rows_and_resume_skips_them(tiny_variant, tmp_path, capsys):
    photos = tmp_path / "photos"
    photos.mkdir()
    crops = sorted(SAMPLE.glob("train/*/*.jpg"))
    for k, crop in enumerate(crops):
        shutil.copy(crop, photos / f"{k:03d}.jpg")
    out = tmp_path / "faces.csv"
    out.write_text("an earlier result\n")
    partial = tmp_path / "faces.csv.partial"
    # a real run, stopped by Ctrl-C once it has written a few rows; --force must not have
    # touched the earlier result
    process = subprocess.Popen([sys.executable, "-m", "pipelines.predict", str(photos), "--model", str(tiny_variant),
                                "--csv", str(out), "--force", "--batch-size", "1", "--quiet"], cwd=REPO,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               # a shell starts background jobs with SIGINT ignored, and Python then
                               # installs no KeyboardInterrupt handler: give the child the default
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 300
    while time.time() < deadline and process.poll() is None:
        if partial.exists() and partial.read_text().count("\n") >= 6:
            break
        time.sleep(0.01)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr
    assert "interrupted" in stderr
    assert out.read_text() == "an earlier result\n"
    kept = _read_csv(partial)
    # the sample holds one blank crop (Training_3542668, flagged blank by extraction too)
    assert 5 <= len(kept) < len(crops) and all(r["status"] in ("ok", "blank") for r in kept)

    # without --resume (or --force) the interrupted run is not overwritten
    assert cli.main([str(photos), "--model", str(tiny_variant), "--csv", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.strip() == f"error: {partial}: holds what an interrupted run wrote; pass --resume to continue it or " \
                          f"--force to start over"

    assert cli.main([str(photos), "--model", str(tiny_variant), "--csv", str(out), "--resume", "--batch-size", "8"]) == 0
    err = capsys.readouterr().err
    assert f"{len(kept) - 1} done before (--resume)" in err     # the last row written is redone: it may be cut short
    rows = _read_csv(out)
    assert [r["path"] for r in rows] == [str(photos / f"{k:03d}.jpg") for k in range(len(crops))]
    assert rows[:len(kept) - 1] == kept[:-1]                   # the rows from before, unchanged
    assert [r["status"] for r in rows].count("blank") == 1 and not partial.exists()
    assert all(r["status"] in ("ok", "blank") for r in rows)

    # --resume on a finished CSV adds what it lacks and keeps the rest
    shutil.copy(crops[0], photos / "new.jpg")
    assert cli.main([str(photos), "--model", str(tiny_variant), "--csv", str(out), "--resume", "--quiet"]) == 0
    again = _read_csv(out)
    assert again[:-1] == rows and again[-1]["path"] == str(photos / "new.jpg")


def test_existing_outputs_are_refused_before_any_work(tiny_variant, tmp_path, capsys):
    photo = DOGS
    out = tmp_path / "faces.csv"
    out.write_text("an earlier result\n")
    annotated = tmp_path / "annotated"
    annotated.mkdir()
    (annotated / "keep.png").write_bytes(b"earlier")
    artifacts.mark_output(annotated)        # an earlier run's pictures, as predict marks them
    # the model is never looked at: a missing one is not what is reported
    missing_model = tmp_path / "no-model"
    for args, message in (
            (["--csv", str(out)], f"error: {out}: exists; pass --force to replace it, --resume to add the inputs it "
                                  f"lacks, or choose another output"),
            (["--annotate", str(annotated)], f"error: {annotated}: exists; pass --force"),
            (["--csv", str(tmp_path)], f"error: --csv {tmp_path}: is a folder; give the path of the CSV file"),
            (["--resume"], "error: --resume needs --csv FILE"),
    ):
        assert cli.main([str(photo), "--model", str(missing_model), *args]) == 2
        err = capsys.readouterr().err
        assert err.startswith(message) and err.count("\n") == 1, err
    for args, message in ((["--tta", "11"], "argument --tta: must be an int in [0, 10]; got 11"),
                          (["--batch-size", "0"], "argument --batch-size: must be an int in [1, 4096]; got 0")):
        with pytest.raises(SystemExit) as exit_:        # out of range: refused as the command line is parsed
            cli.main([str(photo), "--model", str(missing_model), *args])
        assert exit_.value.code == 2 and capsys.readouterr().err.splitlines()[-1].endswith(message + " (see --help)")
    assert out.read_text() == "an earlier result\n" and (annotated / "keep.png").read_bytes() == b"earlier"
    help_text = " ".join(cli.build_parser().format_help().split())
    assert "--force" in help_text and "--resume" in help_text and "refused if it exists" in help_text

    # --force replaces them, once the new ones are complete
    assert cli.main([str(photo), "--model", str(tiny_variant), "--csv", str(out), "--annotate", str(annotated),
                     "--force", "--quiet"]) == 0
    assert [r["status"] for r in _read_csv(out)] == ["no_face"]
    assert sorted(p.name for p in annotated.iterdir()) == [artifacts.OUTPUT_MARKER, "dogs.jpg"]
    # and the record of the run that wrote the CSV, hidden beside it (--resume checks it)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".faces.csv.run.json", "annotated", "faces.csv"]


def test_a_model_file_keras_cannot_read_stops_the_run_before_any_output(tiny_variant, tmp_path, capsys):
    model = tmp_path / "model"
    shutil.copytree(tiny_variant, model, ignore=shutil.ignore_patterns(".run"))
    data = (model / "model.keras").read_bytes()
    (model / "model.keras").write_bytes(data[: len(data) // 3])
    out = tmp_path / "faces.csv"
    assert cli.main([str(DOGS), "--model", str(model), "--csv", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{model / 'model.keras'}: not a valid Keras model" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_shipped_model_names_resolve_unless_a_path_of_that_name_exists(monkeypatch, tmp_path, capsys):
    from ensemble_fer import release
    monkeypatch.setattr(release, "SEARCH_PATH", (tmp_path / "package", tmp_path / "models"))
    (tmp_path / "models" / "fast").mkdir(parents=True)
    (tmp_path / "models" / "fast" / "config.json").write_text("{}")
    assert release.resolve_model("fast") == tmp_path / "models" / "fast"
    (tmp_path / "package" / "fast").mkdir(parents=True)
    (tmp_path / "package" / "fast" / "config.json").write_text("{}")
    assert release.resolve_model("fast") == tmp_path / "package" / "fast"     # the packaged copy first
    monkeypatch.chdir(tmp_path)
    (tmp_path / "fast").mkdir()
    assert release.resolve_model("fast") == Path("fast")                     # a path of that name wins
    (tmp_path / "other").mkdir()
    assert release.resolve_model("other") == Path("other")                   # any path is taken as given
    with pytest.raises(InputError, match="--model fats: no such file or folder, and not a shipped model; did you "
                                         "mean 'fast'?"):
        release.resolve_model("fats")                                         # a typo of a shipped name


def test_a_shipped_model_this_installation_lacks_is_one_line(monkeypatch, tmp_path, capsys):
    from ensemble_fer import release
    monkeypatch.setattr(release, "SEARCH_PATH", (tmp_path / "package", tmp_path / "models"))
    monkeypatch.chdir(tmp_path)
    assert cli.main([str(DOGS), "--model", "fast"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "no 'fast' model" in err and "--model PATH" in err


def test_annotate_names_a_file_for_one_input_and_help_says_so(tiny_variant, tmp_path, capsys):
    """One rule for --annotate: a picture or video suffix is a file (for one input), anything
    else a folder; a single photo annotated to ``one.jpg`` is a picture, not a folder."""
    photo = TEST_DATA / "photos" / "2008_002470.jpg"
    out = tmp_path / "one.jpg"
    assert cli.main([str(photo), "--model", str(tiny_variant), "--annotate", str(out), "--quiet"]) == 0
    capsys.readouterr()
    assert out.is_file() and read_image_file(out).shape == read_image_file(photo).shape
    assert cli.main([str(photo), "--model", str(tiny_variant), "--annotate", str(out), "--quiet"]) == 2
    assert "exists; pass --force" in capsys.readouterr().err
    assert cli.main([str(photo), str(photo.with_name("2008_002506.jpg")), "--model", str(tiny_variant),
                     "--annotate", str(tmp_path / "two.jpg"), "--quiet"]) == 2
    assert "a picture file is for one photo input (got 2 photo(s)" in capsys.readouterr().err
    help_text = " ".join(cli.build_parser().format_help().split())
    assert "PATH photos, videos (mp4" in help_text and "a picture (.jpg, .png, .bmp) for a photo" in help_text
