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
