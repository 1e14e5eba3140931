"""Dataset readers on small real fixtures, including every bad-input case."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from conftest import SAMPLE, sample_crops, write_fer_csv
from ensemble_fer import labels
from ensemble_fer.features import datasets, image_io
from ensemble_fer.errors import DatasetError


def test_folder_release_is_detected_and_split(sample_dir):
    data = datasets.open_dataset(sample_dir)
    assert data.format == "fer2013-folders"
    assert set(data.splits) == {"train", "val"}  # PublicTest_* -> val; no PrivateTest here
    assert len(data.splits["train"]) == 280 and len(data.splits["val"]) == 105
    happy = [r for r in data.splits["train"] if r.path.parent.name == "happy"]
    assert {r.label for r in happy} == {labels.code_for_name("happy")} == {3}
    image = datasets.load_image(data.splits["val"][0])
    assert image.shape == (48, 48) and image.dtype == np.uint8


def test_private_test_files_go_to_test_split(tmp_path, sample_dir):
    for split in ("train", "test"):
        (tmp_path / split / "Sadness").mkdir(parents=True)
    src = next((sample_dir / "train" / "sad").glob("*.jpg"))
    shutil.copy(src, tmp_path / "train" / "Sadness" / "Training_1.jpg")
    shutil.copy(src, tmp_path / "test" / "Sadness" / "PublicTest_2.jpg")
    shutil.copy(src, tmp_path / "test" / "Sadness" / "PrivateTest_3.jpg")
    data = datasets.open_dataset(tmp_path)
    assert data.format == "fer2013-folders"
    assert {s: len(r) for s, r in data.splits.items()} == {"train": 1, "val": 1, "test": 1}
    assert data.splits["test"][0].label == 4  # alias "Sadness", case-insensitive


def test_csv_reader_maps_usage_to_splits(tmp_path):
    crops, _ = sample_crops(3)
    csv = write_fer_csv(tmp_path / "fer2013.csv",
                        [(0, crops[0], "Training"), (3, crops[1], "PublicTest"), (6, crops[2], "PrivateTest")])
    data = datasets.open_dataset(csv)
    assert data.format == "fer2013-csv"
    assert [data.splits[s][0].label for s in ("train", "val", "test")] == [0, 3, 6]
    np.testing.assert_array_equal(datasets.load_image(data.splits["val"][0]), crops[1])
    assert data.splits["train"][0].id == "row0"


@pytest.mark.parametrize("header, row, message", [
    ("emotion,Usage", None, "missing column"),
    (None, "9,{px},Training", "emotion code 9"),
    (None, "x,{px},Training", "not an integer code"),
    (None, "1,1 2 3,Training", "holds 3 values, expected 2304"),
    (None, "1,{bad},Training", "0..255"),
    (None, "1,{px},Holdout", "Usage 'Holdout'"),
])
def test_csv_bad_input_names_file_and_row(tmp_path, header, row, message):
    px = " ".join(["7"] * 2304)
    bad = " ".join(["7"] * 2303 + ["300"])
    text = (header or "emotion,pixels,Usage") + "\n"
    if row:
        text += f"0,{px},Training\n" + row.format(px=px, bad=bad) + "\n"
    path = tmp_path / "bad.csv"
    path.write_text(text)
    with pytest.raises(DatasetError, match=message) as err:
        datasets.open_dataset(path)
    assert str(path) in str(err.value)
    if row:
        assert f"{path}:3" in str(err.value)  # the data row's line number


def test_unknown_label_folder_is_an_error_unless_ignored(tmp_path, sample_dir):
    shutil.copytree(sample_dir / "train" / "happy", tmp_path / "happy")
    shutil.copytree(sample_dir / "train" / "sad", tmp_path / "bored")
    with pytest.raises(DatasetError, match="unknown label folder 'bored'"):
        datasets.open_dataset(tmp_path)
    data = datasets.open_dataset(tmp_path, ignore_unknown_labels=True)
    assert data.format == "folders"
    assert data.ignored_labels == {"bored": 40}
    assert {r.label for r in data.splits["train"]} == {3}


def test_label_folders_named_by_an_alias_are_reported(tmp_path, sample_dir):
    """``joy/`` beside ``happy/`` is merged into happy: said, not silent."""
    shutil.copytree(sample_dir / "train" / "happy", tmp_path / "happy")
    shutil.copytree(sample_dir / "train" / "happy", tmp_path / "Joy")
    shutil.copytree(sample_dir / "train" / "sad", tmp_path / "sadness")
    data = datasets.open_dataset(tmp_path)
    assert data.aliased_labels == {"Joy": "happy", "sadness": "sad"}
    assert {r.label for r in data.splits["train"]} == {3, 4}


def test_empty_dataset_is_an_error(tmp_path):
    (tmp_path / "happy").mkdir()
    with pytest.raises(DatasetError, match="holds no images"):
        datasets.open_dataset(tmp_path)
    with pytest.raises(DatasetError, match="no such file"):
        datasets.open_dataset(tmp_path / "missing")


def test_corrupt_and_non_image_files_name_the_file(tmp_path):
    text = tmp_path / "notes.jpg"
    text.write_text("this is not an image")
    with pytest.raises(DatasetError, match="not a readable image") as err:
        image_io.read_image_file(text)
    assert str(text) in str(err.value)
    good = next(SAMPLE.glob("train/happy/*.jpg")).read_bytes()
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(good[: len(good) // 3])
    with pytest.raises(DatasetError, match="truncated.jpg: not a readable image"):
        image_io.read_image_file(truncated)


def test_large_images_in_class_folders_are_cropped_to_the_face(tmp_path):
    from conftest import TEST_DATA

    (tmp_path / "neutral").mkdir()
    shutil.copy(TEST_DATA / "photos" / "2008_002470.jpg", tmp_path / "neutral" / "photo.jpg")
    data = datasets.open_dataset(tmp_path)
    crop = datasets.load_image(data.splits["train"][0], crop_faces=True)
    assert crop.shape == (48, 48) and crop.dtype == np.uint8 and crop.std() > 10


def test_label_sets():
    fer7 = labels.get_label_set("fer7")
    np.testing.assert_array_equal(fer7.encode([0, 6, 7]), [0, 6, -1])
    four = labels.get_label_set("happy,sad,neutral,surprise")
    assert four.classes == ("happy", "sad", "neutral", "surprise")
    np.testing.assert_array_equal(four.encode([3, 4, 6, 5, 0]), [0, 1, 2, 3, -1])
    valence = labels.get_label_set("valence3")
    np.testing.assert_array_equal(valence.encode([3, 0, 1, 2, 4, 7, 5, 6]), [0, 1, 1, 1, 1, 1, 2, -1])
    with pytest.raises(ValueError, match="unknown emotion 'bored'"):
        labels.get_label_set("happy,bored")


def test_exif_orientation_is_applied(tmp_path):
    from PIL import Image

    pixels = np.arange(12, dtype=np.uint8).reshape(3, 4) * 20
    image = Image.fromarray(pixels)
    exif = image.getexif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    image.save(tmp_path / "phone.png", exif=exif)
    upright = image_io.read_image_file(tmp_path / "phone.png")
    np.testing.assert_array_equal(upright, np.rot90(pixels, k=-1))


def write_bomb_png(path, side: int = 14000):
    """A real, valid 1-bit ``side`` x ``side`` PNG (14000 x 14000 = 196 megapixels, over twice
    Pillow's MAX_IMAGE_PIXELS) written row by row: about 24 KB on disk, no memory to make."""
    import struct
    import zlib

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    compressor, row = zlib.compressobj(9), b"\x00" * (1 + (side + 7) // 8)   # filter byte + 1 bit/pixel
    data = b"".join(compressor.compress(row) for _ in range(side)) + compressor.flush()
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0))
                     + chunk(b"IDAT", data) + chunk(b"IEND", b""))
    return path


def test_a_picture_over_pillows_limit_is_a_bad_file_naming_the_limit(tmp_path, capsys):
    from PIL import Image

    from pipelines import extract_features

    huge = write_bomb_png(tmp_path / "huge.png")
    limit = 2 * Image.MAX_IMAGE_PIXELS
    with pytest.raises(DatasetError) as err:
        image_io.read_image_file(huge)
    message = str(err.value)
    assert message.startswith(f"{huge}: not read, too large (") and f"{limit} pixels" in message
    assert "\n" not in message

    # Extraction reports it with the other bad files, in one line, and writes nothing.
    data = tmp_path / "data"
    for emotion in ("happy", "sad"):
        shutil.copytree(SAMPLE / "train" / emotion, data / emotion)
    shutil.copy(huge, data / "happy" / "huge.png")
    (data / "sad" / "broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    out = tmp_path / "store"
    assert extract_features.main(["--data", str(data), "--out", str(out), "--detector", "none", "--quiet",
                                  "--n-jobs", "1"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "2 images cannot be read" in err
    assert f"{data / 'happy' / 'huge.png'}: not read, too large (Image size (196000000 pixels) exceeds limit " \
           f"of {limit} pixels" in err
    assert f"{data / 'sad' / 'broken.jpg'}: not a readable image" in err
    assert not out.exists()
