"""Training a variant on the bundled sample: outputs, phases, resume, seeds, refusals.

Real TensorFlow training throughout, one or two epochs of the 280-image sample each.
"""

from __future__ import annotations

import json
import shutil

import keras
import numpy as np
import pytest

from conftest import occupied_output
from ensemble_fer import artifacts
from ensemble_fer.models import blocks
from ensemble_fer.models.forward import predict_proba
from ensemble_fer.models.variant_dir import load_variant
from ensemble_fer.training import data, resume, schedule, train as training
from ensemble_fer.training.config import TrainConfig
from ensemble_fer.features.bovw import BOVW_SIZE, assemble_bovw
from ensemble_fer.features.feature_store import FeatureStore
from ensemble_fer.features.hog import sliding_hog
from ensemble_fer.labels import get_label_set
from pipelines import train_variant as cli

OUTPUTS = ("model.keras", "config.json", "history.csv", "curves.png", "predictions.npz", "metrics.json",
           "confusion_matrix.png")


def _cli(*args):
    return cli.main([str(a) for a in args] + ["--quiet"])


@pytest.fixture(scope="module")
def trained(sample_store, tmp_path_factory):
    """cnn5 + BOVW trained for one epoch (augmented) through the CLI."""
    out = tmp_path_factory.mktemp("variants") / "cnn5+bovw"
    assert _cli("--block", "cnn5", "--bovw", "--features", sample_store, "--out", out, "--epochs", 1,
                "--class-weight", "balanced", "--seed", 3) == 0
    return out


def test_two_input_variant_writes_every_output(trained, sample_store):
    for name in OUTPUTS:
        assert (trained / name).stat().st_size > 0, name
    config = json.loads((trained / "config.json").read_text())
    assert config["variant"] == "cnn5+bovw" and config["block"] == "cnn5" and config["bovw"] is True
    assert config["labels"]["classes"] == list(get_label_set("fer7").classes)
    store = FeatureStore(sample_store)
    assert config["feature_store"]["manifest_hash"] == store.manifest_hash
    assert config["feature_store"]["config_hash"] == store.config_hash
    assert config["args"]["epochs"] == 1 and config["args"]["augment"] is True
    assert config["args"]["class_weight"] == "balanced" and config["args"]["image_size"] == 48
    assert config["training"]["epochs_run"] == 1 and config["training"]["complete"] is True
    assert [p["name"] for p in config["training"]["phases"]] == ["scratch"]
    assert config["model"]["n_params"] > 0 and config["versions"]["keras"] == keras.__version__
    # Train keeps the extraction filter (the sample has one blank crop); val keeps every row.
    assert config["data"]["train"]["used"] == 279 and config["data"]["train"]["left_out"]["dropped_blank"] == 1
    assert config["data"]["val"]["used"] == 105

    predictions = artifacts.load_npz(trained / "predictions.npz")
    assert set(predictions) == {"val_ids", "val_y", "val_proba", "val_face_found"}
    assert predictions["val_proba"].shape == (105, 7)
    np.testing.assert_allclose(predictions["val_proba"].sum(axis=1), 1.0, atol=1e-5)
    assert predictions["val_face_found"].all()   # no detector: every crop counts as a face
    val = store.load("val")
    np.testing.assert_array_equal(predictions["val_ids"], val["ids"])
    np.testing.assert_array_equal(predictions["val_y"], val["labels"])   # fer7: class index = code

    scores = json.loads((trained / "metrics.json").read_text())
    assert set(scores) == {"val", "val_face_found"}
    assert scores["val"]["n"] == 105 and 0.0 <= scores["val"]["accuracy"] <= 1.0
    history = (trained / "history.csv").read_text().splitlines()
    assert history[0].startswith("epoch,phase,phase_epoch,loss,accuracy,val_loss,val_accuracy,learning_rate")
    assert len(history) == 2 and history[1].startswith("1,scratch,1,")


def test_saved_model_reloads_in_safe_mode_and_gives_the_same_probabilities(trained, sample_store):
    model, config = load_variant(trained)
    inputs = {t.name: t for t in model.inputs}
    assert inputs["image"].dtype == "uint8" and tuple(inputs["image"].shape) == (None, 48, 48, 1)
    assert inputs["bovw"].dtype == "float32" and tuple(inputs["bovw"].shape) == (None, BOVW_SIZE)
    val = FeatureStore(sample_store).load("val")
    proba = predict_proba(model, config, val["images"], val["bovw"], batch_size=32)
    np.testing.assert_allclose(proba, artifacts.load_npz(trained / "predictions.npz")["val_proba"], atol=1e-5)
    again = keras.models.load_model(trained / "model.keras", safe_mode=True, compile=False)
    np.testing.assert_allclose(again.predict({"image": val["images"][:4, ..., None], "bovw": val["bovw"][:4]},
                                             verbose=0), proba[:4], atol=1e-5)
    with pytest.raises(ValueError, match="bovw: variant 'cnn5\\+bovw' needs BOVW features"):
        predict_proba(model, config, val["images"])
    with pytest.raises(ValueError, match="images must have shape"):
        predict_proba(model, config, val["images"][:, :40], val["bovw"])


def test_same_seed_gives_the_same_model(trained, sample_store, tmp_path):
    out = tmp_path / "again"
    out.mkdir()
    (out / "config.json").write_text("{}")   # an old variant, replaced with force
    artifacts.mark_output(out)
    training.train_variant(sample_store, "cnn5", True, out=out, epochs=1, class_weight="balanced", seed=3,
                           force=True, progress=False)
    first = artifacts.load_npz(trained / "predictions.npz")["val_proba"]
    np.testing.assert_array_equal(artifacts.load_npz(out / "predictions.npz")["val_proba"], first)
    assert json.loads((out / "config.json").read_text())["variant"] == "cnn5+bovw"


def test_resume_continues_from_the_checkpoint(trained, sample_store, tmp_path):
    out = tmp_path / "resumed"
    shutil.copytree(trained, out)
    # One more epoch, then a time budget (already used up) stops it as if interrupted.
    assert _cli("--block", "cnn5", "--bovw", "--features", sample_store, "--out", out, "--epochs", 3,
                "--class-weight", "balanced", "--seed", 3, "--resume", "--max-minutes", 0.001) == 0
    rows = (out / "history.csv").read_text().splitlines()[1:]
    assert [r.split(",")[:3] for r in rows] == [["1", "scratch", "1"], ["2", "scratch", "2"]]
    assert rows[0] == (trained / "history.csv").read_text().splitlines()[1]
    config = json.loads((out / "config.json").read_text())
    assert config["training"]["stopped"] == "time budget" and config["training"]["complete"] is False
    state = json.loads((out / ".run" / "state.json").read_text())
    checkpoint = keras.models.load_model(out / ".run" / state["checkpoint"], safe_mode=True)
    # The optimizer went on from its saved state: 5 steps of epoch 1 + 5 of epoch 2.
    assert int(checkpoint.optimizer.iterations) == 10
    assert not np.array_equal(artifacts.load_npz(out / "predictions.npz")["val_proba"],
                              artifacts.load_npz(trained / "predictions.npz")["val_proba"])


def test_resume_refuses_other_arguments_and_existing_output_needs_force(trained, sample_store, capsys):
    before = (trained / "config.json").read_text()
    code = _cli("--block", "cnn5", "--bovw", "--features", sample_store, "--out", trained, "--epochs", 1,
                "--class-weight", "balanced", "--seed", 3, "--resume", "--lr", 0.01)
    assert code == 2
    assert "lr was 0.001, now 0.01" in capsys.readouterr().err
    code = _cli("--block", "cnn5", "--bovw", "--features", sample_store, "--out", trained, "--epochs", 1,
                "--class-weight", "balanced", "--seed", 3, "--resume", "--augment-strength", 2)
    assert code == 2
    assert "augment_config was" in capsys.readouterr().err
    code = _cli("--block", "cnn5", "--bovw", "--features", sample_store, "--out", trained, "--epochs", 1)
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: out:") and "--force" in err and err.count("\n") == 1
    assert (trained / "config.json").read_text() == before


def test_frozen_phase_freezes_the_block_and_finetuning_uses_sgd_nesterov(sample_store, tmp_path):
    # "Pretrained" cnn5 weights: random, with batch-norm statistics far from their defaults,
    # so that a batch-norm layer left in training mode would visibly move them.
    block = blocks.create_block("cnn5", weights=None)
    rng = np.random.default_rng(0)
    block.set_weights([w + rng.normal(0, 0.1, w.shape).astype(w.dtype) for w in block.get_weights()])
    weights_file = tmp_path / "cnn5.weights.h5"
    block.save_weights(weights_file)
    pretrained = block.get_weights()

    class Record(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.phases = []

        def _block(self):
            # The frozen phase trains on cached block outputs: its model has no block at all.
            return next((layer for layer in self.model.layers if layer.name == "cnn5"), None)

        def _snapshot(self):
            net = self._block()
            return {"block": None if net is None else net.get_weights(),
                    "head": self.model.get_layer("logits").get_weights()}

        def on_train_begin(self, logs=None):
            net = self._block()
            self.phases.append({"begin": self._snapshot(), "has_block": net is not None,
                                "block_trainable": None if net is None else net.trainable,
                                "optimizer": self.model.optimizer.get_config(),
                                "optimizer_class": type(self.model.optimizer).__name__,
                                "trained": {id(v) for v in self.model.trainable_weights},
                                "block_trained": set() if net is None else {id(v) for v in net.trainable_weights},
                                "block_all": set() if net is None else {id(v) for v in net.weights}})

        def on_train_end(self, logs=None):
            self.phases[-1]["end"] = self._snapshot()

    record = Record()
    out = training.train_variant(sample_store, "cnn5", False, out=tmp_path / "frozen", weights=weights_file,
                                 epochs_frozen=1, epochs=1, lr=0.05, augment=False, progress=False,
                                 callbacks=[record])
    frozen, finetune = record.phases
    same = lambda a, b: all(np.array_equal(x, y) for x, y in zip(a, b))  # noqa: E731

    assert not frozen["has_block"] and frozen["optimizer_class"] == "Adam"
    assert not frozen["trained"] & finetune["block_all"]     # no block variable trained while frozen
    assert same(finetune["begin"]["block"], pretrained)      # moving statistics included
    assert not same(frozen["end"]["head"], frozen["begin"]["head"])

    assert finetune["block_trainable"] is True and finetune["optimizer_class"] == "SGD"
    assert finetune["optimizer"]["nesterov"] is True and finetune["optimizer"]["momentum"] == 0.9
    assert finetune["optimizer"]["learning_rate"] == pytest.approx(0.05)
    assert finetune["block_trained"] and finetune["block_trained"] <= finetune["trained"]
    assert same(finetune["begin"]["head"], frozen["end"]["head"])     # phase 2 starts where phase 1 ended
    assert not same(finetune["end"]["block"], pretrained)

    config = json.loads((out / "config.json").read_text())
    assert [(p["name"], p["epochs"]) for p in config["training"]["phases"]] == [("frozen", 1), ("finetune", 1)]
    assert config["model"]["pretrained_block"] is True
    phases = [row.split(",")[1] for row in (out / "history.csv").read_text().splitlines()[1:]]
    assert phases == ["frozen", "finetune"]


def test_bovw_only_network_trains_and_reports_a_test_split(sample_store, tmp_path):
    # A store with a test split: the sample's val rows again, under other ids.
    store = tmp_path / "with_test"
    shutil.copytree(sample_store, store)
    test = artifacts.load_npz(store / "val.npz")
    test["ids"] = np.char.add("test/", test["ids"])
    artifacts.save_npz(store / "test.npz", **test)
    manifest = json.loads((store / "manifest.json").read_text())
    manifest["splits"]["test"] = manifest["splits"]["val"]
    (store / "manifest.json").write_text(json.dumps(manifest))

    out = tmp_path / "bovw"
    assert _cli("--block", "none", "--bovw", "--features", store, "--out", out, "--epochs", 2,
                "--no-augment", "--labels", "happy,sad,surprise", "--label-smoothing", 0.1,
                "--bovw-units", "64,32") == 0
    model, config = load_variant(out)
    assert [t.name for t in model.inputs] == ["bovw"] and config["variant"] == "bovw"
    assert config["args"]["bovw_units"] == [64, 32]
    assert [model.get_layer(f"bovw_dense{i}").units for i in (1, 2)] == [64, 32]
    assert config["labels"]["classes"] == ["happy", "sad", "surprise"]
    assert config["data"]["val"]["used"] == 45 and config["data"]["val"]["left_out"]["outside_label_set"] == 60
    assert config["figures"]["confusion_matrix"] == "test"
    predictions = artifacts.load_npz(out / "predictions.npz")
    assert {f"{s}_{k}" for s in ("val", "test") for k in ("ids", "y", "proba", "face_found")} == set(predictions)
    assert predictions["val_proba"].shape == (45, 3) and set(predictions["val_y"]) == {0, 1, 2}
    assert all(i.startswith("test/") for i in predictions["test_ids"])
    np.testing.assert_allclose(predictions["test_proba"], predictions["val_proba"], atol=1e-6)
    assert set(json.loads((out / "metrics.json").read_text())) == {"val", "val_face_found", "test",
                                                                   "test_face_found"}
    assert len((out / "history.csv").read_text().splitlines()) == 3


def test_cosine_schedule_decays_per_step_across_a_resume_under_bfloat16(sample_store, tmp_path, capsys):
    out = tmp_path / "cosine"
    # A BOVW-only network: the schedule and the precision policy are the network's, not its
    # block's, and bfloat16 convolutions are slow on a CPU without native bfloat16.
    args = ["--block", "none", "--bovw", "--features", sample_store, "--out", out,
            "--lr", 0.01, "--lr-schedule", "cosine", "--batch-size", 128, "--precision", "mixed_bfloat16",
            "--no-augment"]
    # Stopped by the (used-up) time budget after one of its three epochs.
    assert _cli(*args, "--epochs", 3, "--max-minutes", 0.001) == 0
    assert _cli(*args, "--epochs", 4, "--resume") == 2
    err = capsys.readouterr().err
    assert "decays its learning rate over 3 epochs" in err and err.count("\n") == 1
    assert _cli(*args, "--epochs", 3, "--resume") == 0

    n_train = FeatureStore(sample_store).manifest["splits"]["train"]["kept"]
    steps = -(-n_train // 128)
    floor = schedule.COSINE_FLOOR
    expected = [0.01 * (floor + (1 - floor) * 0.5 * (1 + np.cos(np.pi * e / 3))) for e in (1, 2, 3)]
    rows = [r.split(",") for r in (out / "history.csv").read_text().splitlines()[1:]]
    # The logged rate is the schedule's after each epoch's `steps` steps: the resumed run
    # went on from step `steps`, not from the top of the schedule.
    np.testing.assert_allclose([float(r[7]) for r in rows], expected, rtol=1e-4)
    config = json.loads((out / "config.json").read_text())
    assert config["args"]["precision_policy"] == "mixed_bfloat16" and config["training"]["complete"]
    state = json.loads((out / ".run" / "state.json").read_text())
    checkpoint = keras.models.load_model(out / ".run" / state["checkpoint"], safe_mode=True)
    assert int(checkpoint.optimizer.iterations) == 3 * steps
    # The shipped model is float32 whatever the training precision.
    model, _ = load_variant(out)
    assert all(w.dtype == "float32" for w in model.weights)


def test_a_cosine_run_to_its_end_keeps_its_last_epoch_not_its_lowest_val_loss(sample_store, tmp_path, capsys):
    out = tmp_path / "cosine_last"
    args = ["--block", "none", "--bovw", "--features", sample_store, "--out", out, "--epochs", 3,
            "--lr", 0.01, "--lr-schedule", "cosine", "--no-augment", "--seed", 5]

    def said(*more):
        assert cli.main([str(a) for a in args + list(more)]) == 0
        return capsys.readouterr().out

    # Stopped by the time budget after epoch 1: mid-schedule, the best epoch so far.
    assert "(model.keras: the weights of epoch 1, the lowest val loss)" in said("--max-minutes", 0.001)
    # A best val_loss of 0 that no later epoch beats: the lowest stays epoch 1's.
    state_path = out / ".run" / "state.json"
    state = json.loads(state_path.read_text())
    state["early_stopping"] = {"wait": 0, "best": 0.0, "best_epoch": 0}
    state_path.write_text(json.dumps(state))
    assert "(model.keras: the weights of epoch 3, the last of its cosine schedule)" in said("--resume")

    training = json.loads((out / "config.json").read_text())["training"]
    assert (training["stopped"], training["best_epoch"], training["kept_epoch"]) == ("epochs", 1, 3)
    state = json.loads(state_path.read_text())
    last = keras.models.load_model(out / ".run" / state["checkpoint"], safe_mode=True).get_weights()
    best = resume.load_weights_npz(out / ".run" / state["best_weights"])
    kept = keras.models.load_model(out / "model.keras", safe_mode=True, compile=False).get_weights()
    assert all(np.array_equal(k, w) for k, w in zip(kept, last, strict=True))
    assert not all(np.array_equal(k, b) for k, b in zip(kept, best, strict=True))

    # Outputs rewritten by a later call keep the same epoch: a run whose config.json is
    # removed (here with stale predictions beside it, as an earlier version's rule left them)
    # has its outputs written again from its checkpoint.
    finished = tmp_path / "cosine_last_finished"
    shutil.copytree(out, finished)
    (finished / "config.json").unlink()
    stale = artifacts.load_npz(finished / "predictions.npz")
    artifacts.save_npz(finished / "predictions.npz", **{k: v[::-1] for k, v in stale.items()})
    assert _cli(*[finished if a == out else a for a in args], "--resume") == 0
    np.testing.assert_array_equal(artifacts.load_npz(finished / "predictions.npz")["val_proba"],
                                  artifacts.load_npz(out / "predictions.npz")["val_proba"])


def _edited_store(sample_store, tmp_path, split, edit):
    store = tmp_path / "edited"
    shutil.copytree(sample_store, store)
    arrays = artifacts.load_npz(store / f"{split}.npz")
    edit(arrays)
    artifacts.save_npz(store / f"{split}.npz", **arrays)
    return store


def test_classes_missing_from_train_stop_before_training(sample_store, tmp_path, capsys):
    def drop_disgust(arrays):
        arrays["kept"][arrays["labels"] == 1] = False
        arrays["reason"][arrays["labels"] == 1] = "blank"

    store = _edited_store(sample_store, tmp_path, "train", drop_disgust)
    assert _cli("--block", "none", "--bovw", "--features", store, "--out", tmp_path / "m") == 2
    err = capsys.readouterr().err
    assert "classes ['disgust'] are in the val split" in err and err.count("\n") == 1
    assert not (tmp_path / "m").exists()


@pytest.mark.parametrize("args, message", [
    (["--block", "none"], "block=None with bovw=False"),
    (["--block", "cnn5", "--image-size", "16"], "image_size: block 'cnn5' needs images of at least 32 px"),
    (["--block", "cnn5", "--features", "{missing}"], "not a feature store, no manifest.json"),
    (["--block", "cnn5", "--labels", "happy,grumpy"], "unknown emotion 'grumpy'"),
    (["--block", "cnn5", "--resume", "--force"], "choose one"),
    (["--block", "cnn5", "--augment-strength", "10"], "--augment-strength: shear_deg * strength must be below 90"),
    (["--block", "cnn5", "--augment-strength", "2", "--no-augment"], "has no effect with --no-augment"),
    (["--block", "cnn5", "--bovw-units", "64"], "--bovw-units 64 has no effect without --bovw"),
])
def test_bad_input_is_one_line_before_training(args, message, sample_store, tmp_path, capsys):
    args = [a.format(missing=tmp_path / "nothing") for a in args]
    if "--features" not in args:
        args += ["--features", str(sample_store)]
    assert _cli(*args, "--out", tmp_path / "m") == 2
    err = capsys.readouterr().err
    assert message in err and err.startswith("error: ") and err.count("\n") == 1
    assert not (tmp_path / "m").exists()


@pytest.mark.parametrize("args, message", [
    (["--epochs", "0"], "argument --epochs: --epochs must be an int in [1, 100000]; received 0"),
    (["--mixup", "-0.2"], "argument --mixup: --mixup must be a number in [0.0, inf); received -0.2"),
])
def test_numbers_out_of_range_are_refused_as_parsed(args, message, sample_store, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        _cli("--block", "cnn5", *args, "--features", sample_store, "--out", tmp_path / "m")
    assert exit_.value.code == 2 and capsys.readouterr().err.splitlines()[-1].endswith(message + " (see --help)")
    assert not (tmp_path / "m").exists()


def test_bovw_of_the_wrong_width_is_refused(sample_store, tmp_path, capsys):
    def narrow(arrays):
        arrays["bovw"] = arrays["bovw"][:, :2700]

    store = _edited_store(sample_store, tmp_path, "val", narrow)
    assert _cli("--block", "none", "--bovw", "--features", store, "--out", tmp_path / "m") == 2
    assert "array 'bovw' has shape (105, 2700), expected (105, 2728)" in capsys.readouterr().err


def test_unknown_block_is_refused(sample_store, tmp_path, capsys):
    with pytest.raises(SystemExit):
        cli.main(["--block", "resnet9000", "--features", str(sample_store)])
    assert "invalid choice: 'resnet9000'" in capsys.readouterr().err
    with pytest.raises(ValueError, match="block must be one of"):
        training.train_variant(sample_store, "resnet9000", out=tmp_path / "m")


def test_mixup_blends_inputs_and_labels_of_the_same_augmented_batch(sample_store):
    from ensemble_fer.features.augment import AugmentConfig

    splits, _ = data.load_splits(FeatureStore(sample_store), get_label_set("fer7"))

    def first_batch(mixup):
        ds, _ = data.train_dataset(splits["train"], "cnn5", True, 7, 64, 0, 0, 1, AugmentConfig(),
                                       mixup=mixup)
        x, y = next(iter(ds))
        return x["image"].numpy()[..., 0].astype(np.float64), x["bovw"].numpy(), y.numpy()

    image, bovw, y = first_batch(0.0)
    mixed_image, mixed_bovw, mixed_y = first_batch(0.4)
    assert set(np.unique(y)) == {0.0, 1.0}
    np.testing.assert_allclose(mixed_y.sum(axis=1), 1.0, atol=1e-6)
    # Each row keeps the larger share and its class; the rest is one other row of the batch.
    lam = mixed_y.max(axis=1)
    assert (lam >= 0.5).all() and (lam < 0.999).any()
    np.testing.assert_array_equal(mixed_y.argmax(axis=1)[lam > 0.5], y.argmax(axis=1)[lam > 0.5])
    for i in np.flatnonzero(lam < 0.9)[:5]:
        partners = [j for j in range(len(y)) if np.allclose(
            mixed_bovw[i], lam[i] * bovw[i] + (1 - lam[i]) * bovw[j], atol=1e-4)]
        assert len(partners) == 1, i
        j = partners[0]
        assert np.abs(mixed_image[i] - (lam[i] * image[i] + (1 - lam[i]) * image[j])).max() <= 0.51
        expected = lam[i] * y[i] + (1 - lam[i]) * y[j]
        np.testing.assert_allclose(mixed_y[i], expected, atol=1e-6)


def test_augmented_batches_keep_image_and_bovw_together_and_repeat_by_seed(sample_store):
    from ensemble_fer.features.augment import AugmentConfig

    splits, _ = data.load_splits(FeatureStore(sample_store), get_label_set("fer7"))
    train = splits["train"]

    def batches(first_epoch, last_epoch, seed=0):
        ds, steps = data.train_dataset(train, "cnn5", True, 7, 64, seed, first_epoch, last_epoch,
                                           AugmentConfig())
        return [(x["image"].numpy(), x["bovw"].numpy(), y.numpy()) for x, y in ds], steps

    run, steps = batches(0, 2)
    assert steps == 5 and len(run) == 10 and sum(len(b[2]) for b in run[:5]) == 279
    image, features, y = run[0]
    assert image.shape == (64, 48, 48, 1) and image.dtype == np.uint8 and y.shape == (64, 7)
    # The BOVW describes the augmented image: its HOG is that of the image in the batch.
    np.testing.assert_allclose(features[:, 136:], sliding_hog(image[..., 0]), atol=1e-5)
    originals = {b.tobytes() for b in train.images}
    assert image[0, ..., 0].tobytes() not in originals          # the image was transformed
    np.testing.assert_allclose(features, assemble_bovw(features[:, :136].reshape(-1, 68, 2),
                                                       features[:, 136:]))
    # Epoch 1 is the same whether the pipeline starts at epoch 0 or (resumed) at epoch 1.
    resumed, _ = batches(1, 2)
    for a, b in zip(run[5:], resumed):
        for x, z in zip(a, b):
            np.testing.assert_array_equal(x, z)
    assert not np.array_equal(run[0][2], run[5][2])               # a new order every epoch
    other, _ = batches(0, 1, seed=1)
    assert not np.array_equal(other[0][0], run[0][0])


def test_resume_writes_the_outputs_of_a_run_cut_short_after_training(trained, sample_store, tmp_path):
    out = tmp_path / "finished"
    shutil.copytree(trained, out)
    for name in ("config.json", "metrics.json", "predictions.npz"):
        (out / name).unlink()
    assert _cli("--block", "cnn5", "--bovw", "--features", sample_store, "--out", out, "--epochs", 1,
                "--class-weight", "balanced", "--seed", 3, "--resume") == 0
    np.testing.assert_allclose(artifacts.load_npz(out / "predictions.npz")["val_proba"],
                               artifacts.load_npz(trained / "predictions.npz")["val_proba"], atol=1e-6)
    assert json.loads((out / "config.json").read_text())["training"]["epochs_run"] == 1


def test_from_arguments_validates_without_training():
    resolved = TrainConfig.from_arguments(block="cnn5", lr=0.01, weights="none").to_json()
    assert resolved["lr"] == 0.01 and resolved["weights"] is None and resolved["image_size"] == 48
    assert resolved["epochs"] == 50 and resolved["class_weight"] == "none"
    with pytest.raises(ValueError, match="label_smoothing must be a number in"):
        TrainConfig.from_arguments(block="cnn5", label_smoothing=1.5)
    with pytest.raises(ValueError, match="learning_rate: not an argument of train_variant"):
        TrainConfig.from_arguments(block="cnn5", learning_rate=0.1)
    with pytest.raises(ValueError, match=r"lr_schedule must be one of \('plateau', 'cosine'\); received 'step'"):
        TrainConfig.from_arguments(block="cnn5", lr_schedule="step")


@pytest.mark.parametrize("kwargs, message", [
    ({"dense_units": -1}, "dense_units must be an int >= 0; received -1"),
    ({"dense_units": 2.5}, "dense_units must be an int >= 0; received 2.5"),
    ({"bovw_units": [256, 0]}, "bovw_units must be a sequence of ints >= 1"),
    ({"bovw_units": 256}, "bovw_units must be a sequence of ints >= 1"),
    ({"bovw_units": [True]}, "received [True]"),
    ({"seed": -1}, "seed must be an int in [0, 4294967295]"),
    ({"seed": 2**32}, "received 4294967296"),
])
def test_from_arguments_refuses_bad_network_sizes_and_seeds(kwargs, message):
    with pytest.raises(ValueError) as error:
        TrainConfig.from_arguments(block=None, bovw=True, **kwargs)
    assert message in str(error.value)


def test_from_arguments_accepts_the_edges():
    resolved = TrainConfig.from_arguments(block=None, bovw=True, seed=2**32 - 1, dense_units=0, bovw_units=(8,)).to_json()
    assert resolved["seed"] == 2**32 - 1 and resolved["dense_units"] == 0 and resolved["bovw_units"] == [8]


def test_resume_accepts_a_run_saved_before_the_aux_arguments_existed(trained, sample_store, tmp_path):
    out = tmp_path / "older"
    shutil.copytree(trained, out)
    state_path = out / ".run" / "state.json"
    state = json.loads(state_path.read_text())
    for key in ("aux_targets", "aux_loss_weight", "lr_schedule"):
        del state["args"][key]
    state_path.write_text(json.dumps(state))
    (out / "config.json").unlink()
    assert _cli("--block", "cnn5", "--bovw", "--features", sample_store, "--out", out, "--epochs", 1,
                "--class-weight", "balanced", "--seed", 3, "--resume") == 0
    assert json.loads((out / "config.json").read_text())["args"]["aux_loss_weight"] == 1.0


def test_resume_accepts_a_run_that_recorded_its_store_by_the_manifest_file_hash(trained, sample_store, tmp_path):
    from ensemble_fer.features.feature_store import FeatureStore

    out = tmp_path / "older"
    shutil.copytree(trained, out)
    state_path = out / ".run" / "state.json"
    state = json.loads(state_path.read_text())
    store = FeatureStore(sample_store)
    # what a run started before store identities were by content recorded
    state["args"]["feature_store"]["manifest_hash"] = store.manifest_file_hash
    state_path.write_text(json.dumps(state))
    (out / "config.json").unlink()
    assert _cli("--block", "cnn5", "--bovw", "--features", sample_store, "--out", out, "--epochs", 1,
                "--class-weight", "balanced", "--seed", 3, "--resume") == 0
    # another store's record is still refused
    state["args"]["feature_store"]["manifest_hash"] = "0123456789abcdef"
    state_path.write_text(json.dumps(state))
    assert _cli("--block", "cnn5", "--bovw", "--features", sample_store, "--out", out, "--epochs", 1,
                "--class-weight", "balanced", "--seed", 3, "--resume") == 2


def _kill_after_first_epoch(args, out):
    """Start a training CLI, SIGKILL it once epoch 1's checkpoint is in its state; returns its pid."""
    import signal
    import subprocess
    import sys
    import time

    from tests.conftest import REPO

    process = subprocess.Popen([sys.executable, "-m", "pipelines.train_variant", *map(str, args), "--quiet"],
                               cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    state_path = out / ".run" / "state.json"
    deadline = time.time() + 600
    while time.time() < deadline and process.poll() is None:
        if state_path.is_file() and json.loads(state_path.read_text())["epoch"] >= 1:
            break
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    _, err = process.communicate()
    assert process.returncode == -signal.SIGKILL, err.decode()[-2000:]
    return process.pid


def test_a_run_killed_after_epoch_1_resumes_bit_identical_to_an_uninterrupted_run(sample_store, tmp_path):
    # Dropout (cnn5's 0.25 and the head's 0.5) and augmentation on: every random draw of training.
    args = ["--block", "cnn5", "--bovw", "--features", sample_store, "--epochs", 3, "--seed", 7,
            "--dropout", 0.5, "--augment"]
    whole = tmp_path / "whole"
    assert _cli(*args, "--out", whole) == 0

    killed = tmp_path / "killed"
    pid = _kill_after_first_epoch([*args, "--out", killed], killed)
    state = json.loads((killed / ".run" / "state.json").read_text())
    assert not state["complete"] and not (killed / "config.json").exists()
    # What a kill in the middle of an atomic save leaves behind (the pid is dead).
    stale = [killed / f".model.keras.tmp-{pid}-x1y2.keras", killed / ".run" / f".state.json.tmp-{pid}-a1b2.tmp",
             killed / ".run" / "scratch-0009.keras"]
    for path in stale:
        path.write_bytes(b"half-written")

    assert _cli(*args, "--out", killed, "--resume") == 0
    assert not [p for p in stale if p.exists()]
    assert sorted(p.name for p in (killed / ".run").iterdir()) == sorted(p.name for p in (whole / ".run").iterdir())
    for name in ("history.csv",):
        assert [r.split(",")[:8] for r in (killed / name).read_text().splitlines()] == \
               [r.split(",")[:8] for r in (whole / name).read_text().splitlines()]
    assert np.array_equal(artifacts.load_npz(killed / "predictions.npz")["val_proba"],
                          artifacts.load_npz(whole / "predictions.npz")["val_proba"])
    resumed_weights = keras.models.load_model(killed / "model.keras", safe_mode=True, compile=False).get_weights()
    whole_weights = keras.models.load_model(whole / "model.keras", safe_mode=True, compile=False).get_weights()
    assert all(np.array_equal(a, b) for a, b in zip(resumed_weights, whole_weights, strict=True))


def test_resume_into_an_epoch_worse_than_the_best_keeps_the_stopping_and_plateau_counters(trained, sample_store,
                                                                                          tmp_path):
    out = tmp_path / "worse"
    shutil.copytree(trained, out)
    (out / "config.json").unlink()
    state_path = out / ".run" / "state.json"
    state = json.loads(state_path.read_text())
    # A best val_loss of 0 that no epoch beats, one epoch short of the patience (10) and of the
    # rate's patience (4); the plateau state in the format saved before (with cooldown_counter).
    state["early_stopping"] = {"wait": 9, "best": 0.0, "best_epoch": 0}
    state["reduce_lr"] = {"wait": 3, "best": 0.0, "cooldown_counter": 0}
    state_path.write_text(json.dumps(state))
    assert _cli("--block", "cnn5", "--bovw", "--features", sample_store, "--out", out, "--epochs", 5,
                "--class-weight", "balanced", "--seed", 3, "--resume") == 0

    config = json.loads((out / "config.json").read_text())["training"]
    assert config["stopped"] == "early stopping" and config["epochs_run"] == 2
    assert config["best_epoch"] == 1 and config["best_val_loss"] == 0.0
    state = json.loads(state_path.read_text())
    assert state["early_stopping"] == {"wait": 10, "best": 0.0, "best_epoch": 0}
    assert state["reduce_lr"] == {"wait": 0, "best": 0.0}
    checkpoint = keras.models.load_model(out / ".run" / state["checkpoint"], safe_mode=True)
    assert float(checkpoint.optimizer.learning_rate) == pytest.approx(5e-4)   # dropped after epoch 2
    rows = [r.split(",") for r in (out / "history.csv").read_text().splitlines()[1:]]
    assert [float(r[7]) for r in rows] == pytest.approx([1e-3, 1e-3])         # the rates the epochs used
    # The outputs hold the best epoch's weights (epoch 1's, saved before the interruption).
    assert np.array_equal(artifacts.load_npz(out / "predictions.npz")["val_proba"],
                          artifacts.load_npz(trained / "predictions.npz")["val_proba"])


def test_stopping_and_plateau_state_round_trips_through_state_and_load_state():
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile(keras.optimizers.SGD(learning_rate=0.1), "mse")
    best = [np.full_like(w, 7.0) for w in model.get_weights()]

    stopping = resume._EarlyStopping(patience=2)
    stopping.set_model(model)
    stopping.load_state({"wait": 1, "best": 0.5, "best_epoch": 3}, best)
    stopping.on_epoch_end(5, {"val_loss": 0.7})
    assert model.stop_training and stopping.stopped_epoch == 5
    assert stopping.state() == {"wait": 2, "best": 0.5, "best_epoch": 3}
    stopping.on_train_end()
    assert all(np.array_equal(w, b) for w, b in zip(model.get_weights(), best))

    plateau = resume._ReduceLROnPlateau(factor=0.5, patience=2, min_lr=1e-6)
    plateau.set_model(model)
    plateau.load_state({"wait": 1, "best": 0.5})
    logs = {"val_loss": 0.49995}                 # not better by min_delta (1e-4)
    plateau.on_epoch_end(5, logs)
    assert logs["learning_rate"] == pytest.approx(0.1)
    assert float(model.optimizer.learning_rate) == pytest.approx(0.05)
    assert plateau.state() == {"wait": 0, "best": 0.5}
    plateau.on_epoch_end(6, {"val_loss": 0.3})
    assert plateau.state() == {"wait": 0, "best": 0.3}


def test_resume_of_a_run_killed_before_its_first_checkpoint_starts_over_without_its_leftovers(sample_store,
                                                                                             tmp_path):
    out = tmp_path / "early_kill"
    (out / ".run").mkdir(parents=True)
    leftover = out / ".run" / ".scratch-0001.keras.tmp-999999999-ab12.keras"   # no state.json yet
    leftover.write_bytes(b"half-written")
    assert _cli("--block", "none", "--bovw", "--features", sample_store, "--out", out, "--epochs", 1,
                "--no-augment", "--resume") == 0
    state = json.loads((out / ".run" / "state.json").read_text())
    assert state["complete"] and (out / "config.json").is_file()
    assert sorted(p.name for p in (out / ".run").iterdir()) == sorted(
        ["state.json", state["checkpoint"], state["best_weights"]])


def test_what_the_user_gave_is_refused_with_input_errors(sample_store, tmp_path):
    """Arguments, output folders and saved runs are the user's: InputError (one line, exit 2 from
    the CLIs; still a ValueError, and a FileNotFoundError for what is missing)."""
    from ensemble_fer.errors import InputError

    with pytest.raises(InputError, match="label_smoothing must be a number in"):
        TrainConfig.from_arguments(block="cnn5", label_smoothing=1.5)
    with pytest.raises(InputError, match="block must be one of"):
        training.train_variant(sample_store, "resnet9000", out=tmp_path / "m")
    with pytest.raises(FileNotFoundError, match="not a trained variant") as missing:
        load_variant(tmp_path)
    assert isinstance(missing.value, InputError)
    (tmp_path / "file").write_text("")
    with pytest.raises(InputError, match="out: must be a folder"):
        resume.check_out(tmp_path / "file", {}, resume=False, force=False, say=print)
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "model.keras").write_text("")
    (tmp_path / "old" / "config.json").write_text("{}")     # a variant made before the output marker
    with pytest.raises(InputError, match="already holds a variant"):
        resume.check_out(tmp_path / "old", {}, resume=False, force=False, say=print)
    with pytest.raises(InputError, match="no checkpoint to resume from"):
        resume.check_out(tmp_path / "old", {}, resume=True, force=False, say=print)
    # a user's folder that happens to hold an output's name: neither trained into nor cleared
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "config.json").write_text("a user's config")
    for force in (False, True):
        with pytest.raises(InputError, match=r"mine holds files and is not a variant's folder \(no "
                                             r"\.ensemble_fer-output, \.run/ or model.keras and config.json\)"):
            resume.check_out(mine, {}, resume=False, force=force, say=print)
    assert [p.name for p in mine.iterdir()] == ["config.json"]


@pytest.mark.parametrize("out_kind, flags, message", [
    ("file", [], "out: must be a folder"),
    ("user folder", ["--force"], "holds files and is not a variant's folder"),
    ("new", ["--resume", "--force"], "resume and force: choose one"),
])
def test_out_and_flags_are_refused_before_the_store_is_read(out_kind, flags, message, sample_store, tmp_path,
                                                            monkeypatch, capsys):
    """These answers need only the folder and the flags: they come before the splits are read
    (16 s on FER2013), not after."""
    def must_not_run(*args, **kwargs):
        raise AssertionError("the store was read before the output was checked")

    monkeypatch.setattr(training, "load_splits", must_not_run)
    out = occupied_output(tmp_path / "m", out_kind)
    assert _cli("--block", "none", "--bovw", "--features", sample_store, "--out", out, *flags) == 2
    assert message in capsys.readouterr().err
    assert out_kind == "new" and not out.exists() or out.exists()


def _raising_in(module_name, exc):
    """A function that raises ``exc`` from a frame of ``module_name``: what a bug in that module's
    own code (a ``raise`` statement, or a lookup such as ``state["phase"]``) looks like."""
    namespace = {"__name__": module_name, "exc": exc}
    exec("def bug(*args, **kwargs):\n    raise exc\n", namespace)
    return namespace["bug"]


@pytest.mark.parametrize("bug", [KeyError("phase"), RuntimeError("shape mismatch"),
                                 ValueError("operands could not be broadcast together")])
def test_a_bug_in_training_shows_its_traceback(bug, sample_store, tmp_path, monkeypatch, capsys):
    # Not "error: 'phase'" with exit 2: only InputError is the user's problem (issue 13, item 14).
    monkeypatch.setattr(training, "load_splits", _raising_in("ensemble_fer.training.train", bug))
    with pytest.raises(type(bug)) as info:
        _cli("--block", "none", "--bovw", "--features", sample_store, "--out", tmp_path / "m")
    assert info.value is bug
    assert "error:" not in capsys.readouterr().err


def test_a_log_hears_early_how_long_the_first_epoch_takes(sample_store, tmp_path, capsys):
    """Not attached to a terminal (Keras then prints one line per epoch, at its end): the
    steps before the first epoch are said, and early in the epoch one line gives the batches
    done and the epoch's expected length."""
    import re

    from pipelines import train_variant

    assert train_variant.main(["--block", "cnn5", "--features", str(sample_store), "--out", str(tmp_path / "v"),
                               "--epochs", "1", "--no-augment", "--batch-size", "16"]) == 0
    out = capsys.readouterr().out
    assert "loading the rows of" in out and "building the network (cnn5)" in out
    early = re.search(r"epoch 1: (\d+)/(\d+) batches in \d+ s; about \d+ s left in this epoch \(\d+ s per epoch\)",
                      out)
    # After 5 batches, or sooner on a slow machine (15 s): never after the epoch.
    assert early and 2 <= int(early[1]) < int(early[2]), out
    assert out.index(early[0]) < out.index("wrote")
