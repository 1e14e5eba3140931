"""EmotionRecognizer and `python -m pipelines.predict` on real photos (dlib's PASCAL VOC test
photos with their ground-truth face boxes), with a variant trained for one epoch."""

from __future__ import annotations

import contextlib
import csv
import io
import shutil

import numpy as np
import pytest

from conftest import SAMPLE, TEST_DATA
from ensemble_fer import EmotionRecognizer
from ensemble_fer.datasets import read_image_file, to_gray
from ensemble_fer.recognizer import FaceResult
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


def test_missing_release_model_says_what_to_do(monkeypatch, tmp_path, capsys):
    from ensemble_fer import recognizer as module

    monkeypatch.setattr(module, "DEFAULT_MODEL", tmp_path / "release")
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
    assert header == ["path", "face", "left", "top", "right", "bottom", "emotion", *recognizer.classes]
    by_photo = {}
    for row in rows:
        by_photo.setdefault(row[0], []).append(row)
    assert set(by_photo) == {str(photos / n) for n in ("2008_002506.jpg", "2009_004587.jpg", "dogs.jpg")}
    assert by_photo[str(photos / "dogs.jpg")] == [[str(photos / "dogs.jpg"), "", "", "", "", "", "no_face"]
                                                  + [""] * len(recognizer.classes)]
    for name in ("2008_002506.jpg", "2009_004587.jpg"):
        expected = recognizer.predict(photos / name)
        got = by_photo[str(photos / name)]
        assert len(got) == len(expected) == len(GROUND_TRUTH[name])       # one row per face
        for k, (row, face) in enumerate(zip(got, expected)):
            assert row[1] == str(k)
            assert tuple(int(v) for v in row[2:6]) == face.box
            scores = [float(v) for v in row[7:]]
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
        assert overlay.shape == (48, 48, 3)                     # the face crop's size
        assert overlay.std() > 5                                # not a constant picture


def test_cli_prints_csv_without_csv_option_and_recurses_on_request(tiny_variant, tmp_path, capsys):
    crops = sorted(SAMPLE.glob("train/fear/*.jpg"))[:2]
    (tmp_path / "sub").mkdir()
    shutil.copy(crops[0], tmp_path / "a.jpg")
    shutil.copy(crops[1], tmp_path / "sub" / "b.jpg")
    assert cli.main([str(tmp_path), "--model", str(tiny_variant), "--quiet"]) == 0
    rows = list(csv.reader(io.StringIO(capsys.readouterr().out)))
    assert [r[:7] for r in rows[1:]] == [[str(tmp_path / "a.jpg"), "0", "0", "0", "47", "47", rows[1][6]]]
    assert cli.main([str(tmp_path), "--model", str(tiny_variant), "--quiet", "--recursive", "--tta", "2"]) == 0
    rows = list(csv.reader(io.StringIO(capsys.readouterr().out)))
    assert [r[0] for r in rows[1:]] == [str(tmp_path / "a.jpg"), str(tmp_path / "sub" / "b.jpg")]
    assert all(sum(float(v) for v in r[7:]) == pytest.approx(1.0, abs=1e-5) for r in rows[1:])


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
