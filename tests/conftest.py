"""Shared fixtures: the bundled sample, CSV fixtures built from it, and a sample feature store."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

REPO = Path(__file__).resolve().parent.parent
SAMPLE = REPO / "data" / "sample"
TEST_DATA = Path(__file__).resolve().parent / "data"


@pytest.fixture(scope="session", autouse=True)
def _own_cache_folder(tmp_path_factory):
    """The suite's caches (extracted photos, teacher passes) in a folder of its own: a test never
    reads what the user's runs cached, nor leaves files in the user's cache."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("cache")))
        yield


@pytest.fixture(scope="session")
def sample_dir() -> Path:
    return SAMPLE


def occupied_output(path: Path, kind: str, user_file: str = "notes.txt") -> Path:
    """Put at ``path`` what a user might give as an output by mistake: ``"file"`` (a file of
    theirs), ``"user folder"`` (a folder holding ``user_file``), or anything else: nothing."""
    if kind == "file":
        path.write_text("notes")
    elif kind == "user folder":
        path.mkdir()
        (path / user_file).write_text("mine")
    return path


def sample_crops(n: int = 24) -> tuple[np.ndarray, list[Path]]:
    """Real 48x48 FER2013 crops from the bundled sample, a few of every class."""
    from ensemble_fer.features.image_io import read_image_file

    files = sorted(SAMPLE.glob("train/*/*.jpg"))[:: max(1, len(list(SAMPLE.glob("train/*/*.jpg"))) // n)][:n]
    return np.stack([read_image_file(f) for f in files]), files


def write_fer_csv(path: Path, rows: list[tuple[int, np.ndarray, str]], header="emotion,pixels,Usage") -> Path:
    """A FER2013 challenge CSV from (code, 48x48 image, usage) rows."""
    lines = [header]
    for code, image, usage in rows:
        lines.append(f"{code},{' '.join(str(int(v)) for v in image.ravel())},{usage}")
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="session")
def sample_store(tmp_path_factory) -> Path:
    """The bundled sample extracted with --detector none (seconds), shared by the tests."""
    from pipelines import extract_features

    out = tmp_path_factory.mktemp("features") / "sample"
    code = extract_features.main(["--data", str(SAMPLE), "--out", str(out), "--detector", "none", "--quiet",
                                  "--n-jobs", "1"])
    assert code == 0
    return out


@pytest.fixture(scope="session")
def tiny_variant(sample_store, tmp_path_factory) -> Path:
    """A cnn5+bovw variant trained for one epoch on the sample store (its predictions mean
    little; it exists so that prediction, Grad-CAM and the CLI run on a real saved model)."""
    from pipelines import train_variant

    out = tmp_path_factory.mktemp("models") / "cnn5+bovw"
    code = train_variant.main(["--block", "cnn5", "--bovw", "--features", str(sample_store), "--out", str(out),
                               "--epochs", "1", "--no-augment", "--quiet"])
    assert code == 0
    return out


@pytest.fixture(scope="session")
def variant_pair(tiny_variant, sample_store, tmp_path_factory) -> Path:
    """A models folder holding two variants trained on the sample store, for the ensemble and
    evaluation tests: a copy of ``tiny_variant`` (cnn5+bovw) and a BOVW-only variant (one
    epoch, seconds). Tests must not write into it: copy what they change."""
    import shutil

    from ensemble_fer.training import train as training
    models = tmp_path_factory.mktemp("ensemble_models")
    shutil.copytree(tiny_variant, models / tiny_variant.name, ignore=shutil.ignore_patterns(".run"))
    training.train_variant(sample_store, None, True, out=models / "bovw", epochs=1, augment=False, progress=False)
    return models


@pytest.fixture(scope="session")
def tiny_release(variant_pair, tmp_path_factory) -> Path:
    """A release-shaped folder: ``variant_pair``'s two variants and their fitted
    ``ensemble.json`` side by side (as in ``models/release``), for packaging, export and video
    tests. Tests must not write into it."""
    import shutil

    from pipelines import fit_ensemble

    release = tmp_path_factory.mktemp("release") / "release"
    shutil.copytree(variant_pair, release, ignore=shutil.ignore_patterns(".run"))
    assert fit_ensemble.main(["--models", str(release), "--out", str(release / "ensemble.json")]) == 0
    return release
