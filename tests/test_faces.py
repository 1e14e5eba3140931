"""dlib detection and landmarks against the ground truth shipped with dlib's example photos."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import numpy as np
import pytest

from conftest import TEST_DATA
from ensemble_fer.features import faces
from ensemble_fer.features.datasets import read_image_file

PHOTOS = TEST_DATA / "photos"


def ground_truth():
    """{file: [(box (left, top, right, bottom), landmarks (68, 2))]} from the dlib XML."""
    out = {}
    for image in ET.parse(PHOTOS / "testing_with_face_landmarks.xml").getroot().iter("image"):
        entries = []
        for box in image.iter("box"):
            left, top = int(box.get("left")), int(box.get("top"))
            width, height = int(box.get("width")), int(box.get("height"))
            parts = sorted(box.iter("part"), key=lambda p: int(p.get("name")))
            points = np.array([(float(p.get("x")), float(p.get("y"))) for p in parts])
            entries.append(((left, top, left + width - 1, top + height - 1), points))
        out[image.get("file")] = entries
    return out


def iou(a, b):
    ix = max(0, min(a[2], b[2]) - max(a[0], b[0]) + 1)
    iy = max(0, min(a[3], b[3]) - max(a[1], b[1]) + 1)
    inter = ix * iy
    area = lambda r: (r[2] - r[0] + 1) * (r[3] - r[1] + 1)
    return inter / (area(a) + area(b) - inter)


GROUND_TRUTH = ground_truth()


@pytest.mark.parametrize("file", sorted(GROUND_TRUTH))
def test_landmarks_match_ground_truth(file):
    image = read_image_file(PHOTOS / file)
    for box, expected in GROUND_TRUTH[file]:
        predicted = faces.face_landmarks(image, box)
        assert predicted.shape == (68, 2) and predicted.dtype == np.float32
        error = np.linalg.norm(predicted - expected, axis=1)
        # the XML was made with this very model: agreement to about a pixel
        assert error.mean() < 1.5, (file, error.mean())


@pytest.mark.parametrize("file", sorted(GROUND_TRUTH))
def test_hog_detector_finds_every_listed_face(file):
    image = read_image_file(PHOTOS / file)
    boxes = faces.detect_faces(image, detector="hog", upsample=1)
    assert all(isinstance(b, tuple) and len(b) == 4 for b in boxes)
    for truth, _ in GROUND_TRUTH[file]:
        assert max(iou(truth, b) for b in boxes) >= 0.5, (file, truth, boxes)


def test_no_face_in_the_dog_photo():
    assert faces.detect_faces(read_image_file(PHOTOS / "dogs.jpg"), detector="hog", upsample=1) == []
    assert faces.detect_faces(read_image_file(PHOTOS / "dogs.jpg"), detector="hog", upsample="auto") == []


# ------------------------------------------------------------------ upsample="auto"
@pytest.mark.parametrize("file", sorted(GROUND_TRUTH))
def test_auto_upsample_searches_the_doubled_photo_when_faces_are_small(file):
    """Every listed photo has faces under 146 px: auto's first pass is not enough, and its
    result is exactly the full search's (same boxes, same scores)."""
    image = read_image_file(PHOTOS / file)
    assert all(right - left + 1 < 2 * faces.SMALLEST_FACE_UNDOUBLED["hog"]
               for (left, _, right, _), _ in GROUND_TRUTH[file])
    auto = faces.detect_scored_faces(image, upsample="auto")
    assert auto == faces.detect_scored_faces(image, upsample=1)
    assert len(auto) >= len(GROUND_TRUTH[file])


def large_face_photo():
    """dlib's test photo 2008_002506's right-hand face (109 px), 1.6 times larger, padded grey
    to 640x480: one face of about 175 px, well above auto's 146 px."""
    import cv2

    image = read_image_file(PHOTOS / "2008_002506.jpg")[40:340, 300:500]
    scale = 480 / image.shape[0]
    image = cv2.resize(image, (round(image.shape[1] * scale), 480), interpolation=cv2.INTER_AREA)
    pad = 640 - image.shape[1]
    return cv2.copyMakeBorder(image, 0, 0, pad // 2, pad - pad // 2, cv2.BORDER_CONSTANT, value=(128, 128, 128))


def test_auto_upsample_stops_after_the_first_pass_when_every_face_is_large():
    image = large_face_photo()
    first_pass = faces.detect_scored_faces(image, upsample=0)
    assert len(first_pass) == 1
    (left, _, right, _), _ = first_pass[0]
    assert right - left + 1 >= 2 * faces.SMALLEST_FACE_UNDOUBLED["hog"]
    assert faces.detect_scored_faces(image, upsample="auto") == first_pass
    # the doubled search would have found the same face with another box: auto did not run it
    assert faces.detect_scored_faces(image, upsample=1) != first_pass


def test_auto_upsample_misses_a_small_face_beside_large_ones_as_documented():
    """auto's one blind spot, kept visible: a ~54 px face beside a 180 px one. The first pass
    sees only the large face, so auto stops there; upsample=1 finds both."""
    import cv2

    image = large_face_photo()
    left, top, right, bottom = faces.detect_faces(image, upsample=0)[0]
    margin = (right - left) // 4
    face = image[top - margin:bottom + margin, left - margin:right + margin]
    image[390:470, 20:100] = cv2.resize(face, (80, 80), interpolation=cv2.INTER_AREA)     # a ~54 px face
    first_pass = faces.detect_faces(image, upsample=0)
    assert faces.detect_faces(image, upsample="auto") == first_pass and len(first_pass) == 1
    full = faces.detect_faces(image, upsample=1)
    assert len(full) == 2 and full[1][2] - full[1][0] + 1 < faces.SMALLEST_FACE_UNDOUBLED["hog"]


@pytest.mark.parametrize("value", [-1, 1.5, True, "twice", None, 5, 40])
def test_bad_upsample_values_are_input_errors(value):
    from ensemble_fer.errors import InputError

    with pytest.raises(InputError, match=r"upsample must be 'auto' or an int in \[0, 4\]; got "):
        faces.detect_faces(np.zeros((10, 10), np.uint8), upsample=value)


def test_crop_face_has_fer_framing():
    image = read_image_file(PHOTOS / "2008_002470.jpg")
    box, points = GROUND_TRUTH["2008_002470.jpg"][0]
    crop = faces.crop_face(image, box)
    assert crop.shape == (48, 48) and crop.dtype == np.uint8
    # the box's centre lands at the crop's centre: the nose tip (landmark 30) is near the middle
    scale = 48 / (faces.FER_FRAMING * max(box[2] - box[0] + 1, box[3] - box[1] + 1))
    cx, cy = (box[0] + box[2] + 1) / 2, (box[1] + box[3] + 1) / 2
    nose = (points[30] - (cx, cy)) * scale + 24
    assert np.all(np.abs(nose - 24) < 8)


def test_bad_arguments():
    with pytest.raises(ValueError, match="detector must be one of"):
        faces.detect_faces(np.zeros((10, 10), np.uint8), detector="haar")
    with pytest.raises(ValueError, match="uint8"):
        faces.detect_faces(np.zeros((10, 10), np.float32))


# ------------------------------------------------------------------ the one crop path
def test_a_48x48_picture_is_its_own_face_and_crop():
    crop = np.random.default_rng(0).integers(0, 256, (48, 48), dtype=np.uint8)
    assert faces.picture_faces(crop) == [(faces.WHOLE_FRAME, None)]         # no detection runs
    np.testing.assert_array_equal(faces.crop_face(crop, faces.WHOLE_FRAME), crop)
    np.testing.assert_array_equal(faces.crop_face(np.repeat(crop[..., None], 3, axis=2), faces.WHOLE_FRAME), crop)
    # another box of the same crop is framed like any face
    assert not np.array_equal(faces.crop_face(crop, (8, 8, 39, 39)), crop)


def test_every_caller_crops_a_photo_face_the_same_way(tmp_path):
    from ensemble_fer.features import datasets
    from ensemble_fer.inference.recognizer import EmotionRecognizer

    image = read_image_file(PHOTOS / "2008_002470.jpg")
    found = faces.picture_faces(datasets.to_gray(image))
    assert [box for box, _ in found] == faces.detect_faces(image, detector="hog", upsample=1)
    expected = faces.crop_face(image, found[0][0])
    recognizer = EmotionRecognizer(predictor=None)
    np.testing.assert_array_equal(recognizer.face_crop(image, found[0][0]), expected)
    np.testing.assert_array_equal(recognizer.face_crop(image[..., ::-1].copy(), found[0][0], color="bgr"), expected)
    record = datasets.ImageRecord(id="x.jpg", label=3, split="train", path=PHOTOS / "2008_002470.jpg")
    np.testing.assert_array_equal(datasets.load_image(record, crop_faces=True), expected)


def test_bad_images_are_input_errors():
    from ensemble_fer.errors import InputError

    with pytest.raises(InputError, match="image must be uint8; got float32"):
        faces.detect_faces(np.zeros((10, 10), np.float32))
    with pytest.raises(InputError, match=r"image must be \(H, W\) or \(H, W, 3\); got shape \(2, 10, 10, 3\)"):
        faces.detect_faces(np.zeros((2, 10, 10, 3), np.uint8))
