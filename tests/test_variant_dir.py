"""VariantDir: the variant folder's files, round trips and the one discovery rule (no Keras model)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from ensemble_fer.errors import InputError, MissingInputError
from ensemble_fer.models.variant_dir import VariantDir, find_variants

CONFIG = {"variant": "cnn5", "block": "cnn5", "bovw": False,
          "labels": {"name": "three", "classes": ["a", "b", "c"], "groups": [[0], [1], [2]]},
          "feature_store": {"path": "features/x", "config_hash": "c" * 16, "manifest_hash": "m" * 16,
                            "extractor": {"detector": "none"}},
          "training": {"complete": True}}


def _splits(n=4, n_classes=3, seed=0):
    rng = np.random.default_rng(seed)
    proba = rng.dirichlet(np.ones(n_classes), size=n)
    return {"ids": np.array([f"row{i}" for i in range(n)]), "y": rng.integers(0, n_classes, n).astype(np.int64),
            "proba": proba, "face_found": np.arange(n) % 2 == 0}


def _variant(folder, config=CONFIG, predictions=True):
    variant = VariantDir(folder)
    variant.path.mkdir(parents=True, exist_ok=True)
    if predictions:
        variant.write_predictions({"val": _splits(), "test": _splits(3, seed=1)})
    variant.write_config(config)
    return variant


def test_config_and_predictions_round_trip(tmp_path):
    variant = _variant(tmp_path / "v")
    assert variant.read_config() == CONFIG
    splits = variant.read_predictions()
    for split, expected in (("val", _splits()), ("test", _splits(3, seed=1))):
        assert set(splits[split]) == set(expected)
        for key, value in expected.items():
            np.testing.assert_array_equal(splits[split][key], value)
    assert VariantDir(tmp_path / "v" / "model.keras").path == tmp_path / "v"
    assert not list(tmp_path.glob("v/.*tmp*"))                     # atomic writes leave no temporaries


def test_aux_arrays_round_trip_and_unknown_keys_are_refused(tmp_path):
    variant = VariantDir(tmp_path)
    rows = {**_splits(), "aux_proba": np.full((4, 2), 0.5, np.float32), "aux_y": np.zeros((4, 2), np.int64)}
    variant.write_predictions({"val": rows})
    variant.write_config(CONFIG)
    np.testing.assert_array_equal(variant.read_predictions()["val"]["aux_proba"], rows["aux_proba"])
    with pytest.raises(ValueError, match="must hold"):
        variant.write_predictions({"val": {**_splits(), "extra": np.zeros(4)}})
    with pytest.raises(ValueError, match="split must be one of"):
        variant.write_predictions({"train": _splits()})


def test_config_checks(tmp_path):
    with pytest.raises(MissingInputError, match="not a trained variant \\(no config.json\\)"):
        VariantDir(tmp_path).read_config()
    (tmp_path / "config.json").write_text("[1]")
    with pytest.raises(InputError, match="not a variant's config"):
        VariantDir(tmp_path).read_config()
    (tmp_path / "config.json").write_text(json.dumps({k: v for k, v in CONFIG.items() if k != "labels"}))
    with pytest.raises(InputError, match=r"missing \['labels'\]"):
        VariantDir(tmp_path).read_config()


def test_bad_predictions_are_refused(tmp_path):
    variant = _variant(tmp_path, predictions=False)
    with pytest.raises(MissingInputError, match="predictions.npz: file not found"):
        variant.read_predictions()
    bad = _splits()
    bad["proba"][1] = np.nan
    variant.write_predictions({"val": bad})
    with pytest.raises(InputError, match="val_proba holds NaN or inf .* first row 1, id row1"):
        variant.read_predictions()
    variant.write_predictions({"test": _splits()})
    with pytest.raises(InputError, match="has no val_ predictions"):
        variant.read_predictions()
    said = []
    variant.write_predictions({"val": _splits(), "test": _splits(0)})
    assert set(variant.read_predictions(say=said.append)) == {"val"} and "test split is empty" in said[0]


def test_status_of_a_run_folder(tmp_path):
    variant = VariantDir(tmp_path / "run")
    assert variant.status() == "new"
    variant.write_state({"complete": False})
    assert variant.status() == "resumable"
    variant.write_state({"complete": True})
    assert variant.status() == "stale"
    variant.write_config({**CONFIG, "training": {"complete": False}})
    assert variant.status() == "incomplete"
    variant.write_config(CONFIG)
    assert variant.status() == "finished"


def test_one_discovery_rule_recursive_hidden_skipped(tmp_path):
    models = tmp_path / "models"
    _variant(models / "b")
    _variant(models / "search" / "a" / "run-000")
    _variant(models / ".hidden" / "x")
    _variant(models / "no-predictions", predictions=False)
    (models / "half" / ".run").mkdir(parents=True)
    (models / "notes").mkdir()
    (models / "linked").symlink_to(models / "b")
    said = []
    found = find_variants(models, say=said.append)
    # config.json, written last by training, makes a variant: a lost predictions.npz is refused by its reader
    assert [f.relative_to(models).as_posix() for f in found] == ["b", "no-predictions", "search/a/run-000"]
    assert any("half skipped: no config.json" in s for s in said)

    empty = tmp_path / "empty"
    (empty / "x").mkdir(parents=True)
    with pytest.raises(MissingInputError, match="holds no trained variant .*searched recursively"):
        find_variants(empty)
    with pytest.raises(MissingInputError, match="no such folder of trained variants"):
        find_variants(tmp_path / "missing")


def test_a_packaged_ensemble_below_the_root_is_not_searched(tmp_path):
    # models/release holds its own ensemble.json: a default fit_ensemble over models/ must not take
    # the release's members as candidates (they clash in name and feature store with the user's).
    models = tmp_path / "models"
    _variant(models / "mine")
    _variant(models / "release" / "mine")
    (models / "release" / "ensemble.json").write_text("{}")
    said = []
    assert [f.relative_to(models).as_posix() for f in find_variants(models, say=said.append)] == ["mine"]
    assert any("release skipped: it holds its own ensemble.json" in s for s in said)
    # named as the root itself, the packaged folder is searched as usual
    assert [f.name for f in find_variants(models / "release")] == ["mine"]
