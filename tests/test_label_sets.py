"""Label sets through every stage, end to end on the sample store: a 4-class subset
(``happy,sad,neutral,surprise``) and ``valence3`` (positive = happy; negative = angry, disgust,
fear, sad, contempt; surprise; neutral left out), trained (one epoch, BOVW-only), then
ensembled, evaluated, compared and used for prediction.

The sample has 40 train and 15 val (its test folder) images of each of the 7 FER2013 classes;
one neutral training crop is blank and dropped by the extraction filter.
"""

import contextlib
import csv
import io
import json
import shutil

import keras
import numpy as np
import pytest

from conftest import SAMPLE
from ensemble_fer import EmotionRecognizer, artifacts
from ensemble_fer.features.image_io import read_image_file
from pipelines import compare, evaluate, fit_ensemble, predict, train_variant

FOUR = ("happy", "sad", "neutral", "surprise")
VALENCE = ("positive", "negative", "surprise")
VALENCE_OF = {"happy": "positive", "angry": "negative", "disgust": "negative", "fear": "negative",
              "sad": "negative", "surprise": "surprise"}


def _cli(main, args, capsys):
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture(scope="module")
def four_class(sample_store, tmp_path_factory):
    """A BOVW-only 4-class variant, trained through the CLI."""
    out = tmp_path_factory.mktemp("labels") / "bovw-4class"
    code = train_variant.main(["--block", "none", "--bovw", "--features", str(sample_store), "--out", str(out),
                               "--labels", ",".join(FOUR), "--epochs", "1", "--no-augment", "--quiet"])
    assert code == 0
    return out


@pytest.fixture(scope="module")
def valence(sample_store, tmp_path_factory):
    """A BOVW-only valence3 variant, trained through the library."""
    from ensemble_fer.training import train as training
    out = tmp_path_factory.mktemp("labels") / "bovw-valence3"
    training.train_variant(sample_store, None, True, out=out, labels="valence3", epochs=1, augment=False,
                           progress=False)
    return out


def _check_variant(folder, name, classes, class_of_folder, data):
    """config.json, predictions.npz, metrics.json and model.keras of a trained variant agree
    on ``classes``; every val row's class is the one its image folder maps to."""
    config = json.loads((folder / "config.json").read_text())
    assert config["labels"]["name"] == name and tuple(config["labels"]["classes"]) == classes
    assert config["data"] == data

    predictions = artifacts.load_npz(folder / "predictions.npz")
    n_val = data["val"]["used"]
    assert predictions["val_proba"].shape == (n_val, len(classes))
    np.testing.assert_allclose(predictions["val_proba"].sum(axis=1), 1.0, atol=1e-5)
    folders = [i.split("/")[1] for i in predictions["val_ids"]]
    assert [classes[y] for y in predictions["val_y"]] == [class_of_folder[f] for f in folders]

    scores = json.loads((folder / "metrics.json").read_text())["val"]
    assert tuple(scores["classes"]) == classes and tuple(scores["per_class"]) == classes
    assert np.array(scores["confusion_matrix"]).shape == (len(classes), len(classes))
    assert scores["n"] == n_val
    assert {c: s["support"] for c, s in scores["per_class"].items()} == data["val"]["per_class"]

    model = keras.models.load_model(folder / "model.keras", compile=False)
    assert model.output_shape == (None, len(classes))


# ---------------------------------------------------------------------- training

def test_four_class_variant_trains_on_its_classes_and_counts_the_rest(four_class):
    _check_variant(four_class, "happy,sad,neutral,surprise", FOUR, {c: c for c in FOUR}, {
        "train": {"rows": 280, "used": 159, "left_out": {"outside_label_set": 120, "dropped_blank": 1},
                  "per_class": {"happy": 40, "sad": 40, "neutral": 39, "surprise": 40}},
        "val": {"rows": 105, "used": 60, "left_out": {"outside_label_set": 45},
                "per_class": {c: 15 for c in FOUR}}})


def test_valence3_variant_groups_the_classes_and_leaves_neutral_out(valence):
    # the blank training crop is neutral: outside the label set before it is a dropped row
    _check_variant(valence, "valence3", VALENCE, VALENCE_OF, {
        "train": {"rows": 280, "used": 240, "left_out": {"outside_label_set": 40},
                  "per_class": {"positive": 40, "negative": 160, "surprise": 40}},
        "val": {"rows": 105, "used": 90, "left_out": {"outside_label_set": 15},
                "per_class": {"positive": 15, "negative": 60, "surprise": 15}}})


# ---------------------------------------------------------------------- ensembles

def _members(tmp_path, *folders):
    """A models folder with copies of the variants' config.json and predictions.npz (all that
    fit_ensemble reads)."""
    models = tmp_path / "models"
    for folder in folders:
        (models / folder.name).mkdir(parents=True)
        for file in ("config.json", "predictions.npz"):
            shutil.copy(folder / file, models / folder.name / file)
    return models


def test_fit_ensemble_refuses_to_mix_label_sets_naming_the_culprit(variant_pair, four_class, tmp_path, capsys):
    models = _members(tmp_path, variant_pair / "bovw", four_class)      # fer7 first, then the 4-class one
    out = tmp_path / "ensemble.json"
    code, _, stderr = _cli(fit_ensemble.main, ["--models", models, "--out", out], capsys)
    assert code == 2 and stderr.count("\n") == 1
    assert stderr.startswith(f"error: {models / four_class.name}: label set 'happy,sad,neutral,surprise' "
                             f"{list(FOUR)} differs from {models / 'bovw'}'s 'fer7'")
    assert not out.exists()


def test_an_ensemble_of_a_four_class_variant_predicts_four_classes(four_class, tmp_path, capsys):
    # an ensemble names only members inside its own folder: give it a folder holding a link to the variant
    models = tmp_path / "ens"
    models.mkdir()
    (models / four_class.name).symlink_to(four_class, target_is_directory=True)
    out = models / "ensemble.json"
    code, _, stderr = _cli(fit_ensemble.main, ["--models", models, "--variants", four_class.name,
                                               "--out", out], capsys)
    assert code == 0, stderr
    data = json.loads(out.read_text())
    assert tuple(data["classes"]) == FOUR and data["labels"]["name"] == "happy,sad,neutral,surprise"
    crops = [read_image_file(f) for f in sorted(SAMPLE.glob("test/angry/*.jpg"))[:2]]
    from_ensemble = EmotionRecognizer.load(out).predict_many(crops)
    from_variant = EmotionRecognizer.load(four_class).predict_many(crops)
    for (a,), (b,) in zip(from_ensemble, from_variant):
        assert tuple(a.scores) == FOUR and a.emotion == b.emotion
        np.testing.assert_allclose(list(a.scores.values()), list(b.scores.values()), atol=1e-6)


# ---------------------------------------------------------------------- evaluation

def test_evaluate_reports_only_the_four_classes_and_counts_the_left_out_rows(four_class, tmp_path, capsys):
    result_file = tmp_path / "result.json"
    code, stdout, stderr = _cli(evaluate.main, ["--model", four_class, "--data", SAMPLE, "--no-cache", "--n-jobs", "1",
                                                "--json", result_file, "--quiet"], capsys)
    assert code == 0, stderr
    result = json.loads(result_file.read_text())
    assert result["split"] == "val" and tuple(result["classes"]) == FOUR
    assert result["counts"]["images"] == 105 and result["counts"]["evaluated"] == 60
    assert result["counts"]["left_out"] == {"outside_label_set": 45,
                                            "by_label": {"angry": 15, "disgust": 15, "fear": 15}}
    assert "left out 45 images outside the label set" in stdout
    scores = result["all"]
    assert scores["n"] == 60 and tuple(scores["per_class"]) == FOUR
    assert all(s["support"] == 15 for s in scores["per_class"].values())
    assert np.array(scores["confusion_matrix"]).shape == (4, 4)
    # the val images re-extracted from the raw sample give what training measured on the store
    trained = json.loads((four_class / "metrics.json").read_text())["val"]
    assert scores["accuracy"] == pytest.approx(trained["accuracy"])
    assert scores["confusion_matrix"] == trained["confusion_matrix"]


def test_evaluate_valence3_on_the_feature_store(valence, sample_store, tmp_path, capsys):
    result_file = tmp_path / "result.json"
    code, _, stderr = _cli(evaluate.main, ["--model", valence, "--data", sample_store, "--face-detector", "none",
                                           "--json", result_file, "--quiet"], capsys)
    assert code == 0, stderr
    result = json.loads(result_file.read_text())
    assert tuple(result["classes"]) == VALENCE and result["counts"]["evaluated"] == 90
    assert result["counts"]["left_out"] == {"outside_label_set": 15, "by_label": {"neutral": 15}}
    assert {c: s["support"] for c, s in result["all"]["per_class"].items()} == {"positive": 15, "negative": 60,
                                                                                "surprise": 15}
    trained = json.loads((valence / "metrics.json").read_text())["val"]
    assert result["all"]["accuracy"] == pytest.approx(trained["accuracy"])


def test_valence3_counts_contempt_as_negative(valence, tmp_path, capsys):
    # class folders as CK+ has them: contempt (which FER2013 lacks) is inside valence3, neutral is not
    data = tmp_path / "ck"
    for name in ("happy", "contempt", "neutral"):
        (data / name).mkdir(parents=True)
        for file in sorted((SAMPLE / "test" / "happy").glob("*.jpg"))[:2]:
            shutil.copy(file, data / name / file.name)
    result_file = tmp_path / "result.json"
    code, _, stderr = _cli(evaluate.main, ["--model", valence, "--data", data, "--split", "all", "--no-cache",
                                           "--n-jobs", "1", "--face-detector", "none", "--json", result_file,
                                           "--quiet"], capsys)
    assert code == 0, stderr
    result = json.loads(result_file.read_text())
    assert result["counts"]["images"] == 6 and result["counts"]["evaluated"] == 4
    assert result["counts"]["left_out"] == {"outside_label_set": 2, "by_label": {"neutral": 2}}
    assert {c: s["support"] for c, s in result["all"]["per_class"].items()} == {"positive": 2, "negative": 2,
                                                                                "surprise": 0}


# ---------------------------------------------------------------------- prediction

@pytest.mark.parametrize("fixture, classes", [("four_class", FOUR), ("valence", VALENCE)])
def test_recognizer_and_predict_cli_output_one_score_column_per_class(fixture, classes, request, tmp_path):
    model = request.getfixturevalue(fixture)
    recognizer = EmotionRecognizer.load(model)
    assert recognizer.classes == classes
    files = [sorted(SAMPLE.glob(f"test/{name}/*.jpg"))[0] for name in ("fear", "happy")]
    expected = [recognizer.predict(f) for f in files]
    for faces in expected:
        [face] = faces                                          # a 48x48 image is the face itself
        assert tuple(face.scores) == classes and face.emotion in classes
        assert sum(face.scores.values()) == pytest.approx(1.0, abs=1e-5)

    for file in files:
        shutil.copy(file, tmp_path / file.name)
    out = tmp_path / "faces.csv"
    with contextlib.redirect_stderr(io.StringIO()):
        assert predict.main([str(tmp_path), "--model", str(model), "--csv", str(out), "--quiet"]) == 0
    with open(out, newline="") as handle:
        rows = list(csv.reader(handle))
    assert rows[0] == ["path", "face", "left", "top", "right", "bottom", "emotion", *classes, "status", "reason"]
    assert len(rows) == 3 and all(len(r) == 9 + len(classes) for r in rows[1:])
    by_name = {r[0].rsplit("/", 1)[1]: r for r in rows[1:]}
    for file, [face] in zip(files, expected):
        row = by_name[file.name]
        assert row[6] == face.emotion and row[-2:] == ["ok", ""]
        np.testing.assert_allclose([float(v) for v in row[7:-2]], list(face.scores.values()), atol=2e-6)


# ---------------------------------------------------------------------- comparison

def test_compare_lists_each_label_set_and_warns_they_are_not_comparable(variant_pair, four_class, valence,
                                                                       tmp_path, capsys):
    models = tmp_path / "models"
    for folder in (variant_pair / "bovw", four_class, valence):
        shutil.copytree(folder, models / folder.name, ignore=shutil.ignore_patterns(".run"))
    code, stdout, stderr = _cli(compare.main, ["--models", models, "--no-speed", "--quiet"], capsys)
    assert code == 0, stderr
    with open(models / "comparison" / "comparison.csv", newline="") as handle:
        rows = {r["name"]: r for r in csv.DictReader(handle)}
    assert {n: (r["labels"], r["n_classes"]) for n, r in rows.items()} == {
        "bovw": ("fer7", "7"), "bovw-4class": ("happy,sad,neutral,surprise", "4"), "bovw-valence3": ("valence3", "3")}
    assert int(rows["bovw-4class"]["val_n"]) == 60 and int(rows["bovw-valence3"]["val_n"]) == 90
    assert "different label sets" in stdout and "not comparable" in stdout
