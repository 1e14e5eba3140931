"""The extraction stage end to end: CLI, store contents, resume, refusals, bad input."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from conftest import SAMPLE, sample_crops, write_fer_csv
from ensemble_fer import artifacts
from ensemble_fer.features import bovw, datasets, feature_store, hog
from ensemble_fer.features.feature_store import FeatureStore, FeatureStoreError
from pipelines import extract_features


def test_cli_on_sample_writes_every_array_and_manifest(sample_store):
    store = FeatureStore(sample_store)
    assert store.splits == ["train", "val"]
    train = store.load("train")
    n = 280
    assert train["images"].shape == (n, 48, 48) and train["images"].dtype == np.uint8
    assert train["bovw"].shape == (n, bovw.BOVW_SIZE) and train["bovw"].dtype == np.float32
    np.testing.assert_array_equal(train["bovw"][:, :136], train["landmarks"].reshape(n, -1))
    np.testing.assert_allclose(train["bovw"][:, 136:], hog.sliding_hog(train["images"]), atol=1e-6)
    assert (train["n_faces"] == -1).all()  # --detector none
    # the ids point at the source files, so every row can be traced back
    assert all((SAMPLE / i).is_file() for i in train["ids"])
    m = store.manifest
    assert m["splits"]["train"]["per_class"]["disgust"] == 40
    assert m["splits"]["val"]["n"] == 105 and m["splits"]["val"]["kept"] == 105
    assert m["config"]["detector"] == "none" and "numpy" in m["versions"]
    dropped = m["splits"]["train"]["dropped"]
    assert len(dropped) == n - m["splits"]["train"]["kept"]
    assert all(d["reason"] == "blank" for d in dropped)


def test_landmarks_follow_the_face_not_a_fixed_template(sample_store):
    train = FeatureStore(sample_store).load("train")
    spread = train["landmarks"].std(axis=0).mean()
    assert spread > 0.5  # the predictor moves with each face
    # inside the frame, give or take the jaw of a face cut by it (on the full training split
    # 0.02% of the points fall outside [-5, 53], none outside [-16, 60])
    outside = (train["landmarks"] < -5) | (train["landmarks"] > 53)
    assert outside.mean() < 0.002 and (train["landmarks"] > -16).all() and (train["landmarks"] < 60).all()


def test_hog_detector_records_faces_and_boxes(tmp_path):
    out = tmp_path / "store"
    assert extract_features.main(["--data", str(SAMPLE), "--out", str(out), "--limit", "20", "--quiet",
                                  "--n-jobs", "1"]) == 0
    arrays = FeatureStore(out).load("val")
    assert len(arrays["labels"]) == 20 and (arrays["n_faces"] >= 0).all()
    found = arrays["n_faces"] == 1
    assert set(arrays["reason"][~found]) <= {"no_face", "several_faces", "blank"}
    assert (arrays["boxes"][:, 2] > arrays["boxes"][:, 0]).all()
    assert arrays["kept"].all()  # val is flagged, never dropped


def _extract(out, **kwargs):
    data = datasets.open_dataset(SAMPLE)
    return feature_store.extract(data, out, bovw.ExtractorConfig(detector="none"), n_jobs=1, chunk_size=32,
                                 limit=60, progress=False, **kwargs)


def test_interrupted_extraction_resumes_to_the_same_arrays(tmp_path, monkeypatch):
    _extract(tmp_path / "whole")
    real = bovw.analyse_crops
    calls = {"n": 0}

    def interrupted(images, config, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt  # the user pressing Ctrl-C during the third chunk
        return real(images, config, **kwargs)

    monkeypatch.setattr(bovw, "analyse_crops", interrupted)
    with pytest.raises(KeyboardInterrupt):
        _extract(tmp_path / "resumed")
    partial = tmp_path / "resumed" / ".partial"
    assert len(list(partial.glob("*.npz"))) == 2 and not (tmp_path / "resumed" / "manifest.json").exists()
    assert not list(partial.glob("*.tmp"))  # nothing half-written
    monkeypatch.setattr(bovw, "analyse_crops", real)
    manifest = _extract(tmp_path / "resumed")
    assert manifest["timing"]["chunks_resumed"] == 2
    for split in ("train", "val"):
        a, b = FeatureStore(tmp_path / "whole").load(split), FeatureStore(tmp_path / "resumed").load(split)
        for key in a:
            np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def test_resume_with_other_settings_is_refused(tmp_path, monkeypatch):
    real = bovw.analyse_crops
    monkeypatch.setattr(bovw, "analyse_crops", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt))
    with pytest.raises(KeyboardInterrupt):
        _extract(tmp_path / "s")
    monkeypatch.setattr(bovw, "analyse_crops", real)
    data = datasets.open_dataset(SAMPLE)
    with pytest.raises(FeatureStoreError, match="interrupted extraction with other data or settings"):
        feature_store.extract(data, tmp_path / "s", bovw.ExtractorConfig(detector="hog"), n_jobs=1, limit=60,
                              progress=False)


def test_finished_store_is_kept_unless_forced(tmp_path):
    _extract(tmp_path / "s")
    assert _extract(tmp_path / "s")["up_to_date"]
    with pytest.raises(FeatureStoreError, match="pass --force"):
        _extract(tmp_path / "s", filter="paper")
    assert _extract(tmp_path / "s", filter="paper", force=True)["filter"] == "paper"


def test_class_folders_without_val_get_a_stratified_holdout(tmp_path):
    for emotion in ("happy", "sad"):
        shutil.copytree(SAMPLE / "train" / emotion, tmp_path / "data" / emotion)
    data = datasets.open_dataset(tmp_path / "data")
    manifest = feature_store.extract(data, tmp_path / "s", bovw.ExtractorConfig(detector="none"), n_jobs=1,
                                     progress=False)
    assert manifest["splits"]["val"]["per_class"] == {"happy": 4, "sad": 4}
    assert manifest["splits"]["train"]["n"] == 72


def test_cli_bad_input_is_one_line_and_exit_2(tmp_path, capsys):
    crops, _ = sample_crops(2)
    good = write_fer_csv(tmp_path / "ok.csv", [(0, crops[0], "Training"), (1, crops[1], "PublicTest")])
    bad = tmp_path / "bad.csv"
    bad.write_text(good.read_text().replace("PublicTest", "").replace(",1,", ",1,") + "3,1 2 3,Training\n")
    assert extract_features.main(["--data", str(bad), "--out", str(tmp_path / "o"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("error: ") and "bad.csv:" in err
    assert not (tmp_path / "o").exists()  # checked before any work: nothing written

    folder = tmp_path / "folder" / "happy"
    folder.mkdir(parents=True)
    (folder / "a.jpg").write_bytes(b"\x89PNG broken")
    for i in range(12):
        shutil.copy(next(SAMPLE.glob("train/happy/*.jpg")), folder / f"ok{i}.jpg")
    assert extract_features.main(["--data", str(folder.parent), "--out", str(tmp_path / "o2"), "--quiet"]) == 2
    assert "a.jpg: not a readable image" in capsys.readouterr().err

    (folder / "a.jpg").unlink()
    for i in range(11):
        (folder / f"ok{i}.jpg").unlink()
    assert extract_features.main(["--data", str(folder.parent), "--out", str(tmp_path / "o3"), "--quiet"]) == 2
    assert "too few to hold out" in capsys.readouterr().err


def test_csv_dataset_extracts(tmp_path):
    crops, _ = sample_crops(4)
    csv = write_fer_csv(tmp_path / "fer.csv", [(c, img, u) for c, img, u in
                                               zip((0, 3, 3, 6), crops, ("Training", "Training", "PublicTest",
                                                                        "PrivateTest"))])
    assert extract_features.main(["--data", str(csv), "--out", str(tmp_path / "s"), "--detector", "none",
                                  "--quiet", "--n-jobs", "1"]) == 0
    store = FeatureStore(tmp_path / "s")
    assert store.splits == ["train", "val", "test"]
    np.testing.assert_array_equal(store.load("test")["images"][0], crops[3])
    assert list(store.load("train")["ids"]) == ["row0", "row1"]


def test_store_reader_checks_dimensions(tmp_path, sample_store):
    shutil.copytree(sample_store, tmp_path / "s")
    arrays = artifacts.load_npz(tmp_path / "s" / "val.npz")
    arrays["bovw"] = arrays["bovw"][:, :100]
    artifacts.save_npz(tmp_path / "s" / "val.npz", **arrays)
    with pytest.raises(FeatureStoreError, match="'bovw' has shape .*expected"):
        FeatureStore(tmp_path / "s").load("val")
    with pytest.raises(FeatureStoreError, match="not a feature store"):
        FeatureStore(tmp_path / "nowhere")


def test_bovw_extractor_is_a_sklearn_transformer():
    from sklearn.exceptions import NotFittedError

    crops, _ = sample_crops(4)
    extractor = bovw.BOVWExtractor(detector="none")
    with pytest.raises(NotFittedError):
        extractor.transform(crops)
    features = extractor.fit(crops).transform(crops)
    assert features.shape == (4, 2728) and extractor.n_features_out_ == 2728
    names = extractor.get_feature_names_out()
    assert len(names) == 2728 and names[0] == "landmark0_x" and names[136].startswith("hog_y0_x0")
    with pytest.raises(ValueError, match="48x48 crops"):
        extractor.transform(np.zeros((2, 64, 64), np.uint8))
    with pytest.raises(ValueError, match="detector must be one of"):
        bovw.BOVWExtractor(detector="haar").fit(crops)


def test_no_crop_is_altered_and_sharpness_is_recorded(sample_store):
    """Every split's crops are stored exactly as decoded (no input is altered to match the
    training data); the manifest records each split's median Laplacian variance."""
    store = FeatureStore(sample_store)
    report = store.manifest["sharpness"]
    dataset = datasets.open_dataset(SAMPLE)
    for split in ("train", "val"):
        raw = np.stack([datasets.load_image(r) for r in dataset.splits[split]])
        np.testing.assert_array_equal(store.load(split)["images"], raw)
        assert report["median_laplacian_variance"][split] > 500   # the sample's crops are sharp
    assert report["warnings"] == []
    assert "blur_sigma" not in store.manifest["config"]


def test_a_held_out_split_much_softer_than_training_is_warned_about():
    import cv2

    from ensemble_fer.features import sharpness

    crops, _ = sample_crops(24)
    soft = np.stack([cv2.GaussianBlur(c, (0, 0), 3.0) for c in crops])
    report = sharpness.compare_splits({"train": crops, "val": soft})
    assert len(report["warnings"]) == 1 and "val crops are" in report["warnings"][0] and "softer" in report["warnings"][0]
    assert sharpness.compare_splits({"train": crops, "val": crops})["warnings"] == []
    assert "sharper" in sharpness.compare_splits({"train": soft, "val": crops})["warnings"][0]


@pytest.mark.parametrize("blur_sigma", [3.0, None])
def test_stores_made_with_the_blur_workaround_are_refused(sample_store, tmp_path, blur_sigma):
    import json
    import shutil

    old = tmp_path / "old"
    shutil.copytree(sample_store, old)
    manifest = json.loads((old / "manifest.json").read_text())
    manifest["config"]["blur_sigma"] = blur_sigma
    (old / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="blur_sigma .*re-extract the features"):
        FeatureStore(old)
    manifest["config"]["blur_sigma"] = 0.0     # nothing was blurred: still valid
    (old / "manifest.json").write_text(json.dumps(manifest))
    assert FeatureStore(old).config == FeatureStore(sample_store).config


def test_models_made_with_the_blur_workaround_are_refused(tiny_variant, tmp_path):
    """A variant whose extractor blurred held-out crops (release 0.2 and older) is refused at load
    with a message saying to re-extract and retrain; the same folder with blur_sigma 0 loads."""
    import json
    import shutil

    from ensemble_fer.inference.loading import load_predictor
    old = tmp_path / "old"
    shutil.copytree(tiny_variant, old, ignore=shutil.ignore_patterns(".run"))
    config = json.loads((old / "config.json").read_text())
    config["feature_store"]["extractor"]["blur_sigma"] = 3.0
    (old / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="blur_sigma 3.0 .*retrain the model"):
        load_predictor(old)
    config["feature_store"]["extractor"]["blur_sigma"] = 0.0
    (old / "config.json").write_text(json.dumps(config))
    assert load_predictor(old).extractor_config == load_predictor(tiny_variant).extractor_config
