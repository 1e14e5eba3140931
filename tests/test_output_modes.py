"""Issue 13, item 12: every file every stage writes has the same permission bits, those a plain
``open()`` gives under the current umask (0o666 & ~umask), model files and checkpoints included.

``tempfile.mkstemp`` (behind ``artifacts.atomic_path``) creates private 0600 files, and Keras
saves into such a temporary, so a model or checkpoint would otherwise be unreadable to the
group and others while every JSON and PNG beside it is not. Real runs on the bundled sample.
"""

from __future__ import annotations

import os
import shutil
import stat
from pathlib import Path

import numpy as np
import pytest

from conftest import SAMPLE, TEST_DATA
from ensemble_fer import artifacts
from ensemble_fer import metrics
MEMBERS = ("bovw", "cnn5+bovw")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _file_modes(*roots: Path) -> dict[Path, int]:
    """Permission bits of every regular file under ``roots`` (links are not followed: the
    ensemble folder links to the members, checked through their own folder)."""
    modes = {}
    for root in roots:
        paths = [root] if root.is_file() else [p for p in root.rglob("*") if not p.is_symlink()]
        modes.update({p: stat.S_IMODE(p.lstat().st_mode) for p in paths if p.is_file()})
    return modes


def _differing(modes: dict[Path, int], expected: int) -> dict[str, str]:
    return {str(p): oct(m) for p, m in modes.items() if m != expected}


def test_every_stage_writes_every_output_with_one_mode(sample_store, tiny_variant, variant_pair, tmp_path, capsys):
    from pipelines import compare, evaluate, fit_ensemble, predict

    expected = 0o666 & ~_umask()
    # The ensemble may only name members inside its folder: links to the trained pair.
    models = tmp_path / "models"
    models.mkdir()
    for name in MEMBERS:
        (models / name).symlink_to(variant_pair / name, target_is_directory=True)
    ensemble = models / "ensemble.json"
    assert fit_ensemble.main(["--models", str(models), "--out", str(ensemble)]) == 0
    assert evaluate.main(["--model", str(ensemble), "--data", str(SAMPLE), "--cache", str(tmp_path / "cache"),
                          "--n-jobs", "1", "--json", str(tmp_path / "evaluation.json"),
                          "--out", str(tmp_path / "evaluation"), "--quiet"]) == 0
    photos = tmp_path / "photos"
    photos.mkdir()
    shutil.copy(TEST_DATA / "photos" / "2008_002506.jpg", photos)
    predicted = tmp_path / "predict"
    assert predict.main([str(photos), "--model", str(tiny_variant), "--csv", str(predicted / "faces.csv"),
                         "--annotate", str(predicted / "annotated"), "--gradcam", str(predicted / "gradcam"),
                         "--quiet"]) == 0
    assert compare.main(["--models", str(variant_pair), "--out", str(tmp_path / "comparison"), "--no-speed",
                         "--quiet"]) == 0
    capsys.readouterr()

    modes = _file_modes(sample_store, tiny_variant, variant_pair, tmp_path)
    names = {p.name for p in modes}
    # Every kind of output is among those checked: a check of nothing would pass.
    for name in ("manifest.json", "train.npz", "val.npz", "model.keras", "config.json", "history.csv", "curves.png",
                 "confusion_matrix.png", "predictions.npz", "metrics.json", "state.json", "ensemble.json",
                 "ensemble_report.md", "ensemble_report.json", "evaluation.json", "evaluation.md", "faces.csv",
                 "comparison.csv", "comparison.md", "comparison.png"):
        assert name in names, name
    run = tiny_variant / ".run"
    assert any(p.parent == run and p.suffix == ".keras" for p in modes), "no checkpoint in .run/"
    assert any(p.parent == run and p.name.startswith("best-") for p in modes), "no best weights in .run/"
    assert any(p.parent.name == "annotated" for p in modes) and any(p.parent.name == "gradcam" for p in modes)
    assert any(p.suffix == ".npz" and "cache" in p.parts for p in modes), "no evaluation feature cache"
    assert _differing(modes, expected) == {}


def test_models_and_arrays_follow_the_umask(tmp_path):
    """Under another umask (0o027: group read, others nothing) every writer, a Keras model
    saved the way training saves it included, gives 0o640, not mkstemp's 0o600 nor a fixed 0o644."""
    import keras

    from ensemble_fer.training import resume as training
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2, activation="softmax")])
    previous = os.umask(0o027)
    try:
        training._save_keras_atomic(model, tmp_path / "model.keras")
        artifacts.write_json(tmp_path / "config.json", {"a": 1})
        artifacts.save_npz(tmp_path / "predictions.npz", x=np.zeros(3))
        metrics.plot_confusion_matrix(np.eye(2, dtype=int), ["a", "b"], tmp_path / "confusion_matrix.png")
        with artifacts.atomic_path(tmp_path / "state.json") as tmp:
            tmp.write_text("{}")
    finally:
        os.umask(previous)
    modes = _file_modes(tmp_path)
    assert len(modes) == 5 and _differing(modes, 0o640) == {}
    assert keras.saving.load_model(tmp_path / "model.keras").count_params() == model.count_params()


@pytest.mark.parametrize("suffix", [".tmp", ".keras"])
def test_atomic_path_gives_the_file_the_mode_open_would(tmp_path, suffix):
    """The temporary mkstemp makes is private (0600); what lands at the path is not."""
    with artifacts.atomic_path(tmp_path / f"out{suffix}", suffix=suffix) as tmp:
        assert stat.S_IMODE(tmp.stat().st_mode) == 0o600
        tmp.write_bytes(b"x")
    with open(tmp_path / "plain", "w"):
        pass
    plain = stat.S_IMODE((tmp_path / "plain").stat().st_mode)
    assert stat.S_IMODE((tmp_path / f"out{suffix}").stat().st_mode) == plain
