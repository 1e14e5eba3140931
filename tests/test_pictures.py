"""What people look at and the small public API: annotated photos (labels inside the image,
not over each other), the ensemble's Grad-CAM figure, FaceResult's detection score and
top_emotion, explicit colour order."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ensemble_fer.inference import annotate
from ensemble_fer.features.image_io import read_image_file

PHOTOS = Path(__file__).resolve().parent / "data" / "photos"
CROWD = PHOTOS / "2008_007676.jpg"      # seven faces close together


def _overlap(a, b):
    return max(0, min(a[2], b[2]) - max(a[0], b[0])) * max(0, min(a[3], b[3]) - max(a[1], b[1]))


def test_labels_stay_inside_and_apart_in_a_crowd():
    # a row of touching small faces, some at the image's edges
    boxes = [(x, 5, x + 30, 35) for x in range(0, 300, 32)] + [(280, 260, 319, 299)]
    sizes = [(80, 16)] * len(boxes)
    origins = annotate.place_labels(boxes, sizes, (300, 320))
    rects = [(x, y, x + w, y + h) for (x, y), (w, h) in zip(origins, sizes)]
    for x0, y0, x1, y1 in rects:
        assert 0 <= x0 and x1 <= 320 and 0 <= y0 and y1 <= 300
    overlapping = sum(_overlap(a, b) > 0 for i, a in enumerate(rects) for b in rects[i + 1:])
    assert overlapping <= 2          # ten 80-px labels over 320 px cannot all fit beside each other
    # a few faces with room: no overlap at all
    sparse = annotate.place_labels(boxes[::3], sizes[::3], (300, 320))
    rects = [(x, y, x + 80, y + 16) for x, y in sparse]
    assert all(_overlap(a, b) == 0 for i, a in enumerate(rects) for b in rects[i + 1:])


def test_api_detection_score_top_emotion_and_colour_order(tiny_variant):
    from ensemble_fer import EmotionRecognizer

    recognizer = EmotionRecognizer.load(tiny_variant)
    rgb = read_image_file(CROWD)
    faces = recognizer.predict(rgb)
    assert len(faces) == 7
    for face in faces:
        assert isinstance(face.detection_score, float) and face.detection_score > 0
        emotion, score = face.top_emotion
        assert emotion == face.emotion and score == max(face.scores.values())
    # OpenCV's BGR array, said so: the same faces and scores
    bgr = np.ascontiguousarray(rgb[..., ::-1])
    same = recognizer.predict(bgr, color="bgr")
    assert [f.box for f in same] == [f.box for f in faces]
    np.testing.assert_allclose([list(f.scores.values()) for f in same], [list(f.scores.values()) for f in faces])
    # ... and not said: another gray image (red and blue weigh differently), other scores
    unsaid = recognizer.predict(bgr)
    assert any(not np.allclose(list(a.scores.values()), list(b.scores.values()), atol=1e-6)
               for a, b in zip(unsaid, faces)) or [f.box for f in unsaid] != [f.box for f in faces]
    with pytest.raises(ValueError, match="color must be one of"):
        recognizer.predict(rgb, color="hsv")
    crop = recognizer.predict(read_image_file(sorted((PHOTOS.parent.parent.parent / "data" / "sample").glob(
        "train/happy/*.jpg"))[0]))
    assert crop[0].detection_score is None          # a 48x48 crop: nothing was detected


def test_annotated_crowd_photo_has_every_label_inside(tiny_variant, tmp_path):
    from ensemble_fer import EmotionRecognizer

    recognizer = EmotionRecognizer.load(tiny_variant)
    image = read_image_file(CROWD)
    faces = recognizer.predict(image)
    drawn = annotate.draw_faces(image, faces)
    assert drawn.shape == image.shape[:2] + (3,)
    label_colour = np.any([np.all(drawn == annotate.emotion_colour(face.emotion), axis=2) for face in faces], axis=0)
    assert label_colour.sum() > 7 * 200            # seven filled label backgrounds, in their emotion's colour
    annotate.write_image(tmp_path / "crowd.png", drawn)
    assert read_image_file(tmp_path / "crowd.png").shape == drawn.shape


def test_box_colours_follow_the_emotion_with_a_legend_in_a_free_corner():
    from types import SimpleNamespace

    image = np.full((400, 400, 3), 90, np.uint8)
    faces = [SimpleNamespace(box=(5, 30, 105, 130), emotion="happy", scores={"happy": 0.9}),
             SimpleNamespace(box=(200, 200, 300, 300), emotion="sad", scores={"sad": 0.6})]
    drawn = annotate.draw_faces(image, faces)
    happy, sad = (np.all(drawn == annotate.EMOTION_COLOURS[e], axis=2) for e in ("happy", "sad"))
    assert happy[130, 5:105].all() and sad[300, 200:300].all()          # each box in its emotion's colour
    assert not happy[300, 200:300].any() and not sad[130, 5:105].any()
    corner = (slice(0, 60), slice(300, 400))        # top-right: the first corner free of faces and labels
    assert happy[corner].sum() > 100 and sad[corner].sum() > 100       # the legend, one row per emotion


def test_ensemble_grad_cam_weights_members_by_their_share_of_the_score(tiny_variant, sample_store, tmp_path):
    from ensemble_fer import EmotionRecognizer
    from ensemble_fer.inference import gradcam
    from ensemble_fer.training import train as training
    from ensemble_fer.inference.loading import load_predictor
    from ensemble_fer.models.variant_dir import load_variant
    from pipelines import fit_ensemble

    import shutil

    models = tmp_path / "models"
    shutil.copytree(tiny_variant, models / "cnn5+bovw", ignore=shutil.ignore_patterns(".run"))
    training.train_variant(sample_store, "cnn5", False, out=models / "cnn5", epochs=1, augment=False, progress=False)
    assert fit_ensemble.main(["--models", str(models), "--out", str(models / "ensemble.json")]) == 0
    recognizer = EmotionRecognizer.load(models / "ensemble.json")
    photo = PHOTOS / "2008_002470.jpg"
    face = recognizer.predict(photo)[0]
    got = recognizer.grad_cam(photo, face)
    assert got.shape == (48, 48) and got.max() == pytest.approx(1.0) and got.min() >= 0

    predictor = load_predictor(models / "ensemble.json")
    features = predictor.analyse(recognizer.face_crop(photo, face)[None])
    c = recognizer.classes.index(face.emotion)
    member_p = predictor.member_probas(features["images"], features["landmarks"], features["bovw"])[:, 0, c]
    expected = np.zeros((48, 48))
    for i, folder in enumerate(predictor.member_folders):
        model, config = load_variant(folder)
        vector = features["bovw"][0] if config["bovw"] else None
        expected += predictor.weights[i] * member_p[i] * gradcam.grad_cam(model, features["images"][0], vector, c)
    np.testing.assert_allclose(got, expected / expected.max(), atol=1e-5)

    figure = annotate.gradcam_figure(recognizer.face_crop(photo, face), got, "happy 0.50 | Grad-CAM")
    assert figure.shape[1] == 2 * 192 and figure.shape[0] > 192 and figure.dtype == np.uint8
    # the caption bar is white with dark text
    bar = figure[192:]
    assert (bar == 255).mean() > 0.7 and (bar < 100).any()
