"""Knowledge distillation (``--teacher``): the targets, a student trained on the bundled sample
from a real (tiny) ensemble, resume, and the refusals."""

from __future__ import annotations

import json
import shutil

import keras
import numpy as np
import pytest

from ensemble_fer.features.feature_store import FeatureStore
from ensemble_fer.inference.loading import load_predictor
from ensemble_fer.labels import get_label_set
from ensemble_fer.training import data, distill
from ensemble_fer.training.config import TrainConfig
from pipelines import fit_ensemble
from pipelines import train_variant as cli


def _cli(*args):
    return cli.main([str(a) for a in args] + ["--quiet"])


def _weights(folder):
    return keras.models.load_model(folder / "model.keras", safe_mode=True, compile=False).get_weights()


@pytest.fixture(scope="module")
def teacher(tiny_release, tmp_path_factory):
    """A copy of the tiny release that the tests may refit."""
    folder = tmp_path_factory.mktemp("teacher") / "release"
    shutil.copytree(tiny_release, folder)
    return folder


def test_each_target_is_the_label_and_the_teacher_in_the_given_shares(sample_store):
    splits, _ = data.load_splits(FeatureStore(sample_store), get_label_set("fer7"))
    train = splits["train"]
    train.soft = np.random.default_rng(0).dirichlet(np.ones(7), size=len(train)).astype(np.float32)
    ds, _ = data.train_dataset(train, "cnn5", False, 7, 32, 5, 0, 1, distill_weight=0.7)
    _, y = next(iter(ds))
    rows = np.sort(np.random.default_rng([5, 0]).permutation(len(train))[:32])   # batch 0 of epoch 0
    expected = 0.3 * np.eye(7)[train.y[rows]] + 0.7 * train.soft[rows]
    np.testing.assert_allclose(y.numpy(), expected, atol=1e-6)
    np.testing.assert_allclose(y.numpy().sum(axis=1), 1.0, atol=1e-5)


def test_a_student_learns_from_the_teacher_records_it_and_resumes_bit_identical(teacher, sample_store, tmp_path):
    args = ["--block", "cnn5", "--features", sample_store, "--teacher", teacher, "--distill-weight", 0.6,
            "--seed", 4, "--no-augment"]
    whole = tmp_path / "whole"
    assert _cli(*args, "--epochs", 2, "--out", whole) == 0
    config = json.loads((whole / "config.json").read_text())
    predictor = load_predictor(teacher)
    assert config["args"]["teacher"] == str(teacher.resolve()) and config["args"]["distill_weight"] == 0.6
    assert config["teacher"]["sha256"] == config["args"]["teacher_sha256"] == distill.fingerprint(predictor)
    assert config["teacher"]["members"] == list(predictor.members)
    assert 0.0 < config["teacher"]["train_accuracy"] <= 1.0

    # stopped after epoch 1 and continued: the teacher's targets are recomputed, identical
    part = tmp_path / "part"
    assert _cli(*args, "--epochs", 1, "--out", part) == 0
    assert _cli(*args, "--epochs", 2, "--out", part, "--resume") == 0
    assert all(np.array_equal(a, b) for a, b in zip(_weights(part), _weights(whole), strict=True))

    # the same run without a teacher learns something else
    plain = tmp_path / "plain"
    assert _cli(*[a for a in args if a not in ("--teacher", teacher, "--distill-weight", 0.6)],
                "--epochs", 2, "--out", plain) == 0
    assert "teacher" not in json.loads((plain / "config.json").read_text())
    assert not all(np.array_equal(a, b) for a, b in zip(_weights(plain), _weights(whole), strict=True))


def test_a_resume_with_a_changed_teacher_is_refused(teacher, sample_store, tmp_path, capsys):
    changed = tmp_path / "teacher"
    shutil.copytree(teacher, changed)
    args = ["--block", "cnn5", "--features", sample_store, "--teacher", changed, "--no-augment"]
    assert _cli(*args, "--epochs", 1, "--out", tmp_path / "student") == 0
    capsys.readouterr()
    # refitted weights: the same path now names another teacher
    assert fit_ensemble.main(["--models", str(changed), "--out", str(changed / "ensemble.json"), "--objective",
                              "log-loss", "--force"]) == 0
    assert _cli(*args, "--epochs", 2, "--out", tmp_path / "student", "--resume") == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "teacher_sha256 was" in err and "--force" in err


def test_a_teacher_of_other_classes_or_no_model_is_one_line(teacher, sample_store, tmp_path, capsys):
    assert _cli("--block", "cnn5", "--features", sample_store, "--labels", "happy,sad,neutral", "--teacher", teacher,
                "--out", tmp_path / "a") == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("error: teacher:") and "label set" in err
    assert _cli("--block", "cnn5", "--features", sample_store, "--teacher", tmp_path / "nowhere",
                "--out", tmp_path / "b") == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "nowhere" in err
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


@pytest.mark.parametrize("kwargs, message", [
    ({"distill_weight": 1.5}, "distill_weight must be a number in [0.0, 1.0]"),
    ({"teacher": 3}, "teacher must be None or the path of a trained model"),
])
def test_bad_distillation_arguments_name_the_argument(kwargs, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        TrainConfig.from_arguments(block="cnn5", **kwargs)
