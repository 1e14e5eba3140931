"""ensemble.json: write/read round trip and the refusals of ensemble_file (no Keras model)."""

from __future__ import annotations

import json

import pytest

from ensemble_fer.ensemble import ensemble_file
from ensemble_fer.ensemble.ensemble_file import (EnsembleMember, check_ensemble_outputs, check_member_hashes,
                                                 member_folder, member_hashes, member_path, read_ensemble,
                                                 write_ensemble)
from ensemble_fer.ensemble.weighted import WeightedEnsemble
from ensemble_fer.errors import InputError, MissingInputError

LABELS = {"name": "three", "classes": ["a", "b", "c"], "groups": [[0], [1], [2]]}
EXTRACTOR = {"detector": "none"}


def _fitted(weights):
    return WeightedEnsemble.from_json({"objective": "accuracy", "weights": weights, "classes": [0, 1, 2]})


def _member_folder(folder, text):
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"variant": text}))
    (folder / "model.keras").write_text(f"model of {text}")
    return folder


@pytest.fixture
def saved(tmp_path):
    """An ensemble of two member folders, one of them nested, written by write_ensemble."""
    out = tmp_path / "models" / "ensemble.json"
    folders = [_member_folder(tmp_path / "models" / "a", "a"), _member_folder(tmp_path / "models" / "runs" / "b", "b")]
    weights = [0.25, 0.75]
    members = [EnsembleMember(f.name, member_path(f, out), f, f.name, w, member_hashes(f))
               for f, w in zip(folders, weights)]
    data = write_ensemble(out, members, _fitted(weights), objective="accuracy", seed=0, labels=LABELS,
                          extractor=EXTRACTOR, feature_store={"path": "features/x"}, scores={},
                          report={"markdown": "ensemble_report.md"})
    return out, data


def test_round_trip(saved):
    out, data = saved
    on_disk = json.loads(out.read_text())
    assert on_disk.pop("ensemble")["weights"] == data.pop("ensemble")["weights"] == [0.25, 0.75]
    assert on_disk == data
    assert data["format"] == ensemble_file.ENSEMBLE_FORMAT and data["version"] == ensemble_file.ENSEMBLE_VERSION
    assert [m["path"] for m in data["members"]] == ["a", "runs/b"] and data["classes"] == LABELS["classes"]
    read = read_ensemble(out)
    assert [m.name for m in read.members] == ["a", "b"]
    assert [m.folder for m in read.members] == [out.parent / "a", out.parent / "runs" / "b"]
    assert [m.weight for m in read.members] == [0.25, 0.75] and list(read.fitted.weights_) == [0.25, 0.75]
    assert list(read.label_set.classes) == LABELS["classes"] and read.extractor.detector == "none"
    for member in read.members:
        check_member_hashes(member.folder, member.hashes, out)   # unchanged: accepted


def _rewrite(out, edit):
    data = json.loads(out.read_text())
    edit(data)
    out.write_text(json.dumps(data))


def test_version_1_and_newer_files_are_refused(saved):
    out, _ = saved
    _rewrite(out, lambda d: d.update(version=1))
    with pytest.raises(InputError, match="older fit_ensemble \\(format version 1\\).*rerun"):
        read_ensemble(out)
    _rewrite(out, lambda d: [d.update(version=2)] + [m.pop("model_sha256") for m in d["members"]])
    with pytest.raises(InputError, match="does not record the SHA-256"):
        read_ensemble(out)
    _rewrite(out, lambda d: d.update(version=3))
    with pytest.raises(InputError, match="version 3 is newer"):
        read_ensemble(out)
    _rewrite(out, lambda d: d.update(format="something else"))
    with pytest.raises(InputError, match="not an ensemble file"):
        read_ensemble(out)


def test_member_paths_must_stay_inside_the_folder(saved, tmp_path):
    out, data = saved
    for bad in ("../elsewhere", "/abs/path", "a/../..", ".", ""):
        _rewrite(out, lambda d: d["members"][0].update(path=bad))
        with pytest.raises(InputError, match="members\\[0\\].path"):
            read_ensemble(out)
    with pytest.raises(InputError, match="leaves the ensemble's folder"):
        member_folder(out, "../x", "members[0]")
    with pytest.raises(InputError, match="not inside"):
        member_path(tmp_path / "outside", out)


def test_weights_and_names_must_agree(saved):
    out, _ = saved
    _rewrite(out, lambda d: d["members"][0].update(weight=0.5))
    with pytest.raises(InputError, match="disagrees with ensemble.weights"):
        read_ensemble(out)
    _rewrite(out, lambda d: [d["members"][0].update(weight=0.25)] + [m.update(name="same") for m in d["members"]])
    with pytest.raises(InputError, match="two members share a name"):
        read_ensemble(out)


def test_hash_mismatch_and_missing_files(saved):
    out, _ = saved
    member = read_ensemble(out).members[1]
    (member.folder / "model.keras").write_text("retrained")
    with pytest.raises(InputError, match="changed since the ensemble was fitted \\(its model.keras differs"):
        check_member_hashes(member.folder, member.hashes, out)
    (member.folder / "config.json").unlink()
    with pytest.raises(MissingInputError, match="config.json: file not found \\(member of"):
        check_member_hashes(member.folder, member.hashes, out)
    with pytest.raises(MissingInputError, match="needs its config.json and model.keras"):
        member_hashes(member.folder)


def test_existing_outputs_are_refused_without_force(saved, tmp_path):
    out, _ = saved
    with pytest.raises(InputError, match="exists; pass --force"):
        check_ensemble_outputs(out, force=False)
    check_ensemble_outputs(out, force=True)
    check_ensemble_outputs(tmp_path / "new.json", force=False)
    assert ensemble_file.ensemble_outputs(out)["markdown"] == out.with_name("ensemble_report.md")


@pytest.mark.parametrize("force", [False, True])
def test_a_folder_output_is_refused_as_a_folder_with_or_without_force(tmp_path, force):
    """A folder where the ensemble or one of its reports goes is no earlier result: the one
    message says so, with and without --force (before, --force got "pass --force", then this)."""
    (tmp_path / "ens.json").mkdir()
    with pytest.raises(InputError, match=r"ens.json: is a folder; --out names"):
        check_ensemble_outputs(tmp_path / "ens.json", force=force)
    (tmp_path / "other_report.md").mkdir()
    with pytest.raises(InputError, match=r"other_report.md: is a folder, not a report of the ensemble"):
        check_ensemble_outputs(tmp_path / "other.json", force=force)


def test_fit_writes_what_read_ensemble_reads(tmp_path):
    """fit_ensemble on synthetic members (saved predictions and a stand-in model file: no Keras)."""
    import numpy as np

    from ensemble_fer.ensemble.fit import fit_ensemble
    from ensemble_fer.models.variant_dir import VariantDir, find_variants

    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 60)
    models = tmp_path / "models"
    for i, name in enumerate(("a", "b")):
        variant = VariantDir(models / name)
        variant.path.mkdir(parents=True)
        proba = rng.dirichlet(np.ones(3), size=60)
        proba[np.arange(60), y] += 1.0 + i       # b is the better member
        variant.write_predictions({"val": {"ids": np.array([f"row{r}" for r in range(60)]), "y": y,
                                           "proba": proba / proba.sum(axis=1, keepdims=True),
                                           "face_found": np.ones(60, bool)}})
        (variant.model_path).write_text(f"model {name}")
        variant.write_config({"variant": name, "block": None, "bovw": True, "labels": LABELS,
                              "feature_store": {"path": "f", "config_hash": "c", "manifest_hash": "m",
                                                "extractor": EXTRACTOR}})
    out = models / "ensemble.json"
    report = fit_ensemble(find_variants(models), out, cv_splits=2, say=lambda *a: None)
    saved = read_ensemble(out)
    assert [m.name for m in saved.members] == report["members"] == ["a", "b"]
    assert [m.weight for m in saved.members] == pytest.approx(list(report["weights"].values()))
    assert saved.data["report"]["markdown"] == "ensemble_report.md" and (models / "ensemble_report.md").is_file()
    with pytest.raises(InputError, match="exists .*; pass --force"):
        fit_ensemble([models / "a"], out, say=lambda *a: None)
