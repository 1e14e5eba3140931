"""Inference (ensemble_fer.inference.predictor) and pipelines.evaluate on real trained variants
(conftest ``variant_pair``) and the bundled sample."""

import csv
import json
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest

from ensemble_fer import artifacts
from ensemble_fer.features import datasets
from ensemble_fer.ensemble.fit import fit_ensemble
from ensemble_fer.evaluation import evaluate as evaluation
from ensemble_fer.inference.loading import load_predictor
from ensemble_fer import metrics
from ensemble_fer.errors import InputError
from ensemble_fer.features.feature_store import FeatureStore
from pipelines import evaluate
from pipelines import predict as predict_cli

from conftest import SAMPLE, TEST_DATA

MEMBERS = ("bovw", "cnn5+bovw")
JSON_KEYS = {"model", "data", "split", "split_note", "tta", "classes", "counts", "face_detector", "subsets", "all",
             "face_found", "face_found_note", "members", "features", "seconds"}
METRIC_KEYS = {"n", "accuracy", "macro_f1", "weighted_f1", "log_loss", "classes", "per_class", "confusion_matrix"}


@pytest.fixture(scope="module")
def ensemble_json(variant_pair, tmp_path_factory):
    """An ensemble fitted in a folder of links to the members (members must be inside it)."""
    folder = tmp_path_factory.mktemp("ensemble")
    for name in MEMBERS:
        (folder / name).symlink_to(variant_pair / name, target_is_directory=True)
    out = folder / "ensemble.json"
    fit_ensemble([folder / n for n in MEMBERS], out, say=lambda *a: None)
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
        predictor = load_predictor(variant_pair / name)
        assert predictor.kind == "variant" and predictor.members == (name,)
        assert predictor.classes == tuple(json.loads((variant_pair / name / "config.json").read_text())
                                          ["labels"]["classes"])
        proba = predictor.predict_features(val["images"], val["landmarks"], val["bovw"])
        np.testing.assert_allclose(proba, saved[name], atol=1e-5)

    ensemble = load_predictor(ensemble_json)
    assert ensemble.kind == "ensemble" and ensemble.members == MEMBERS
    assert ensemble.extractor_config == FeatureStore(sample_store).config
    members = ensemble.member_probas(val["images"], val["landmarks"], val["bovw"])
    np.testing.assert_allclose(members, np.stack([saved[n] for n in MEMBERS]), atol=1e-5)
    np.testing.assert_allclose(ensemble.combine(members), np.tensordot(ensemble.weights, members, axes=1))


def test_predict_proba_on_raw_crops_matches_the_store_path(variant_pair, sample_store):
    """Extraction inside the predictor gives the store's features."""
    predictor = load_predictor(variant_pair / "cnn5+bovw")
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
    from ensemble_fer.features.augment import tta_views

    views = tta_views(analysed["images"], analysed["landmarks"], 2)
    per_view = [predictor.predict_features(v[0], None, v[2]) for v in views]
    np.testing.assert_allclose(with_tta, np.mean(per_view, axis=0), atol=1e-5)


def test_predictor_input_checks(variant_pair):
    predictor = load_predictor(variant_pair / "cnn5+bovw")
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
        load_predictor(tmp_path / "missing")
    with pytest.raises(FileNotFoundError, match="not a trained variant|neither"):
        load_predictor(tmp_path)

    # a copy of the ensemble next to copies of its members, which the cases below change
    models = tmp_path / "models"
    for name in MEMBERS:
        shutil.copytree(variant_pair / name, models / name, ignore=shutil.ignore_patterns(".run"))
    data = json.loads(ensemble_json.read_text())
    for member in data["members"]:
        member["path"] = member["name"]
    path = models / "ensemble.json"
    path.write_text(json.dumps(data))
    assert load_predictor(path).members == MEMBERS

    config_path = models / "bovw" / "config.json"
    original = config_path.read_text()
    config = json.loads(original)
    config["feature_store"]["extractor"]["pad"] = 3
    config_path.write_text(json.dumps(config))
    with pytest.raises(ValueError, match="changed since the ensemble was fitted .its config.json differs"):
        load_predictor(path)
    data["members"][0]["config_sha256"] = artifacts.sha256_file(config_path)
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="another extractor config"):
        load_predictor(path)

    config_path.write_text(original)
    data["members"][0]["config_sha256"] = artifacts.sha256_file(config_path)
    data["members"][0]["weight"] = 0.123
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="disagrees with ensemble.weights"):
        load_predictor(path)

    shutil.rmtree(models / "bovw")
    with pytest.raises(FileNotFoundError, match="member 'bovw' is missing"):
        load_predictor(path)


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
    predictor = load_predictor(variant_pair / "bovw")
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


def test_defaults_the_bundled_sample_caches_in_the_users_cache_and_shows_no_joblib_lines(variant_pair, tmp_path,
                                                                                         capsys, monkeypatch):
    """No --data: the bundled sample, as extract; no --cache: the user's cache folder, never
    the package's; progress is one bar, not joblib's [Parallel(...)] lines."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    code, stdout, stderr = _cli(["--model", variant_pair / "bovw", "--n-jobs", "2", "--json", "r.json"], capsys)
    assert code == 0, stderr
    result = json.loads((tmp_path / "r.json").read_text())
    assert Path(result["data"]["path"]).resolve() == SAMPLE.resolve()
    assert list((tmp_path / "cache" / "ensemble_fer" / "features").glob("eval-*"))
    assert "[Parallel(" not in stderr + stdout


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
    with pytest.raises(SystemExit) as exit_:        # out of range: refused as the command line is parsed
        _cli(["--model", variant_pair / "bovw", "--data", SAMPLE, "--tta", "11"], capsys)
    assert exit_.value.code == 2 and "error: argument --tta: must be an int in [0, 10]; got 11" in \
        capsys.readouterr().err
    code, _, stderr = _cli(["--model", tmp_path / "nope", "--data", SAMPLE], capsys)
    assert code == 2 and "no such file or folder" in stderr


def test_ensemble_members_are_hashed_and_stay_inside_its_folder(variant_pair, ensemble_json, tmp_path):
    models = tmp_path / "models"
    for name in MEMBERS:
        shutil.copytree(variant_pair / name, models / name, ignore=shutil.ignore_patterns(".run"))
    data = json.loads(ensemble_json.read_text())
    path = models / "ensemble.json"
    path.write_text(json.dumps(data))
    assert load_predictor(path).members == MEMBERS

    # another model under the member's name: same config.json, other model.keras
    model = models / "bovw" / "model.keras"
    original = model.read_bytes()
    shutil.copy(models / "cnn5+bovw" / "model.keras", model)
    with pytest.raises(InputError, match=r"member .*bovw changed since the ensemble was fitted \(its model.keras"):
        load_predictor(path)
    # swapped after loading, before the model is read: refused when it is
    model.write_bytes(original)
    predictor = load_predictor(path)
    shutil.copy(models / "cnn5+bovw" / "model.keras", model)
    with pytest.raises(InputError, match="its model.keras differs"):
        predictor.load_models()
    model.write_bytes(original)

    # member paths that leave the ensemble's folder
    outside = tmp_path / "outside"
    shutil.copytree(models / "bovw", outside)
    for where in ("../outside", str(outside), "bovw/../../outside"):
        edited = json.loads(json.dumps(data))
        edited["members"][0]["path"] = where
        path.write_text(json.dumps(edited))
        with pytest.raises(InputError, match=f"members\\[0\\].path .* leaves the ensemble's folder"):
            load_predictor(path)

    # an ensemble written before model hashes existed
    old = json.loads(json.dumps(data))
    old["version"] = 1
    for member in old["members"]:
        member["config_sha256"] = member["config_sha256"][:16]
        del member["model_sha256"]
    path.write_text(json.dumps(old))
    with pytest.raises(InputError, match="older fit_ensemble .* rerun `python -m pipelines.fit_ensemble`"):
        load_predictor(path)


def test_a_model_file_keras_cannot_read_is_named_as_such(variant_pair, tmp_path, capsys):
    folder = tmp_path / "variant"
    shutil.copytree(variant_pair / "bovw", folder, ignore=shutil.ignore_patterns(".run"))
    model = folder / "model.keras"
    original = model.read_bytes()
    model.write_bytes(original[: len(original) // 2])          # truncated: Keras says "File not found"
    with pytest.raises(InputError, match="model.keras: not a valid Keras model"):
        load_predictor(folder)
    code, _, stderr = _cli(["--model", folder, "--data", SAMPLE, "--no-cache"], capsys)
    assert code == 2 and stderr.count("\n") == 1 and "not a valid Keras model" in stderr
    assert "File not found" not in stderr

    # a crafted archive with the right names but nothing Keras can build
    with zipfile.ZipFile(model, "w") as archive:
        archive.writestr("config.json", '{"class_name": "Functional", "config": {}}')
        archive.writestr("metadata.json", "{}")
        archive.writestr("model.weights.h5", b"not hdf5")
    predictor = load_predictor(folder)
    with pytest.raises(InputError, match="model.keras: not a valid Keras model"):
        predictor.load_models()


def _copy_pictures(files, folder):
    folder.mkdir(parents=True, exist_ok=True)
    for file in files:
        shutil.copy(file, folder / file.name)


def test_a_plain_class_folder_is_scored_whole_and_as_predict_sees_it(variant_pair, tmp_path, capsys):
    """No split folders: every image is scored by default, and whatever the split, each image
    is scored on the face predict reports first; images without a face are left out."""
    data = tmp_path / "data"
    for name in ("happy", "sad"):
        _copy_pictures(sorted((SAMPLE / "train" / name).glob("*.jpg"))[:12], data / name)
    _copy_pictures([TEST_DATA / "photos" / "2008_002506.jpg"], data / "happy")     # whole photos
    _copy_pictures([TEST_DATA / "photos" / "2009_004587.jpg", TEST_DATA / "photos" / "dogs.jpg"], data / "sad")
    model = variant_pair / "bovw"
    out_json = tmp_path / "r.json"
    code, stdout, stderr = _cli(["--model", model, "--data", data, "--no-cache", "--n-jobs", "1",
                                 "--json", out_json], capsys)
    assert code == 0, stderr
    result = json.loads(out_json.read_text())
    assert result["split"] == "all" and "no split folders" in result["split_note"]
    assert result["counts"]["images"] == 27 and result["counts"]["no_face"] == 1      # the dogs
    assert result["all"]["n"] == result["counts"]["evaluated"] == 26
    assert "1 images without a face" in stdout

    # predict on the same folder: face 0 of each photo, its probabilities
    predictions = tmp_path / "faces.csv"
    assert predict_cli.main([str(data), "--recursive", "--model", str(model), "--csv", str(predictions),
                             "--quiet"]) == 0
    with open(predictions, newline="") as handle:
        rows = list(csv.DictReader(handle))
    predictor = load_predictor(model)
    first_face = {r["path"]: [float(r[c]) for c in predictor.classes] for r in rows if r["face"] == "0"}
    assert {r["path"] for r in rows if r["status"] == "no_face"} == {str(data / "sad" / "dogs.jpg")}
    for split in ("all", "train", "val"):
        loaded = evaluation.load_eval_data(data, predictor, split=split, n_jobs=1)
        expected = np.array([first_face[str(data / ident)] for ident in loaded.ids])
        proba = predictor.predict_features(loaded.images, loaded.landmarks, loaded.bovw)
        np.testing.assert_allclose(proba, expected, atol=2e-6)
        scored = evaluation.evaluate_predictor(predictor, loaded)
        labels = np.array([predictor.classes.index(ident.split("/")[0]) for ident in loaded.ids])
        assert scored["all"]["accuracy"] == pytest.approx(float((expected.argmax(1) == labels).mean()))
        if split == "all":
            assert scored["all"]["accuracy"] == pytest.approx(result["all"]["accuracy"])


def test_the_feature_cache_keys_on_content_not_names(variant_pair, tmp_path):
    data, cache = tmp_path / "data", tmp_path / "cache"
    happy = sorted((SAMPLE / "train" / "happy").glob("*.jpg"))[:6]
    sad = sorted((SAMPLE / "train" / "sad").glob("*.jpg"))[:6]
    _copy_pictures(happy, data / "happy")
    _copy_pictures(sad, data / "sad")
    predictor = load_predictor(variant_pair / "bovw")
    first = evaluation.load_eval_data(data, predictor, cache=cache, n_jobs=1)
    # other pictures under the same names and labels
    for old, new in zip(happy + sad, sad + happy):
        target = data / ("happy" if old in happy else "sad") / old.name
        shutil.copy(new, target)
    again = evaluation.load_eval_data(data, predictor, cache=cache, n_jobs=1)
    fresh = evaluation.load_eval_data(data, predictor, cache=None, n_jobs=1)
    assert list(again.ids) == list(first.ids)
    assert not np.array_equal(again.images, first.images)
    np.testing.assert_array_equal(again.images, fresh.images)
    np.testing.assert_array_equal(again.bovw, fresh.bovw)


def test_evaluate_refuses_existing_outputs_and_replaces_them_only_when_complete(variant_pair, tmp_path, capsys):
    out_json, out_dir = tmp_path / "result.json", tmp_path / "report"
    out_json.write_text("an earlier result\n")
    out_dir.mkdir()
    (out_dir / "evaluation.md").write_text("an earlier report\n")
    artifacts.mark_output(out_dir)      # an earlier run's report, as evaluate marks it
    # refused before any work: the missing model is not even looked at
    code, _, stderr = _cli(["--model", tmp_path / "nope", "--data", SAMPLE, "--json", out_json], capsys)
    assert code == 2 and stderr == f"error: {out_json}: exists; pass --force to replace it\n"
    code, _, stderr = _cli(["--model", tmp_path / "nope", "--data", SAMPLE, "--out", out_dir], capsys)
    assert code == 2 and f"{out_dir}: exists; pass --force" in stderr
    code, _, stderr = _cli(["--model", tmp_path / "nope", "--data", SAMPLE, "--json", tmp_path], capsys)
    assert code == 2 and "is a folder" in stderr
    assert "--force" in evaluate.build_parser().format_help()

    # --force on a run that fails after it started: the old results are untouched
    no_faces = tmp_path / "no_faces"
    _copy_pictures([TEST_DATA / "photos" / "dogs.jpg"], no_faces / "happy")
    code, _, stderr = _cli(["--model", variant_pair / "bovw", "--data", no_faces, "--no-cache", "--force",
                            "--json", out_json, "--out", out_dir], capsys)
    assert code == 2 and "no face found in any" in stderr
    assert out_json.read_text() == "an earlier result\n"
    assert (out_dir / "evaluation.md").read_text() == "an earlier report\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["no_faces", "report", "result.json"]

    code, _, stderr = _cli(["--model", variant_pair / "bovw", "--data", SAMPLE, "--no-cache", "--force",
                            "--json", out_json, "--out", out_dir, "--quiet", "--n-jobs", "1"], capsys)
    assert code == 0, stderr
    assert json.loads(out_json.read_text())["split"] == "val"
    assert sorted(p.name for p in out_dir.iterdir()) == [artifacts.OUTPUT_MARKER, "confusion_matrix.png",
                                                         "confusion_matrix_face_found.png", "evaluation.json",
                                                         "evaluation.md"]


def test_a_picture_over_pillows_limit_is_one_line_naming_it(variant_pair, tmp_path, capsys):
    """A 14000x14000 picture among the class folders: Pillow refuses to decode it; evaluate says
    so in one line naming the file and the limit, instead of a DecompressionBombError traceback."""
    from PIL import Image

    from test_datasets import write_bomb_png

    data = _class_folders(tmp_path / "data", ["happy", "sad"])
    huge = write_bomb_png(data / "sad" / "huge.png")
    out_json = tmp_path / "r.json"
    code, _, stderr = _cli(["--model", variant_pair / "bovw", "--data", data, "--no-cache", "--n-jobs", "1",
                            "--json", out_json], capsys)
    assert code == 2 and stderr.count("\n") == 1
    assert stderr.startswith(f"error: {huge}: not read, too large (Image size (196000000 pixels) exceeds limit of "
                             f"{2 * Image.MAX_IMAGE_PIXELS} pixels")
    assert not out_json.exists()
