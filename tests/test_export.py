"""TFLite export of a real (tiny) ensemble: every member, image-only and two-input, in each
format; the exported ensemble predicts through the same recognizer as the Keras one."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from ensemble_fer.inference import export
from ensemble_fer.errors import InputError

PHOTO = Path(__file__).resolve().parent / "data" / "photos" / "2008_002470.jpg"


@pytest.fixture(scope="module")
def mixed_release(tiny_release, sample_store, tmp_path_factory) -> Path:
    """tiny_release plus an image-only member (cnn5 without BOVW), refitted: members with
    image+bovw, bovw only and image only."""
    import shutil

    from ensemble_fer.training import train as training
    from pipelines import fit_ensemble

    release = tmp_path_factory.mktemp("mixed") / "release"
    shutil.copytree(tiny_release, release)
    (release / "ensemble.json").unlink()
    for name in ("ensemble_report.md", "ensemble_report.json", "ensemble_confusion_matrix.png"):
        (release / name).unlink(missing_ok=True)
    training.train_variant(sample_store, "cnn5", False, out=release / "cnn5", epochs=1, augment=False, progress=False)
    assert fit_ensemble.main(["--models", str(release), "--out", str(release / "ensemble.json")]) == 0
    return release


@pytest.fixture(scope="module")
def exported(mixed_release, tmp_path_factory):
    from pipelines import console

    out = tmp_path_factory.mktemp("export") / "tflite"
    assert console.main(["export", "--model", str(mixed_release / "ensemble.json"), "--out", str(out),
                         "--quiet"]) == 0
    return out


def test_every_member_in_every_format(mixed_release, exported):
    report = json.loads((exported / "export.json").read_text())
    members = report["members"]
    assert sorted(members) == ["bovw", "cnn5", "cnn5+bovw"]
    sizes = {}
    for precision in export.FORMATS:
        entry = report["formats"][precision]
        sizes[precision] = entry["total_bytes"]
        for name in members:
            path = exported / precision / name / "model.tflite"
            assert path.stat().st_size == entry["bytes"][name]
            # config.json unchanged, so the model's label set and extractor travel with it
            assert (path.parent / "config.json").read_bytes() == (mixed_release / name / "config.json").read_bytes()
        assert entry["same_top_class"] >= 0.95
    assert report["formats"]["float32"]["max_abs_diff_vs_keras"] < 1e-4
    assert report["formats"]["float16"]["max_abs_diff_vs_keras"] < 0.02
    assert report["formats"]["int8"]["max_abs_diff_vs_keras"] < 0.1
    # quantised weights make smaller files
    assert sizes["int8"] < sizes["float16"] < sizes["float32"]
    assert sizes["int8"] < 0.4 * sizes["float32"]


def test_exported_ensemble_predicts_like_the_keras_one(mixed_release, exported):
    from ensemble_fer import EmotionRecognizer

    keras = EmotionRecognizer.load(mixed_release / "ensemble.json")
    lite = EmotionRecognizer.load(exported / "float32")
    expected, got = keras.predict(PHOTO), lite.predict(PHOTO)
    assert len(expected) == len(got) == 6
    for a, b in zip(expected, got):
        assert a.box == b.box and a.emotion == b.emotion
        np.testing.assert_allclose(list(a.scores.values()), list(b.scores.values()), atol=1e-4)
    # test-time augmentation runs through the same predictor code
    np.testing.assert_allclose([list(f.scores.values()) for f in keras.predict(PHOTO, tta=2)],
                               [list(f.scores.values()) for f in lite.predict(PHOTO, tta=2)], atol=1e-4)
    int8 = EmotionRecognizer.load(exported / "int8")
    agree = np.mean([a.emotion == b.emotion for a, b in zip(expected, int8.predict(PHOTO))])
    assert agree >= 0.5
    with pytest.raises(ValueError, match="exported model"):
        lite.grad_cam(PHOTO, got[0])


def test_export_refuses_overwrite_and_bad_folders(mixed_release, exported, tmp_path, capsys):
    from ensemble_fer import EmotionRecognizer
    from pipelines import console

    assert console.main(["export", "--model", str(mixed_release / "ensemble.json"), "--out", str(exported),
                         "--format", "int8", "--quiet"]) == 2
    assert "exists; pass --force" in capsys.readouterr().err
    with pytest.raises(InputError, match="pass one of them"):
        EmotionRecognizer.load(exported)
    # an export is not exported again: one line naming the model it came from
    assert console.main(["export", "--model", str(exported / "int8"), "--out", str(tmp_path / "again"),
                         "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "already an exported model" in err and str(mixed_release) in err
    assert not (tmp_path / "again").exists()
    # a member's network swapped after the export is noticed
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(exported / "float16", copy)
    shutil.copy(exported / "int8" / "cnn5" / "model.tflite", copy / "cnn5" / "model.tflite")
    with pytest.raises(InputError, match="changed since the export"):
        EmotionRecognizer.load(copy)


def test_onnx_export_predicts_like_keras(mixed_release, tmp_path):
    pytest.importorskip("tf2onnx", reason="pip install 'ensemble_fer[onnx]'")
    pytest.importorskip("onnxruntime", reason="pip install 'ensemble_fer[onnx]'")
    from ensemble_fer import EmotionRecognizer

    report = export.export_model(mixed_release / "ensemble.json", tmp_path / "onnx", ["onnx"], say=lambda m: None)
    assert report["formats"]["onnx"]["max_abs_diff_vs_keras"] < 1e-4
    assert all((tmp_path / "onnx" / "onnx" / name / "model.onnx").is_file() for name in report["members"])
    keras, onnx = EmotionRecognizer.load(mixed_release / "ensemble.json"), EmotionRecognizer.load(tmp_path / "onnx" / "onnx")
    for a, b in zip(keras.predict(PHOTO), onnx.predict(PHOTO)):
        assert a.box == b.box and a.emotion == b.emotion
        np.testing.assert_allclose(list(a.scores.values()), list(b.scores.values()), atol=1e-4)


def test_full_integer_export_quantises_activations_and_predicts_like_keras(mixed_release, sample_store, tmp_path):
    """int8-full: every member (image, BOVW, both) calibrated on the bundled sample's crops; its
    convolutions and dense layers run on int8 tensors, and it still predicts like the Keras model,
    member by member on the sample's val faces.

    A member with the BOVW input used to keep only ~70% of its top classes: its raw 2728 values
    (landmark coordinates and HOG) entered through one int8 scale. Its normalisation now stays
    float, so it is held to the image-only members' bound."""
    import tensorflow as tf

    from ensemble_fer import EmotionRecognizer
    from ensemble_fer.features.feature_store import FeatureStore
    from ensemble_fer.inference.loading import load_predictor

    report = export.export_model(mixed_release / "ensemble.json", tmp_path / "x", [export.INT8_FULL], say=lambda m: None)
    entry = report["formats"][export.INT8_FULL]
    # the export's own check (on blobs, not the faces it was calibrated on) is recorded
    assert 0 <= entry["same_top_class"] <= 1 and entry["max_abs_diff_vs_keras"] < 0.4
    predictor = load_predictor(mixed_release / "ensemble.json")
    val = FeatureStore(sample_store).load("val")
    faces = {"images": val["images"], "landmarks": val["landmarks"], "bovw_rows": val["bovw"]}
    keras_proba = predictor.member_probas(**faces)
    int8_proba = export.load_export(tmp_path / "x" / export.INT8_FULL).member_probas(**faces)
    for i in range(len(predictor.members)):
        diff = np.abs(int8_proba[i] - keras_proba[i])
        same = np.mean(int8_proba[i].argmax(-1) == keras_proba[i].argmax(-1))
        assert same >= 0.9 and diff.max() < 0.05, (predictor.members[i], same, diff.max())
    for name in report["members"]:
        interpreter = tf.lite.Interpreter(model_path=str(tmp_path / "x" / export.INT8_FULL / name / "model.tflite"))
        ops = interpreter._get_ops_details()
        tensors = interpreter.get_tensor_details()
        compute = [op for op in ops if op["op_name"] in ("CONV_2D", "FULLY_CONNECTED")]
        assert compute, f"{name}: {sorted({op['op_name'] for op in ops})}"
        # dynamic range would leave the activations float32: here every input is int8
        assert all(tensors[op["inputs"][0]]["dtype"] == np.int8 for op in compute), name
    keras, full = EmotionRecognizer.load(mixed_release / "ensemble.json"), EmotionRecognizer.load(tmp_path / "x" / export.INT8_FULL)
    agree = np.mean([a.emotion == b.emotion for a, b in zip(keras.predict(PHOTO), full.predict(PHOTO))])
    assert agree >= 0.5


def test_calibration_goes_with_the_full_integer_format_only(tiny_variant):
    from ensemble_fer.models.variant_dir import VariantDir

    model = VariantDir(tiny_variant).load_model()
    with pytest.raises(ValueError, match="calibration"):
        export.convert(model, export.INT8_FULL)
    with pytest.raises(ValueError, match="calibration"):
        export.convert(model, "int8", {"image": np.zeros((8, 48, 48, 1), np.uint8)})


def test_an_image_only_model_reads_crops_without_landmarks_or_hog(mixed_release, monkeypatch):
    """An image-only model (here the cnn5 member) predicts crops from the pixels alone, with the
    probabilities the full feature path gives."""
    from conftest import sample_crops
    from ensemble_fer.inference.loading import load_predictor

    crops, _ = sample_crops(24)
    predictor = load_predictor(mixed_release / "cnn5")
    features = predictor.analyse(crops)
    full = predictor.predict_features(features["images"], features["landmarks"], features["bovw"])
    monkeypatch.setattr(predictor, "analyse", lambda images: pytest.fail("analysed the crops"))
    np.testing.assert_array_equal(predictor.predict_proba(crops), full)
    # its test-time views are the images of the full path's views, without their landmarks and HOG
    from ensemble_fer.features.augment import tta_views

    views = tta_views(features["images"], features["landmarks"], 2)
    np.testing.assert_allclose(predictor.predict_proba(crops, tta=2),
                               np.mean([predictor.predict_features(view[0], None, None) for view in views], axis=0),
                               atol=1e-6)



def test_export_says_each_step_with_an_estimate(tiny_variant, tmp_path, capsys):
    from pipelines import export as export_cli

    assert export_cli.main(["--model", str(tiny_variant), "--out", str(tmp_path / "x"), "--format", "float32",
                            "int8"]) == 0
    err = capsys.readouterr().err
    assert err.index("preparing the check crops and loading") < err.index("converting cnn5+bovw to float32 (1/2)")
    assert "converting cnn5+bovw to int8 (2/2; about " in err and "checking the int8 export" in err


def test_a_tflite_interpreter_runs_on_tensorflow_s_threads_or_every_usable_cpu(monkeypatch):
    """TFLite's own default is one thread (the fast model ran at half its speed on 2 cores)."""
    import os

    import tensorflow as tf

    from ensemble_fer.inference.export import interpreter_threads

    monkeypatch.setattr(tf.config.threading, "get_intra_op_parallelism_threads", lambda: 3)
    assert interpreter_threads() == 3
    monkeypatch.setattr(tf.config.threading, "get_intra_op_parallelism_threads", lambda: 0)
    assert interpreter_threads() == len(os.sched_getaffinity(0))
