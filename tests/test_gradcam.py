"""Grad-CAM of the image branch: against the closed form, on a trained variant, on ensembles."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import TEST_DATA, sample_crops
from ensemble_fer.inference import gradcam
PHOTO = TEST_DATA / "photos" / "2008_002506.jpg"


def _cam_by_hand(model, crop, class_index):
    """Grad-CAM of a network whose head is GAP -> Dense (no hidden layer): the gradient of the
    logit w.r.t. the map is W[:, c] / (h * w) everywhere, so Grad-CAM is CAM (Zhou et al.):
    ReLU(sum_k W[k, c] A_k), computed here without any gradient."""
    import cv2

    from ensemble_fer.models import blocks

    x = crop[None, :, :, None].astype(np.float32)
    for layer in blocks.get_block_spec("cnn5").preprocessing():
        x = layer(x)
    feature_map = np.asarray(model.get_layer("cnn5")(x, training=False))[0]      # (12, 12, 64)
    kernel = np.asarray(model.get_layer("logits").kernel)                        # (64, n_classes)
    cam = np.maximum(feature_map @ kernel[:, class_index], 0)
    cam = np.maximum(cv2.resize(cam.astype(np.float32), (48, 48), interpolation=cv2.INTER_LINEAR), 0)
    return cam / cam.max() if cam.max() > 0 else None


def test_grad_cam_equals_cam_when_the_head_is_linear():
    import keras

    from ensemble_fer.models import networks

    keras.utils.set_random_seed(0)
    model = networks.build_network("cnn5", False, 7, dense_units=0, weights=None)
    crops, _ = sample_crops(3)
    checked = 0
    for crop in crops:
        for class_index in range(7):
            expected = _cam_by_hand(model, crop, class_index)
            got = gradcam.grad_cam(model, crop, None, class_index)
            if expected is None:       # nothing speaks for this class: all zeros
                assert not got.any()
                continue
            assert got.shape == (48, 48) and got.dtype == np.float32
            np.testing.assert_allclose(got, expected, atol=1e-4)
            checked += 1
    assert checked >= 10


def test_map_of_a_trained_variant(tiny_variant):
    from ensemble_fer.features import bovw
    from ensemble_fer.models.forward import predict_proba
    from ensemble_fer.models.variant_dir import load_variant
    model, config = load_variant(tiny_variant)
    crops, _ = sample_crops(4)
    extractor = bovw.ExtractorConfig(**config["feature_store"]["extractor"])
    features = bovw.analyse_crops(crops, extractor)
    proba = predict_proba(model, config, images=features["images"], bovw=features["bovw"])
    for crop, vector, p in zip(features["images"], features["bovw"], proba):
        cam = gradcam.grad_cam(model, crop, vector, int(np.argmax(p)))
        assert cam.shape == (48, 48) and cam.dtype == np.float32
        assert cam.min() >= 0 and cam.max() == pytest.approx(1.0)
        assert cam.std() > 0.01          # not constant
    # the map depends on the image: another face gives another map
    a = gradcam.grad_cam(model, features["images"][0], features["bovw"][0], 3)
    b = gradcam.grad_cam(model, features["images"][1], features["bovw"][1], 3)
    assert np.abs(a - b).max() > 0.05


def test_bad_inputs_are_refused(tiny_variant):
    from ensemble_fer.models import networks
    from ensemble_fer.models.variant_dir import load_variant
    model, _ = load_variant(tiny_variant)
    crop = sample_crops(1)[0][0]
    with pytest.raises(ValueError, match="has a bovw input"):
        gradcam.grad_cam(model, crop, None, 0)
    with pytest.raises(ValueError, match="class_index must be in 0..6"):
        gradcam.grad_cam(model, crop, np.zeros(2728, np.float32), 7)
    with pytest.raises(ValueError, match="48x48 uint8"):
        gradcam.grad_cam(model, np.zeros((64, 64), np.uint8), np.zeros(2728, np.float32), 0)
    bovw_only = networks.build_network(None, True, 7)
    assert not gradcam.has_image_branch(bovw_only)
    with pytest.raises(ValueError, match="has no image branch"):
        gradcam.grad_cam(bovw_only, crop, np.zeros(2728, np.float32), 0)


def test_bad_arguments_are_input_errors():
    """Untrained networks suffice: every check runs before the gradient."""
    from ensemble_fer.errors import InputError
    from ensemble_fer.models import networks

    image_only = networks.build_network("cnn5", False, 7, dense_units=0, weights=None)
    crop = sample_crops(1)[0][0]
    with pytest.raises(InputError, match="has no bovw input; pass bovw_vector=None"):
        gradcam.grad_cam(image_only, crop, np.zeros(2728, np.float32), 0)
    with pytest.raises(InputError, match="class_index must be in 0..6; got -1"):
        gradcam.grad_cam(image_only, crop, None, -1)
    with pytest.raises(InputError, match=r"image_crop must be a 48x48 uint8 grayscale crop; got float32 \(48, 48\)"):
        gradcam.grad_cam(image_only, crop.astype(np.float32), None, 0)
    two_inputs = networks.build_network("cnn5", True, 7, dense_units=0, weights=None)
    with pytest.raises(InputError, match=r"bovw_vector must hold 2728 values; got shape \(10,\)"):
        gradcam.grad_cam(two_inputs, crop, np.zeros(10, np.float32), 0)
    with pytest.raises(InputError, match="has no image branch"):
        gradcam.grad_cam(networks.build_network(None, True, 7), crop, np.zeros(2728, np.float32), 0)


# ----------------------------------------------------------------------------- recognizer

@pytest.fixture(scope="module")
def bovw_variant(variant_pair):
    """The BOVW-only variant of conftest's ``variant_pair`` (read only)."""
    return variant_pair / "bovw"


def _write_ensemble(path, members):
    """An ensemble.json in the format inference.load_predictor reads: [(folder, weight)]; the
    members are copied beside it (members must be sub-folders of the ensemble's folder)."""
    import shutil

    from ensemble_fer import artifacts
    from ensemble_fer.ensemble.weighted import WeightedEnsemble
    from ensemble_fer.ensemble.ensemble_file import ENSEMBLE_VERSION, member_hashes

    config = artifacts.read_json(members[0][0] / "config.json")
    fitted = WeightedEnsemble()
    fitted.weights_ = np.array([w for _, w in members])
    fitted.classes_ = np.arange(len(config["labels"]["classes"]))
    fitted.n_members_, fitted.score_, fitted.n_iter_ = len(members), float("nan"), 0
    entries = []
    for i, (folder, _) in enumerate(members):
        name = f"m{i}_{folder.name}"
        shutil.copytree(folder, path.parent / name, ignore=shutil.ignore_patterns(".run"))
        entries.append({"name": name, "path": name, **member_hashes(path.parent / name)})
    artifacts.write_json(path, {
        "format": "ensemble_fer.ensemble", "version": ENSEMBLE_VERSION, "members": entries,
        "ensemble": fitted.to_json(), "labels": config["labels"],
        "extractor": config["feature_store"]["extractor"]})
    return path


def test_ensemble_map_leaves_out_members_without_an_image_branch(tiny_variant, bovw_variant, tmp_path):
    from ensemble_fer import EmotionRecognizer

    single = EmotionRecognizer.load(tiny_variant)
    faces = single.predict(PHOTO)
    assert faces
    expected = single.grad_cam(PHOTO, faces[0])
    assert expected.shape == (48, 48) and expected.std() > 0.01

    # the BOVW-only member weighs more but has no image branch: the cnn5 member is explained
    ensemble = EmotionRecognizer.load(_write_ensemble(tmp_path / "ensemble.json",
                                                      [(bovw_variant, 0.7), (tiny_variant, 0.3)]))
    assert [m.get_layer("cnn5") is not None for m in ensemble.gradcam_models().values()] == [True]
    np.testing.assert_allclose(ensemble.grad_cam(PHOTO, faces[0]), expected, atol=1e-5)
    with pytest.raises(ValueError, match="not one of the model's classes"):
        ensemble.grad_cam(PHOTO, faces[0], emotion="bored")


def test_bovw_only_model_has_no_grad_cam(bovw_variant):
    from ensemble_fer import EmotionRecognizer

    recognizer = EmotionRecognizer.load(bovw_variant)
    faces = recognizer.predict(PHOTO)
    assert faces                          # it predicts ...
    with pytest.raises(ValueError, match="no member of this model has one"):
        recognizer.grad_cam(PHOTO, faces[0])   # ... but has nothing to explain
