"""pipelines.fit_ensemble on real trained variants (conftest ``variant_pair``), and every refusal.

Refusal cases change copies of the members' ``config.json`` / ``predictions.npz``: those two
files are all that fit_ensemble reads (``model.keras`` is only hashed, so it is linked).
Ensembles are written into a folder holding (links to) the members: an ensemble may only name
members inside its own folder.
"""

import json
import os
import shutil

import numpy as np
import pytest

from ensemble_fer import artifacts
from ensemble_fer.inference.loading import load_predictor
from pipelines import fit_ensemble

MEMBERS = ("bovw", "cnn5+bovw")


def _copy_members(models, tmp_path):
    """config.json + predictions.npz of each member, in a fresh models folder (model.keras,
    which fit_ensemble only hashes, is a hard link)."""
    out = tmp_path / "models"
    for name in MEMBERS:
        (out / name).mkdir(parents=True)
        for file in ("config.json", "predictions.npz"):
            shutil.copy(models / name / file, out / name / file)
        os.link(models / name / "model.keras", out / name / "model.keras")
    return out


def _linked_members(models, folder):
    """A folder holding symbolic links to the trained members (which tests must not write into)."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in MEMBERS:
        (folder / name).symlink_to(models / name, target_is_directory=True)
    return folder


def _edit_config(folder, change):
    config = json.loads((folder / "config.json").read_text())
    change(config)
    (folder / "config.json").write_text(json.dumps(config))


def _edit_predictions(folder, change):
    arrays = artifacts.load_npz(folder / "predictions.npz")
    change(arrays)
    artifacts.save_npz(folder / "predictions.npz", **arrays)


def _run(args, capsys):
    code = fit_ensemble.main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_fits_and_reports_on_trained_variants(variant_pair, tmp_path, capsys):
    models = _linked_members(variant_pair, tmp_path / "ens")
    out = models / "ensemble.json"
    code, stdout, stderr = _run(["--models", models], capsys)
    assert code == 0, stderr
    assert "optimistic" in stdout
    assert f"error correlation on val (1: wrong on the same rows): {MEMBERS[0]}/{MEMBERS[1]} " in stdout

    data = json.loads(out.read_text())
    assert [m["name"] for m in data["members"]] == list(MEMBERS)
    for member in data["members"]:
        assert member["path"] == member["name"]             # relative to the json, inside its folder
        assert (out.parent / member["path"]).resolve() == (variant_pair / member["name"]).resolve()
        # both files that decide a member's predictions are hashed in full
        for key, file in (("config_sha256", "config.json"), ("model_sha256", "model.keras")):
            assert member[key] == artifacts.sha256_file(variant_pair / member["name"] / file)
    weights = np.array([m["weight"] for m in data["members"]])
    assert weights.sum() == pytest.approx(1.0) and (weights >= 0).all()
    assert data["ensemble"]["weights"] == pytest.approx(weights.tolist())
    for key in ("objective", "seed", "classes", "labels", "extractor", "feature_store", "scores"):
        assert key in data
    assert data["feature_store"]["config_hash"] and data["feature_store"]["manifest_hash"]

    # The report's ensemble row is recomputed here from the members' saved probabilities.
    probas = np.stack([artifacts.load_npz(variant_pair / n / "predictions.npz")["val_proba"] for n in MEMBERS])
    y = artifacts.load_npz(variant_pair / MEMBERS[0] / "predictions.npz")["val_y"]
    accuracy = float((np.tensordot(weights, probas, axes=1).argmax(1) == y).mean())
    report = json.loads((out.parent / "ensemble_report.json").read_text())
    val = report["results"]["val"]
    assert val["ensemble"]["accuracy"] == pytest.approx(accuracy)
    assert val["equal-weight"]["accuracy"] == pytest.approx(float((probas.mean(0).argmax(1) == y).mean()))
    member_acc = {n: float((probas[i].argmax(1) == y).mean()) for i, n in enumerate(MEMBERS)}
    assert {n: val[n]["accuracy"] for n in MEMBERS} == pytest.approx(member_acc)
    best = report["best_single"]
    assert member_acc[best] == max(member_acc.values())
    # differential evolution starts from equal weights and each member alone: on the fit data
    # the learnt ensemble is never worse than either
    assert val["ensemble"]["accuracy"] >= max(member_acc[best], val["equal-weight"]["accuracy"])
    assert val["ensemble"]["per_class"] and len(val["ensemble"]["confusion_matrix"]) == len(data["classes"])
    cv = report["cross_validation"]
    assert cv["n_splits"] == 5 and len(cv["scores"]) == 5 and 0 <= cv["mean"] <= 1
    assert data["scores"]["val_cross_validated_accuracy"]["mean"] == pytest.approx(cv["mean"])
    # one row per pair of members, recomputed here from the saved probabilities
    (pair,) = report["shared_errors"]
    wrong = probas.argmax(2) != y
    assert pair["members"] == list(MEMBERS)
    assert pair["both_wrong"] == pytest.approx(float((wrong[0] & wrong[1]).mean()))
    assert pair["error_correlation"] == pytest.approx(float(np.corrcoef(wrong[0], wrong[1])[0, 1]))
    # the sample store was extracted with --detector none: no face-found subset, said so
    assert report["face_found"] is None and "detector none" in report["face_found_note"]

    markdown = (out.parent / "ensemble_report.md").read_text()
    for text in ("| equal-weight |", f"| best single ({best}) |", "| ensemble |", "optimistic",
                 "Cross-validated", "ensemble_confusion_matrix.png", "Per class: ensemble", "no test split",
                 "## Shared errors (val)", f"| {MEMBERS[0]} / {MEMBERS[1]} |"):
        assert text in markdown
    assert (out.parent / "ensemble_confusion_matrix.png").stat().st_size > 1000

    # the file loads as a predictor with the same members and weights
    predictor = load_predictor(out)
    assert predictor.members == MEMBERS and predictor.weights == pytest.approx(weights)


def test_same_seed_same_weights_and_log_loss_objective(variant_pair, tmp_path, capsys):
    models = _linked_members(variant_pair, tmp_path)
    first, second, log_loss = (tmp_path / f"{n}.json" for n in ("a", "b", "c"))
    for out, extra in ((first, []), (second, []), (log_loss, ["--objective", "log-loss"])):
        code, _, stderr = _run(["--models", models, "--out", out, *extra], capsys)
        assert code == 0, stderr
    # each ensemble has its own report: none overwrote another's
    for name in ("a", "b", "c"):
        assert json.loads((tmp_path / f"{name}_report.json").read_text())["objective"] == \
            ("log-loss" if name == "c" else "accuracy")
    weights = lambda path: json.loads(path.read_text())["ensemble"]["weights"]
    assert weights(first) == weights(second)
    data = json.loads(log_loss.read_text())
    assert data["objective"] == "log-loss"
    # the log-loss objective's weights minimise the val log-loss over the members alone and equal weights
    probas = np.stack([artifacts.load_npz(variant_pair / n / "predictions.npz")["val_proba"] for n in MEMBERS])
    y = artifacts.load_npz(variant_pair / MEMBERS[0] / "predictions.npz")["val_y"]
    loss = lambda w: -np.log(np.clip(np.tensordot(w, probas, axes=1)[np.arange(len(y)), y], 1e-15, 1)).mean()
    learnt = loss(np.array(data["ensemble"]["weights"]))
    for w in ([1.0, 0.0], [0.0, 1.0], [0.5, 0.5]):
        assert learnt <= loss(np.array(w)) + 1e-9


def test_face_found_subset_when_the_store_flags_faces(variant_pair, tmp_path, capsys):
    models = _copy_members(variant_pair, tmp_path)
    flags = np.arange(105) % 3 != 0   # a known subset of 70 rows
    for name in MEMBERS:
        _edit_config(models / name, lambda c: c["feature_store"]["extractor"].update(detector="hog"))
        _edit_predictions(models / name, lambda a: a.update(val_face_found=flags))
    out = tmp_path / "ensemble.json"
    code, _, stderr = _run(["--models", models, "--out", out], capsys)
    assert code == 0, stderr
    report = json.loads((tmp_path / "ensemble_report.json").read_text())
    face = report["face_found"]["val"]
    assert face["n"] == 70 and face["of"] == 105
    weights = np.array(list(report["weights"].values()))
    probas = np.stack([artifacts.load_npz(models / n / "predictions.npz")["val_proba"] for n in MEMBERS])
    y = artifacts.load_npz(models / MEMBERS[0] / "predictions.npz")["val_y"]
    expected = float((np.tensordot(weights, probas[:, flags], axes=1).argmax(1) == y[flags]).mean())
    assert face["rows"]["ensemble"]["accuracy"] == pytest.approx(expected)
    assert "Face-found subset" in (tmp_path / "ensemble_report.md").read_text()


def test_single_member_is_said_plainly(variant_pair, tmp_path, capsys):
    out = tmp_path / "ensemble.json"
    models = _linked_members(variant_pair, tmp_path)
    code, stdout, stderr = _run(["--models", models, "--variants", "bovw", "--out", out], capsys)
    assert code == 0, stderr
    assert "only one member" in stdout
    data = json.loads(out.read_text())
    assert data["ensemble"]["weights"] == [1.0]
    report = json.loads((tmp_path / "ensemble_report.json").read_text())
    assert report["single_member"] and report["cross_validation"] is None and report["shared_errors"] is None
    saved = artifacts.load_npz(variant_pair / "bovw" / "predictions.npz")
    assert report["results"]["val"]["ensemble"]["accuracy"] == pytest.approx(
        float((saved["val_proba"].argmax(1) == saved["val_y"]).mean()))
    assert "Single member: the ensemble is bovw itself" in (tmp_path / "ensemble_report.md").read_text()


def _refused(models, tmp_path, capsys, *expected):
    out = tmp_path / "refused.json"
    code, _, stderr = _run(["--models", models, "--out", out], capsys)
    assert code == 2
    assert stderr.startswith("error: ") and stderr.count("\n") == 1, stderr
    for text in expected:
        assert text in stderr, stderr
    assert not out.exists()   # nothing written
    return stderr


@pytest.mark.parametrize("key", ["config_hash", "manifest_hash"])
def test_refuses_members_of_another_feature_store(variant_pair, tmp_path, capsys, key):
    models = _copy_members(variant_pair, tmp_path)
    _edit_config(models / "cnn5+bovw", lambda c: c["feature_store"].update({key: "0123456789abcdef"}))
    _refused(models, tmp_path, capsys, str(models / "cnn5+bovw"), key, "0123456789abcdef")


def test_refuses_another_label_set(variant_pair, tmp_path, capsys):
    models = _copy_members(variant_pair, tmp_path)
    other = {"name": "other7", "classes": ["a", "b", "c", "d", "e", "f", "g"],
             "groups": [[0], [1], [2], [3], [4], [5], [6]]}
    _edit_config(models / "cnn5+bovw", lambda c: c.update(labels=other))
    _refused(models, tmp_path, capsys, str(models / "cnn5+bovw"), "label set", "other7")


def test_refuses_ids_that_do_not_line_up(variant_pair, tmp_path, capsys):
    models = _copy_members(variant_pair, tmp_path)

    def rename_one(arrays):
        ids = arrays["val_ids"].astype(object)
        ids[4] = "test/happy/not-in-the-other.jpg"
        arrays["val_ids"] = ids.astype(str)

    _edit_predictions(models / "cnn5+bovw", rename_one)
    _refused(models, tmp_path, capsys, "cnn5+bovw", "val ids do not line up", "not-in-the-other.jpg")

    models = _copy_members(variant_pair, tmp_path / "order")
    order = np.random.default_rng(0).permutation(105)
    _edit_predictions(models / "cnn5+bovw", lambda a: a.update({k: a[k][order] for k in
                                                                ("val_ids", "val_y", "val_proba", "val_face_found")}))
    _refused(models, tmp_path, capsys, "another order")


def test_refuses_nan_probabilities(variant_pair, tmp_path, capsys):
    models = _copy_members(variant_pair, tmp_path)

    def poison(arrays):
        arrays["val_proba"] = arrays["val_proba"].copy()
        arrays["val_proba"][7, 2] = np.nan

    _edit_predictions(models / "bovw", poison)
    _refused(models, tmp_path, capsys, str(models / "bovw" / "predictions.npz"), "NaN", "row 7")


def test_refuses_rows_that_are_not_probabilities(variant_pair, tmp_path, capsys):
    models = _copy_members(variant_pair, tmp_path)
    _edit_predictions(models / "bovw", lambda a: a.update(val_proba=a["val_proba"] * 3))   # logits-like
    _refused(models, tmp_path, capsys, "bovw", "not probabilities")


def test_refuses_a_missing_predictions_file(variant_pair, tmp_path, capsys):
    models = _copy_members(variant_pair, tmp_path)
    (models / "bovw" / "predictions.npz").unlink()
    _refused(models, tmp_path, capsys, str(models / "bovw" / "predictions.npz"), "file not found")


def test_refuses_an_empty_val_split(variant_pair, tmp_path, capsys):
    models = _copy_members(variant_pair, tmp_path)
    _edit_predictions(models / "bovw", lambda a: a.update({k: a[k][:0] for k in
                                                           ("val_ids", "val_y", "val_proba", "val_face_found")}))
    _refused(models, tmp_path, capsys, "bovw", "val split is empty")


def test_refuses_a_test_split_only_one_member_has(variant_pair, tmp_path, capsys):
    models = _copy_members(variant_pair, tmp_path)
    _edit_predictions(models / "bovw", lambda a: a.update({f"test_{k}": a[f"val_{k}"] for k in
                                                           ("ids", "y", "proba", "face_found")}))
    _refused(models, tmp_path, capsys, "has no test predictions")


def test_reports_test_split_when_members_have_it(variant_pair, tmp_path, capsys):
    models = _copy_members(variant_pair, tmp_path)
    for name in MEMBERS:   # the val rows stand in for a test split: the weights must not see them
        _edit_predictions(models / name, lambda a: a.update({f"test_{k}": a[f"val_{k}"][:50] for k in
                                                             ("ids", "y", "proba", "face_found")}))
    out = tmp_path / "ensemble.json"
    code, stdout, stderr = _run(["--models", models, "--out", out], capsys)
    assert code == 0, stderr
    report = json.loads((tmp_path / "ensemble_report.json").read_text())
    assert report["splits"] == ["val", "test"] and report["confusion_matrix_split"] == "test"
    assert report["results"]["test"]["ensemble"]["n"] == 50
    assert "test accuracy" in (tmp_path / "ensemble_report.md").read_text()


def test_refuses_empty_models_folder_and_unknown_variant(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    code, _, stderr = _run(["--models", tmp_path / "empty"], capsys)
    assert code == 2 and "holds no trained variant" in stderr
    code, _, stderr = _run(["--models", tmp_path / "empty", "--variants", "nope"], capsys)
    assert code == 2 and "no such variant folder" in stderr



def test_default_search_leaves_the_shipped_models_out(variant_pair, tmp_path, capsys, monkeypatch):
    """A clone's models/ holds the shipped release (its own ensemble.json) and the fast model (an
    export, no predictions.npz): the README's stage 3 with no argument fits the trained variants
    beside them, and names an export plainly when asked for it."""
    from pathlib import Path

    repo = Path(fit_ensemble.__file__).resolve().parent.parent
    models = _copy_members(variant_pair, tmp_path)
    for name in ("release", "fast"):
        (models / name).symlink_to(repo / "models" / name, target_is_directory=True)
    monkeypatch.chdir(tmp_path)
    code, stdout, stderr = _run([], capsys)
    assert code == 0, stderr
    assert f"{Path('models') / 'fast'} skipped: an exported model" in stdout
    members = json.loads((models / "ensemble.json").read_text())["members"]
    assert sorted(Path(m["path"]).name for m in members) == sorted(MEMBERS)
    code, _, stderr = _run(["--variants", "fast", "bovw", "--out", tmp_path / "models" / "other.json"], capsys)
    assert code == 2 and "an exported model (export.json), not a training output" in stderr
    assert "retrain" not in stderr
    # a fresh clone: only the shipped models, so the advice is to train one
    for name in MEMBERS:
        shutil.rmtree(models / name)
    code, _, stderr = _run(["--force"], capsys)
    assert code == 2 and "holds no trained variant" in stderr and "train_variant" in stderr


def test_refuses_to_overwrite_without_force_and_replaces_only_when_complete(variant_pair, tmp_path, capsys):
    models = _copy_members(variant_pair, tmp_path)
    out = models / "ensemble.json"
    out.write_text("the shipped ensemble\n")
    # refused before any work: the models folder is not even read (an empty one would say so)
    (tmp_path / "empty").mkdir()
    code, _, stderr = _run(["--models", tmp_path / "empty", "--out", out], capsys)
    assert code == 2 and stderr == f"error: {out}: exists; pass --force to replace the ensemble and its report, " \
                                   f"or choose another --out\n"
    assert out.read_text() == "the shipped ensemble\n"
    assert "--force" in fit_ensemble.build_parser().format_help()

    # --force with a member that fails the checks: nothing is replaced
    _edit_predictions(models / "bovw", lambda a: a.update(val_proba=a["val_proba"] * 3))
    code, _, stderr = _run(["--models", models, "--out", out, "--force"], capsys)
    assert code == 2 and "not probabilities" in stderr
    assert out.read_text() == "the shipped ensemble\n"
    assert sorted(p.name for p in models.iterdir()) == ["bovw", "cnn5+bovw", "ensemble.json"]   # no temporaries

    shutil.copy(variant_pair / "bovw" / "predictions.npz", models / "bovw" / "predictions.npz")
    code, _, stderr = _run(["--models", models, "--out", out, "--force"], capsys)
    assert code == 0, stderr
    assert json.loads(out.read_text())["members"][0]["name"] == "bovw"
    assert sorted(p.name for p in models.iterdir()) == ["bovw", "cnn5+bovw", "ensemble.json",
                                                        "ensemble_confusion_matrix.png", "ensemble_report.json",
                                                        "ensemble_report.md"]
    # a report left without its ensemble is refused as well
    out.unlink()
    code, _, stderr = _run(["--models", models, "--out", out], capsys)
    assert code == 2 and "ensemble_report" in stderr and "--force" in stderr


def test_refuses_members_outside_the_ensembles_folder(variant_pair, tmp_path, capsys):
    out = tmp_path / "elsewhere" / "ensemble.json"
    code, _, stderr = _run(["--models", variant_pair, "--out", out], capsys)
    assert code == 2 and stderr.count("\n") == 1
    assert f"{variant_pair / 'bovw'}: not inside {out.parent}" in stderr
    assert not out.parent.exists() or not any(out.parent.iterdir())


def test_refuses_a_member_without_its_model(variant_pair, tmp_path, capsys):
    models = _copy_members(variant_pair, tmp_path)
    (models / "cnn5+bovw" / "model.keras").unlink()
    _refused(models, tmp_path, capsys, str(models / "cnn5+bovw" / "model.keras"), "file not found")


def test_tta_fits_on_the_members_views_and_the_ensemble_predicts_with_them(variant_pair, sample_store, tmp_path,
                                                                            capsys):
    from ensemble_fer.features.feature_store import FeatureStore

    models = _linked_members(variant_pair, tmp_path / "ens")
    out = models / "ensemble.json"
    code, stdout, stderr = _run(["--models", models, "--tta", "2"], capsys)
    assert code == 0, stderr
    assert "with 2 test-time views" in stdout
    data = json.loads(out.read_text())
    report = json.loads((models / "ensemble_report.json").read_text())
    assert data["tta"] == 2 and report["tta"] == 2
    assert "averaged over 2 test-time views" in (models / "ensemble_report.md").read_text()

    # the report's figures are those of the members' two-view predictions of the store's rows
    val = FeatureStore(sample_store).load("val")
    saved = artifacts.load_npz(variant_pair / MEMBERS[0] / "predictions.npz")
    assert np.array_equal(val["ids"], saved["val_ids"])
    views = np.stack([load_predictor(variant_pair / name).member_probas(
        val["images"], val["landmarks"], None, tta=2)[0] for name in MEMBERS])
    weights = np.array([m["weight"] for m in data["members"]])
    accuracy = float((np.tensordot(weights, views, axes=1).argmax(1) == saved["val_y"]).mean())
    assert report["results"]["val"]["ensemble"]["accuracy"] == pytest.approx(accuracy)

    # loaded, the ensemble averages the same two views unless told otherwise
    predictor = load_predictor(out)
    assert predictor.default_tta == 2
    np.testing.assert_allclose(predictor.member_probas(val["images"], val["landmarks"], None), views, atol=1e-6)
    without = predictor.member_probas(val["images"], val["landmarks"], val["bovw"], tta=0)
    assert not np.allclose(without, views)

    data["tta"] = 11
    out.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=r"ensemble.json: tta must be an integer from 0 \(none\) to 10 views; "
                                         r"got 11$"):
        load_predictor(out)


def test_refuses_bad_tta_arguments(variant_pair, tmp_path, capsys):
    models = _linked_members(variant_pair, tmp_path / "ens")
    code, _, stderr = _run(["--models", models, "--features", "x"], capsys)
    assert code == 2 and stderr.startswith("error: --features is read only with --tta N") and \
        stderr.count("\n") == 1, stderr
    with pytest.raises(SystemExit) as exit_:        # out of range: refused as the command line is parsed
        _run(["--models", models, "--tta", "11"], capsys)
    assert exit_.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1].endswith("error: argument --tta: must be an int in [0, 10]; got 11 (see --help)")
    assert not (models / "ensemble.json").exists()


def test_tta_refuses_a_feature_store_the_members_were_not_trained_on(variant_pair, tmp_path, capsys):
    from pipelines import extract_features
    from conftest import SAMPLE

    other = tmp_path / "other_store"     # the same extractor on fewer images: another manifest
    assert extract_features.main(["--data", str(SAMPLE), "--out", str(other), "--detector", "none", "--quiet",
                                  "--n-jobs", "1", "--limit", "20"]) == 0
    models = _linked_members(variant_pair, tmp_path / "ens")
    code, _, stderr = _run(["--models", models, "--tta", "2", "--features", other], capsys)
    assert code == 2 and f"error: {other}: not the feature store " in stderr, stderr
    assert "(manifest_hash" in stderr and "its val split lacks" in stderr, stderr
    assert not (models / "ensemble.json").exists()


def test_a_store_extracted_again_from_the_same_images_is_the_same_store(sample_store, tmp_path):
    from pipelines import extract_features
    from conftest import SAMPLE
    from ensemble_fer.features.feature_store import FeatureStore

    copy = tmp_path / "elsewhere" / SAMPLE.name        # a copy: other folder, other modification times
    shutil.copytree(SAMPLE, copy, copy_function=shutil.copy)
    again = tmp_path / "again"
    assert extract_features.main(["--data", str(copy), "--out", str(again), "--detector", "none",
                                  "--quiet", "--n-jobs", "1"]) == 0
    first, second = FeatureStore(sample_store), FeatureStore(again)
    assert first.manifest["dataset"]["fingerprint"] != second.manifest["dataset"]["fingerprint"]
    # the files differ (seconds taken, the dataset's folder), the store's identity does not
    assert first.manifest_file_hash != second.manifest_file_hash
    assert first.manifest_hash == second.manifest_hash
    assert second.is_store_of(first.describe())


def test_tta_checks_members_that_record_another_manifest_by_running_them(variant_pair, sample_store, tmp_path,
                                                                         capsys):
    # a member trained before store identities were by content records the manifest file's hash
    models = _copy_members(variant_pair, tmp_path)
    _edit_config(models / "cnn5+bovw", lambda c: c["feature_store"].update(manifest_hash="0123456789abcdef"))
    code, _, stderr = _run(["--models", models, "--out", tmp_path / "refused.json"], capsys)
    assert code == 2 and "--tta N checks each member against one store" in stderr, stderr
    code, stdout, stderr = _run(["--models", models, "--tta", "2", "--features", sample_store], capsys)
    assert code == 0, stderr
    assert "cnn5+bovw: records manifest 0123456789abcdef" in stdout and "gives back its saved predictions" in stdout

    # saved predictions that its network does not give back on these crops: another store's
    def shuffle_val(arrays):
        arrays["val_proba"] = arrays["val_proba"][::-1].copy()
    _edit_predictions(models / "cnn5+bovw", shuffle_val)
    code, _, stderr = _run(["--models", models, "--tta", "2", "--features", sample_store, "--out",
                            tmp_path / "other.json"], capsys)
    assert code == 2 and "not the feature store" in stderr and "differs from its saved predictions" in stderr, stderr
    assert not (tmp_path / "other.json").exists()
