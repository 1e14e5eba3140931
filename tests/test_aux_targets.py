"""Auxiliary 0/1 targets (``--aux-targets``): the CSV reader's refusals, and a real multi-task
cnn5 run on the sample store whose targets are derivable from the pixels, so learning shows.

* ``bright``: the crop's mean pixel is above the median of all crops (a strong cue);
* ``top_heavy``: the upper half is brighter than the lower half (a weaker cue: many faces
  are close to the threshold).
"""

from __future__ import annotations

import json
import shutil

import keras
import numpy as np
import pytest

from ensemble_fer import artifacts
from ensemble_fer.models.forward import predict_aux_proba, predict_proba
from ensemble_fer.models.variant_dir import load_variant
from ensemble_fer.training.aux_targets import aux_metrics, read_aux_targets
from ensemble_fer.training.config import TrainConfig
from ensemble_fer.features.feature_store import FeatureStore
from pipelines import train_variant as cli

TARGETS = ("bright", "top_heavy")


def _cli(*args):
    return cli.main([str(a) for a in args] + ["--quiet"])


def _store_rows(store):
    store = FeatureStore(store)
    ids, images = [], []
    for split in store.splits:
        arrays = store.load(split)
        ids += [str(i) for i in arrays["ids"]]
        images.append(arrays["images"].astype(np.float64))
    return ids, np.concatenate(images)


def _write_csv(path, header, rows):
    path.write_text("\n".join([",".join(header)] + [",".join(map(str, r)) for r in rows]) + "\n")
    return path


@pytest.fixture(scope="module")
def aux_csv(sample_store, tmp_path_factory):
    ids, images = _store_rows(sample_store)
    mean = images.mean(axis=(1, 2))
    bright = (mean > np.median(mean)).astype(int)
    top_heavy = (images[:, :24].mean(axis=(1, 2)) > images[:, 24:].mean(axis=(1, 2))).astype(int)
    # rows in another order than the store's: alignment is by id
    rows = [(i, b, t) for i, b, t in zip(ids, bright, top_heavy)][::-1]
    return _write_csv(tmp_path_factory.mktemp("aux") / "aus.csv", ("image",) + TARGETS, rows)


@pytest.fixture(scope="module")
def multitask(sample_store, aux_csv, tmp_path_factory):
    out = tmp_path_factory.mktemp("aux_variants") / "cnn5"
    # 12 epochs: with the sample's sharp training crops (session 4) 6 epochs left top_heavy
    # unlearnt (AUC 0.55); 12 learn both targets
    assert _cli("--block", "cnn5", "--features", sample_store, "--out", out, "--epochs", 12, "--no-augment",
                "--lr", 0.003, "--class-weight", "balanced", "--aux-targets", aux_csv,
                "--aux-loss-weight", 10) == 0
    return out


def test_the_aux_head_learns_targets_derivable_from_the_image(multitask):
    from sklearn.metrics import roc_auc_score

    predictions = artifacts.load_npz(multitask / "predictions.npz")
    scores = json.loads((multitask / "metrics.json").read_text())["aux"]["val"]
    y, proba = predictions["val_aux_y"], predictions["val_aux_proba"]
    assert y.shape == proba.shape == (105, 2) and set(np.unique(y)) == {0, 1}
    for j, name in enumerate(TARGETS):
        p = y[:, j].mean()
        constant = 2 * p / (1 + p)      # F1 of the best constant predictor (always 1)
        f1 = scores["targets"][name]["f1"]
        margin = 0.15 if name == "bright" else 0.03
        auc = roc_auc_score(y[:, j], proba[:, j])
        assert f1 > constant + margin, (name, f1, constant, auc)
        assert auc > (0.9 if name == "bright" else 0.7), (name, auc)


def test_multitask_outputs_record_the_targets_and_keep_the_emotion_contract(multitask, sample_store, aux_csv):
    config = json.loads((multitask / "config.json").read_text())
    assert config["aux"]["targets"] == list(TARGETS) and config["aux"]["loss_weight"] == 10.0
    assert config["aux"]["path"] == str(aux_csv.resolve()) and config["aux"]["rows"] == 385
    assert config["args"]["aux_targets"] == str(aux_csv.resolve()) and config["args"]["aux_loss_weight"] == 10.0
    assert config["aux"]["positives"]["val"]["bright"] > 0

    predictions = artifacts.load_npz(multitask / "predictions.npz")
    assert set(predictions) == {"val_ids", "val_y", "val_proba", "val_face_found", "val_aux_proba", "val_aux_y"}
    scores = json.loads((multitask / "metrics.json").read_text())
    assert set(scores) == {"val", "val_face_found", "aux"}
    val = scores["aux"]["val"]
    assert set(val["targets"]) == set(TARGETS) and val["threshold"] == 0.5 and val["n"] == 105
    for key in ("macro", "weighted"):
        assert set(val[key]) == {"precision", "recall", "f1"}
    assert set(val["targets"]["bright"]) == {"precision", "recall", "f1", "support", "predicted"}
    # sklearn's numbers, recomputed
    again = aux_metrics(predictions["val_aux_y"], predictions["val_aux_proba"], TARGETS)
    assert again["macro"] == pytest.approx(val["macro"]) and again["weighted"] == pytest.approx(val["weighted"])
    assert again["targets"]["bright"]["f1"] == pytest.approx(val["targets"]["bright"]["f1"])

    # The history keeps the emotion-only columns, and adds the aux ones.
    header = (multitask / "history.csv").read_text().splitlines()[0].split(",")
    assert {"loss", "accuracy", "val_loss", "val_accuracy", "val_aux_loss", "val_aux_accuracy",
            "val_emotion_loss"} <= set(header)

    model, config = load_variant(multitask)
    assert set(model.output_names) == {"probabilities", "aux"}
    val_arrays = FeatureStore(sample_store).load("val")
    proba = predict_proba(model, config, val_arrays["images"], batch_size=32)
    assert proba.shape == (105, 7) and proba.dtype == np.float32
    np.testing.assert_allclose(proba, predictions["val_proba"], atol=1e-5)
    np.testing.assert_allclose(predict_aux_proba(model, config, val_arrays["images"]),
                               predictions["val_aux_proba"], atol=1e-5)
    again = keras.models.load_model(multitask / "model.keras", safe_mode=True, compile=False)
    out = again.predict({"image": val_arrays["images"][:4, ..., None]}, verbose=0)
    assert out["aux"].dtype == np.float32 and out["aux"].shape == (4, 2)


def test_emotion_only_variant_has_one_output_and_no_aux(tiny_variant):
    model, config = load_variant(tiny_variant)
    assert "aux" not in config and len(model.outputs) == 1
    with pytest.raises(ValueError, match="has no auxiliary targets"):
        predict_aux_proba(model, config, np.zeros((1, 48, 48), np.uint8), np.zeros((1, 2728), np.float32))


def test_resume_of_a_finished_multitask_run_writes_its_outputs(multitask, sample_store, aux_csv, tmp_path):
    out = tmp_path / "resumed"
    shutil.copytree(multitask, out)
    for name in ("config.json", "metrics.json", "predictions.npz"):
        (out / name).unlink()
    assert _cli("--block", "cnn5", "--features", sample_store, "--out", out, "--epochs", 12, "--no-augment",
                "--lr", 0.003, "--class-weight", "balanced", "--aux-targets", aux_csv,
                "--aux-loss-weight", 10, "--resume") == 0
    for key in ("val_proba", "val_aux_proba"):
        np.testing.assert_allclose(artifacts.load_npz(out / "predictions.npz")[key],
                                   artifacts.load_npz(multitask / "predictions.npz")[key], atol=1e-6)


def _bad(path, sample_store, kind):
    ids, _ = _store_rows(sample_store)
    good = [(i, 0, 1) for i in ids]
    if kind == "no_image_column":
        return _write_csv(path, ("file", "AU1", "AU2"), good)
    if kind == "not_binary":
        return _write_csv(path, ("image", "AU1", "AU2"), good[:10] + [(ids[10], 2, 0)] + good[11:])
    if kind == "unknown_ids":
        return _write_csv(path, ("image", "AU1", "AU2"), good + [("train/happy/nope.jpg", 0, 0)])
    if kind == "missing_rows":
        val = {str(i) for i in FeatureStore(sample_store).load("val")["ids"]}
        return _write_csv(path, ("image", "AU1", "AU2"), [r for r in good if r[0] not in val])
    if kind == "duplicate_names":
        return _write_csv(path, ("image", "AU1", "AU1"), good)
    if kind == "no_targets":
        return _write_csv(path, ("image",), [(i,) for i in ids])
    if kind == "repeated_image":
        return _write_csv(path, ("image", "AU1", "AU2"), good + good[:1])
    raise AssertionError(kind)


@pytest.mark.parametrize("kind, message", [
    ("no_image_column", "no 'image' column"),
    ("not_binary", "target 'AU1': values must be 0 or 1; received '2'"),
    ("unknown_ids", "1 image(s) are not in the feature store"),
    ("missing_rows", "105 val row(s) of the feature store have no targets"),
    ("duplicate_names", "target names must be unique; ['AU1']"),
    ("no_targets", "no target columns"),
    ("repeated_image", "listed more than once"),
])
def test_bad_aux_csv_is_one_line_naming_the_file(kind, message, sample_store, tmp_path, capsys):
    csv = _bad(tmp_path / "aus.csv", sample_store, kind)
    assert _cli("--block", "none", "--bovw", "--features", sample_store, "--out", tmp_path / "m",
                "--aux-targets", csv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {csv}: ") and message in err and err.count("\n") == 1, err
    assert not (tmp_path / "m").exists()


def test_unknown_ids_are_listed(sample_store, tmp_path):
    ids, _ = _store_rows(sample_store)
    csv = _write_csv(tmp_path / "aus.csv", ("image", "AU1"), [(i, 1) for i in ids] + [("x/a.jpg", 0), ("x/b.jpg", 1)])
    with pytest.raises(ValueError, match=r"2 image\(s\) are not in the feature store .* \(e.g. 'x/a.jpg', 'x/b.jpg'\)"):
        read_aux_targets(csv).check_ids(ids, sample_store)
    with pytest.raises(ValueError, match="aux targets file not found"):
        read_aux_targets(tmp_path / "missing.csv")


def test_aux_arguments_are_checked():
    with pytest.raises(ValueError, match=r"aux_loss_weight must be a number in \(0.0, inf\); received 0"):
        TrainConfig.from_arguments(block=None, bovw=True, aux_loss_weight=0)
    with pytest.raises(ValueError, match="aux_targets must be None or the path"):
        TrainConfig.from_arguments(block=None, bovw=True, aux_targets=3)


def test_refused_csvs_are_input_errors(tmp_path):
    """A bad targets file is the user's (InputError, one line, exit 2 from the CLIs), not a bug; a
    missing one is also a FileNotFoundError."""
    from ensemble_fer.errors import InputError

    with pytest.raises(FileNotFoundError, match="aux targets file not found") as info:
        read_aux_targets(tmp_path / "missing.csv")
    assert isinstance(info.value, InputError)
    bad = _write_csv(tmp_path / "aus.csv", ("image", "AU1"), [("a.jpg", 2)])
    with pytest.raises(InputError, match="values must be 0 or 1; received '2'"):
        read_aux_targets(bad)
