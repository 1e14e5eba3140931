"""Inference (ensemble_fer.inference) and pipelines.evaluate on real trained variants
(conftest ``variant_pair``) and the bundled sample."""

import json
import shutil

import numpy as np
import pytest

from ensemble_fer import artifacts, datasets, evaluation, inference, metrics
from ensemble_fer.feature_store import FeatureStore
from pipelines import evaluate

from conftest import SAMPLE

MEMBERS = ("bovw", "cnn5+bovw")
JSON_KEYS = {"model", "data", "split", "split_note", "tta", "classes", "counts", "face_detector", "subsets", "all",
             "face_found", "face_found_note", "members", "features", "seconds"}
METRIC_KEYS = {"n", "accuracy", "macro_f1", "weighted_f1", "log_loss", "classes", "per_class", "confusion_matrix"}


@pytest.fixture(scope="module")
def ensemble_json(variant_pair, tmp_path_factory):
    out = tmp_path_factory.mktemp("ensemble") / "ensemble.json"
    evaluation.fit_ensemble([variant_pair / n for n in MEMBERS], out, say=lambda *a: None)
    return out


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """One extraction cache for the module: the members share an extractor config."""
    return tmp_path_factory.mktemp("eval-cache")


def _cli(args, capsys):
    code = evaluate.main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


# ------------------------------------------------------------------ inference

def test_predictor_reproduces_the_saved_predictions(variant_pair, sample_store, ensemble_json):
    val = FeatureStore(sample_store).load("val")
    saved = {n: artifacts.load_npz(variant_pair / n / "predictions.npz")["val_proba"] for n in MEMBERS}
    for name in MEMBERS:
        predictor = inference.load_predictor(variant_pair / name)
        assert predictor.kind == "variant" and predictor.members == (name,)
        assert predictor.classes == tuple(json.loads((variant_pair / name / "config.json").read_text())
                                          ["labels"]["classes"])
        proba = predictor.predict_features(val["images"], val["landmarks"], val["bovw"])
        np.testing.assert_allclose(proba, saved[name], atol=1e-5)

    ensemble = inference.load_predictor(ensemble_json)
    assert ensemble.kind == "ensemble" and ensemble.members == MEMBERS
    assert ensemble.extractor_config == FeatureStore(sample_store).config
    members = ensemble.member_probas(val["images"], val["landmarks"], val["bovw"])
    np.testing.assert_allclose(members, np.stack([saved[n] for n in MEMBERS]), atol=1e-5)
    np.testing.assert_allclose(ensemble.combine(members), np.tensordot(ensemble.weights, members, axes=1))


def test_predict_proba_on_raw_crops_matches_the_store_path(variant_pair, sample_store):
    """Extraction inside the predictor gives the store's features."""
    predictor = inference.load_predictor(variant_pair / "cnn5+bovw")
    val = FeatureStore(sample_store).load("val")
    records = {r.id: r for r in datasets.open_dataset(SAMPLE).splits["val"]}
    raw = np.stack([datasets.load_image(records[i]) for i in val["ids"][:24]])
    np.testing.assert_allclose(predictor.predict_proba(raw),
                               predictor.predict_features(val["images"][:24], val["landmarks"][:24],
                                                          val["bovw"][:24]), atol=1e-5)
    with_tta = predictor.predict_proba(raw, tta=2)
    assert with_tta.shape == (24, 7) and np.allclose(with_tta.sum(1), 1, atol=1e-4)
    # two views: the mean of the identity view and the mirror view
    analysed = predictor.analyse(raw)
    from ensemble_fer.augment import tta_views

    views = tta_views(analysed["images"], analysed["landmarks"], 2)
    per_view = [predictor.predict_features(v[0], None, v[2]) for v in views]
    np.testing.assert_allclose(with_tta, np.mean(per_view, axis=0), atol=1e-5)


def test_predictor_input_checks(variant_pair):
    predictor = inference.load_predictor(variant_pair / "cnn5+bovw")
    images = np.zeros((3, 48, 48), np.uint8)
    with pytest.raises(ValueError, match="tta must be an integer from 0"):
        predictor.predict_proba(images, tta=11)
    with pytest.raises(ValueError, match="bovw: members"):
        predictor.predict_features(images, None, None)
    with pytest.raises(ValueError, match="landmarks: tta=2"):
        predictor.predict_features(images, None, None, tta=2)
    with pytest.raises(ValueError, match="same faces"):
        predictor.predict_features(images, None, np.zeros((2, 2728), np.float32))
    with pytest.raises(ValueError, match="48x48"):
        predictor.predict_proba(np.zeros((3, 40, 40), np.uint8))


def test_load_predictor_refuses_what_cannot_be_combined(variant_pair, ensemble_json, tmp_path):
    with pytest.raises(FileNotFoundError, match="no such file"):
        inference.load_predictor(tmp_path / "missing")
    with pytest.raises(FileNotFoundError, match="not a trained variant|neither"):
        inference.load_predictor(tmp_path)

    # a copy of the ensemble next to copies of its members, which the cases below change
    models = tmp_path / "models"
    for name in MEMBERS:
        shutil.copytree(variant_pair / name, models / name, ignore=shutil.ignore_patterns(".run"))
    data = json.loads(ensemble_json.read_text())
    for member in data["members"]:
        member["path"] = member["name"]
    path = models / "ensemble.json"
    path.write_text(json.dumps(data))
    assert inference.load_predictor(path).members == MEMBERS

    config_path = models / "bovw" / "config.json"
    original = config_path.read_text()
    config = json.loads(original)
    config["feature_store"]["extractor"]["pad"] = 3
    config_path.write_text(json.dumps(config))
    with pytest.raises(ValueError, match="changed since the ensemble was fitted"):
        inference.load_predictor(path)
    data["members"][0]["config_sha256"] = inference.config_fingerprint(models / "bovw")
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="another extractor config"):
        inference.load_predictor(path)

    config_path.write_text(original)
    data["members"][0]["config_sha256"] = inference.config_fingerprint(models / "bovw")
    data["members"][0]["weight"] = 0.123
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="disagrees with ensemble.weights"):
        inference.load_predictor(path)

    shutil.rmtree(models / "bovw")
    with pytest.raises(FileNotFoundError, match="member 'bovw' is missing"):
        inference.load_predictor(path)


# ------------------------------------------------------------------ pipelines.evaluate

def test_evaluate_variant_on_the_sample(variant_pair, cache, tmp_path, capsys):
    out_json = tmp_path / "result.json"
    code, stdout, stderr = _cli(["--model", variant_pair / "cnn5+bovw", "--data", SAMPLE, "--cache", cache,
                                 "--json", out_json, "--quiet"], capsys)
    assert code == 0, stderr
    assert "split val (default: the data has no test split" in stdout
    assert "whole split" in stdout and "face-found subset" in stdout

    result = json.loads(out_json.read_text())
    assert set(result) == JSON_KEYS
    assert result["split"] == "val" and result["tta"] == 0 and result["model"]["kind"] == "variant"
    assert set(result["all"]) == METRIC_KEYS
    assert result["counts"]["images"] == result["counts"]["evaluated"] == 105
    assert result["counts"]["left_out"]["outside_label_set"] == 0
    # the model was trained without a detector: the face-found subset comes from dlib's HOG detector
    assert result["face_detector"] == "hog"
    n_face = result["counts"]["face_found"]
    assert 0 < n_face < 105 and result["face_found"]["n"] == n_face
    assert set(result["face_found"]) == METRIC_KEYS
    assert "filtered protocol" in result["subsets"]["face_found"]
    # re-extracting val from the raw images reproduces what training measured on the store
    trained = json.loads((variant_pair / "cnn5+bovw" / "metrics.json").read_text())["val"]
    assert result["all"]["accuracy"] == pytest.approx(trained["accuracy"])
    assert result["all"]["confusion_matrix"] == trained["confusion_matrix"]
    assert list(cache.glob("eval-sample-*/val.npz"))


def test_face_found_subset_is_the_flagged_rows(variant_pair, cache):
    predictor = inference.load_predictor(variant_pair / "bovw")
    data = evaluation.load_eval_data(SAMPLE, predictor, split="val", cache=cache)
    result = evaluation.evaluate_predictor(predictor, data)
    proba = predictor.predict_features(data.images, data.landmarks, data.bovw)
    expected = metrics.classification_metrics(data.y[data.face_found], proba[data.face_found],
                                              list(predictor.classes))
    assert result["face_found"]["accuracy"] == pytest.approx(expected["accuracy"])
    assert result["face_found"]["confusion_matrix"] == expected["confusion_matrix"]
    no_faces = evaluation.evaluate_predictor(
        predictor, evaluation.load_eval_data(SAMPLE, predictor, split="val", cache=cache, face_detector="none"))
    assert no_faces["face_found"] is None and "no face detector" in no_faces["face_found_note"]


def test_evaluate_ensemble_with_tta_and_report_folder(ensemble_json, cache, tmp_path, capsys):
    plain, with_tta = tmp_path / "plain.json", tmp_path / "tta.json"
    code, _, stderr = _cli(["--model", ensemble_json, "--data", SAMPLE, "--split", "val", "--cache", cache,
                            "--json", plain, "--quiet"], capsys)
    assert code == 0, stderr
    result = json.loads(plain.read_text())
    assert set(result) == JSON_KEYS and result["model"]["kind"] == "ensemble"
    assert set(result["members"]) == set(MEMBERS)
    assert set(result["members"]["bovw"]) == {"all", "face_found"}
    fit = json.loads((ensemble_json.parent / "ensemble_report.json").read_text())
    assert result["all"]["accuracy"] == pytest.approx(fit["results"]["val"]["ensemble"]["accuracy"])

    report = tmp_path / "report"
    code, stdout, stderr = _cli(["--model", ensemble_json, "--data", SAMPLE, "--cache", cache, "--tta", "2",
                                 "--json", with_tta, "--out", report, "--quiet"], capsys)
    assert code == 0, stderr
    assert "TTA 2 views" in stdout
    result = json.loads(with_tta.read_text())
    assert result["tta"] == 2 and 0 <= result["all"]["accuracy"] <= 1
    markdown = (report / "evaluation.md").read_text()
    for text in ("whole split", "face-found subset", "Members:", "Per class: whole split", "2 views averaged",
                 "confusion_matrix.png"):
        assert text in markdown
    assert (report / "confusion_matrix.png").is_file() and (report / "confusion_matrix_face_found.png").is_file()
    assert json.loads((report / "evaluation.json").read_text())["tta"] == 2


def test_evaluate_on_a_feature_store(variant_pair, sample_store, tmp_path, capsys):
    out_json = tmp_path / "r.json"
    code, stdout, stderr = _cli(["--model", variant_pair / "bovw", "--data", sample_store, "--json", out_json,
                                 "--quiet"], capsys)
    assert code == 0, stderr
    result = json.loads(out_json.read_text())
    assert result["data"]["kind"] == "feature store" and result["split"] == "val"
    trained = json.loads((variant_pair / "bovw" / "metrics.json").read_text())["val"]
    assert result["all"]["accuracy"] == pytest.approx(trained["accuracy"])

    # a store made with another extractor config is refused
    other = tmp_path / "other-store"
    other.mkdir()
    shutil.copy(sample_store / "val.npz", other / "val.npz")
    manifest = json.loads((sample_store / "manifest.json").read_text())
    manifest["config"]["pad"] = 0
    (other / "manifest.json").write_text(json.dumps(manifest))
    code, _, stderr = _cli(["--model", variant_pair / "bovw", "--data", other], capsys)
    assert code == 2 and str(other) in stderr and "give the raw data instead" in stderr


def _class_folders(root, names, per_class=3):
    """A bare class-folder dataset made of sample images."""
    for name in names:
        (root / name).mkdir(parents=True)
        for file in sorted((SAMPLE / "test" / "happy").glob("*.jpg"))[:per_class]:
            shutil.copy(file, root / name / file.name)
    return root


def test_unknown_label_folders_and_labels_outside_the_set(variant_pair, tmp_path, capsys):
    data = _class_folders(tmp_path / "data", ["happy", "sad", "contempt", "selfies"])
    model = variant_pair / "bovw"
    code, _, stderr = _cli(["--model", model, "--data", data, "--split", "all", "--no-cache"], capsys)
    assert code == 2 and "unknown label folder 'selfies'" in stderr and stderr.count("\n") == 1

    out_json = tmp_path / "r.json"
    code, stdout, stderr = _cli(["--model", model, "--data", data, "--split", "all", "--no-cache",
                                 "--ignore-unknown-labels", "--json", out_json, "--n-jobs", "1"], capsys)
    assert code == 0, stderr
    result = json.loads(out_json.read_text())
    assert result["counts"]["images"] == 9 and result["counts"]["evaluated"] == 6
    assert result["counts"]["left_out"] == {"outside_label_set": 3, "by_label": {"contempt": 3}}
    assert result["data"]["ignored_label_folders"] == {"selfies": 3}
    assert "left out 3 images outside the label set" in stdout
    assert result["all"]["n"] == 6


def test_evaluate_bad_arguments(variant_pair, tmp_path, capsys):
    code, _, stderr = _cli(["--model", variant_pair / "bovw", "--data", SAMPLE, "--split", "test"], capsys)
    assert code == 2 and "has no 'test' split" in stderr
    code, _, stderr = _cli(["--model", variant_pair / "bovw", "--data", SAMPLE, "--tta", "11"], capsys)
    assert code == 2 and "tta must be an integer from 0" in stderr
    code, _, stderr = _cli(["--model", tmp_path / "nope", "--data", SAMPLE], capsys)
    assert code == 2 and "no such file or folder" in stderr
