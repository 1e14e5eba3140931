"""Knowledge distillation (``--teacher``): the targets, a student trained on the bundled sample
from a real (tiny) ensemble, resume, and the refusals."""

from __future__ import annotations

import json
import shutil

import keras
import numpy as np
import pytest

from ensemble_fer import paths
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


def test_a_teacher_pass_says_how_far_it_is_gives_the_probabilities_of_one_call_and_is_cached(
        teacher, sample_store, monkeypatch, tmp_path):
    store = FeatureStore(sample_store)
    train = data.load_splits(store, get_label_set("fer7"))[0]["train"]
    predictor = load_predictor(teacher)
    whole = predictor.predict_features(images=train.images if predictor.needs_images else None,
                                       bovw_rows=train.bovw if predictor.needs_bovw else None)
    # One prediction batch (256) a chunk: the sample's 279 training rows are two chunks, predicted
    # in the same batches as one call, so to the bit.
    monkeypatch.setattr(distill, "PROGRESS_ROWS", 256)
    said = []
    sha = distill.fingerprint(predictor)
    np.testing.assert_array_equal(distill.teacher_probabilities(predictor, sha, train, store, said.append,
                                                                cache=tmp_path),
                                  whole.astype(np.float32))
    assert len(said) == 2 and said[1].startswith(f"teacher {predictor.source}: 256/{len(train)} crops in ")
    assert said[1].endswith(" s left")

    # the pass is cached: a second call reads it, to the bit; a damaged file is made again
    cached, = tmp_path.glob("*-stored.npz")
    said.clear()
    np.testing.assert_array_equal(distill.teacher_probabilities(predictor, sha, train, store, said.append,
                                                                cache=tmp_path), whole.astype(np.float32))
    assert said == [f"teacher {predictor.source}: the {len(train)} training crops read from {cached}"]
    cached.write_bytes(b"not an npz")
    np.testing.assert_array_equal(distill.teacher_probabilities(predictor, sha, train, store, said.append,
                                                                cache=tmp_path), whole.astype(np.float32))
    assert said[-1].endswith(" s left") and np.array_equal(np.load(cached)["proba"], whole.astype(np.float32))


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

    # stopped after epoch 1 and continued: the teacher's targets read from the cache, identical
    part = tmp_path / "part"
    assert _cli(*args, "--epochs", 1, "--out", part) == 0
    cached, = (paths.cache_dir() / "teacher").glob(f"{config['teacher']['sha256'][:12]}-*-stored.npz")
    written = cached.stat().st_mtime_ns
    assert _cli(*args, "--epochs", 2, "--out", part, "--resume") == 0
    assert cached.stat().st_mtime_ns == written
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


# ------------------------------------------------------------------------------------------
# the teacher's fixed views and the temperature
# ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("n_views", distill.VIEW_COUNTS[1:])
def test_each_view_s_partner_is_its_mirror_image(sample_store, n_views):
    from ensemble_fer.features.augment import tta_images

    images = FeatureStore(sample_store).load("val")["images"][:20]
    views = tta_images(images, n_views)
    partners = distill.mirror_partners(n_views)
    assert sorted(partners) == list(range(n_views)) and all(partners[partners] == np.arange(n_views))
    for v, p in enumerate(partners):
        assert np.array_equal(views[v][:, :, ::-1], views[p])


@pytest.mark.parametrize("n_views", [3, 4, 5, 7, 9])
def test_view_counts_not_closed_under_mirroring_are_refused(n_views):
    with pytest.raises(ValueError, match="not closed under mirroring"):
        distill.mirror_partners(n_views)
    with pytest.raises(ValueError, match=r"teacher_views must be one of \(1, 2, 6, 8, 10\)"):
        TrainConfig.from_arguments(block="cnn5", teacher="x", teacher_views=n_views)


def test_soften_is_the_softmax_of_the_log_probabilities_over_t():
    proba = np.random.default_rng(1).dirichlet(np.ones(7) * 0.3, size=50)
    np.testing.assert_allclose(distill.soften(proba, 1.0), proba, atol=1e-7)
    for t in (0.5, 2.0, 4.0):
        soft = distill.soften(proba, t)
        expected = np.exp(np.log(proba) / t)
        np.testing.assert_allclose(soft, expected / expected.sum(axis=1, keepdims=True), rtol=1e-5)
        assert (soft.argmax(axis=1) == proba.argmax(axis=1)).all()
    entropy = [-(distill.soften(proba, t) * np.log(distill.soften(proba, t) + 1e-12)).sum(1).mean()
               for t in (0.5, 1.0, 2.0, 4.0)]
    assert entropy == sorted(entropy)   # hotter: flatter


def test_a_row_drawn_a_view_gets_that_view_s_image_and_target(sample_store):
    from ensemble_fer.features.augment import tta_images

    splits, _ = data.load_splits(FeatureStore(sample_store), get_label_set("fer7"))
    train = splits["train"]
    images = np.stack(tta_images(train.images, 6))
    soft = np.random.default_rng(0).dirichlet(np.ones(7), size=(6, len(train))).astype(np.float32)
    train.views = distill.TeacherViews(images, None, None, soft)
    ds, _ = data.train_dataset(train, "cnn5", False, 7, 32, 5, 3, 4, distill_weight=0.7)   # epoch 3, no augment
    x, y = next(iter(ds))
    rows = np.sort(np.random.default_rng([5, 3]).permutation(len(train))[:32])
    view = np.random.default_rng([5, 3, distill.VIEW_STREAM]).integers(6, size=len(train))[rows]
    assert len(set(view.tolist())) > 1
    np.testing.assert_array_equal(x["image"].numpy()[..., 0], images[view, rows])
    np.testing.assert_allclose(y.numpy(), 0.3 * np.eye(7)[train.y[rows]] + 0.7 * soft[view, rows], atol=1e-6)


def test_a_student_on_the_teacher_s_views_records_them_caches_the_teacher_and_resumes(
        teacher, sample_store, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    args = ["--block", "cnn5", "--features", sample_store, "--teacher", teacher, "--teacher-views", 6,
            "--distill-temperature", 2, "--seed", 4, "--augment-shift", 2]
    whole = tmp_path / "whole"
    assert _cli(*args, "--epochs", 2, "--out", whole) == 0
    config = json.loads((whole / "config.json").read_text())
    assert config["args"]["teacher_views"] == 6 and config["args"]["distill_temperature"] == 2.0
    assert config["teacher"]["views"] == 6 and config["teacher"]["temperature"] == 2.0
    cached = sorted((tmp_path / "cache" / "ensemble_fer" / "teacher").glob("*-view*.npz"),
                    key=lambda p: int(p.stem.rsplit("view", 1)[1]))
    assert [p.name.rsplit("-", 1)[1] for p in cached] == [f"view{v}.npz" for v in range(6)]   # one file per view
    proba = np.stack([np.load(p)["proba"] for p in cached])
    train = data.load_splits(FeatureStore(sample_store), get_label_set("fer7"))[0]["train"]
    assert proba.shape == (6, len(train), 7)
    # the teacher's pass over view 0 is its prediction of the crops as they are (the teacher
    # has BOVW members: the view's HOG is recomputed from its pixels)
    from ensemble_fer.features.augment import tta_views

    images, _, bovw = tta_views(train.images, train.landmarks, 1)[0]
    np.testing.assert_array_equal(images, train.images)
    np.testing.assert_allclose(proba[0], load_predictor(teacher).predict_features(images=images, bovw_rows=bovw,
                                                                                  tta=0), atol=1e-5)
    written = [p.stat().st_mtime_ns for p in cached]

    # stopped after epoch 1 and continued: the teacher read from its cache (not rewritten), the
    # same model; a run on 2 views reads the first two
    part = tmp_path / "part"
    assert _cli(*args, "--epochs", 1, "--out", part) == 0
    assert _cli(*args, "--epochs", 2, "--out", part, "--resume") == 0
    assert _cli(*[a if a != 6 else 2 for a in args], "--epochs", 1, "--out", tmp_path / "two") == 0
    assert [p.stat().st_mtime_ns for p in cached] == written
    assert all(np.array_equal(a, b) for a, b in zip(_weights(part), _weights(whole), strict=True))

    # a damaged cache is made again, not trusted
    cached[3].write_bytes(b"not an npz")
    again = tmp_path / "again"
    assert _cli(*args, "--epochs", 2, "--out", again) == 0
    np.testing.assert_array_equal(np.load(cached[3])["proba"], proba[3])
    assert all(np.array_equal(a, b) for a, b in zip(_weights(again), _weights(whole), strict=True))

    # another temperature is another model
    hotter = tmp_path / "hotter"
    assert _cli(*[a if a != 2 else 4 for a in args], "--epochs", 2, "--out", hotter) == 0
    assert not all(np.array_equal(a, b) for a, b in zip(_weights(hotter), _weights(whole), strict=True))


@pytest.mark.parametrize("kwargs, message", [
    ({"teacher_views": 6}, "need a teacher"),
    ({"distill_temperature": 2.0}, "need a teacher"),
    ({"teacher": "x", "distill_temperature": 0}, "distill_temperature must be a number in (0.0, 100.0]"),
    ({"teacher": "x", "teacher_views": 2, "cached_views": 6}, "cached_views (6) must be <= teacher_views (2)"),
])
def test_bad_view_distillation_arguments_name_the_argument(kwargs, message):
    import re

    with pytest.raises(ValueError, match=re.escape(message)):
        TrainConfig.from_arguments(block="cnn5", **kwargs)
