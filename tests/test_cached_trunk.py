"""Training a pretrained block on cached trunk outputs (``training/cached_trunk.py``): the cut
network computes what the whole one does, the frozen layers never move, and a killed cached
run resumes bit-identical. Real TensorFlow on the ported VGGFace2 MobileNet at its smallest
side (32 px), on the bundled sample."""

from __future__ import annotations

import json
import re

import keras
import numpy as np
import pytest

from ensemble_fer import artifacts
from ensemble_fer.errors import InputError
from ensemble_fer.features.feature_store import FeatureStore
from ensemble_fer.labels import get_label_set
from ensemble_fer.models import networks
from ensemble_fer.models.weights import WeightsUnavailableError, load_converted_weights
from ensemble_fer.training import cached_trunk
from ensemble_fer.training.config import TrainConfig
from ensemble_fer.training.data import load_splits
from pipelines import train_variant as cli

BLOCK = "faceres_mobilenet"
CUT = "conv_dw_12"


def _ported_or_skip():
    from ensemble_fer.models.faceres import VGGFACE2_FACERES_WEIGHTS

    try:
        return VGGFACE2_FACERES_WEIGHTS.fetch(BLOCK)
    except WeightsUnavailableError as exc:   # a checkout without pretrained/
        pytest.skip(str(exc))


@pytest.fixture(scope="module")
def sample_rows(sample_store):
    splits, _ = load_splits(FeatureStore(sample_store), get_label_set("fer7"))
    return splits["val"]


@pytest.mark.parametrize("cut", [None, CUT])
def test_the_cut_network_computes_what_the_whole_network_does(sample_rows, cut):
    _ported_or_skip()
    model = networks.build_network(BLOCK, True, 7, image_size=32, bovw_adapt_data=sample_rows.bovw)
    whole = model.predict({"image": sample_rows.images[..., None], "bovw": sample_rows.bovw}, verbose=0)
    split = cached_trunk.split_network(model, BLOCK, cut, bovw=True)
    cache = cached_trunk.cache_split(split.bottom, sample_rows, 1, True, None)
    top = split.top.predict({cached_trunk.FEATURES_INPUT: cached_trunk.decode(cache.features[0]),
                             "bovw": cache.bovw[0]}, verbose=0)
    # Pooled (float16) cache: the same probabilities to ~3 digits; a cut at a ReLU6 (uint8 steps
    # of 6/255) to ~2 (a mixed-bfloat16 run's own rounding is of the same size).
    assert np.abs(top - whole).max() < (2e-3 if cut is None else 1e-2)
    assert (top.argmax(1) == whole.argmax(1)).mean() > 0.97
    # The cut shares the network's layers: no copies of any weight.
    whole_ids = {id(v) for v in model.weights}
    assert all(id(v) in whole_ids for v in split.top.weights)
    assert all(id(v) in whole_ids for v in split.bottom.weights)


@pytest.mark.parametrize("cut, dtype", [(None, np.float16), (CUT, np.uint8)])
def test_a_cut_at_a_relu6_is_cached_in_uint8_steps(sample_rows, cut, dtype):
    """The cache of a ReLU6's output takes 1 byte a value: every value within half a step of
    what the frozen layers compute; a pooled output (unbounded in general) stays float16."""
    _ported_or_skip()
    model = networks.build_network(BLOCK, False, 7, image_size=32)
    split = cached_trunk.split_network(model, BLOCK, cut, bovw=False)
    cache = cached_trunk.cache_split(split.bottom, sample_rows, 2, False, None)
    assert cache.features.dtype == dtype
    assert cache.features.shape == (2, len(sample_rows.y), *split.bottom.output.shape[1:])
    exact = split.bottom.predict(sample_rows.images[..., None], verbose=0)
    error = np.abs(cached_trunk.decode(cache.features[0]) - exact).max()
    assert error <= (cached_trunk.RELU6_STEP / 2 + 1e-6 if dtype == np.uint8 else 6 * 2.0 ** -11)
    if dtype == np.uint8:
        assert exact.max() > 1.0 and cache.features.max() <= 255   # ReLU6's range is used, not saturated


def test_the_ported_face_trunk_has_no_batch_norm_to_wreck():
    from ensemble_fer.models.blocks import create_block

    block = create_block(BLOCK, weights=None, image_size=32)
    assert not [layer for layer in block.layers if isinstance(layer, keras.layers.BatchNormalization)]
    assert not block.non_trainable_weights


def _cli(*args):
    return cli.main([str(a) for a in args] + ["--quiet"])


ARGS = ["--block", BLOCK, "--bovw", "--image-size", 32, "--epochs-frozen", 1, "--epochs", 2,
        "--finetune-from", CUT, "--seed", 5, "--batch-size", 32]


@pytest.fixture(scope="module")
def cached_run(sample_store, tmp_path_factory):
    """One uninterrupted run of ARGS (frozen phase, then fine-tuning from CUT), shared: tests
    must not write into it."""
    _ported_or_skip()
    out = tmp_path_factory.mktemp("cached") / "whole"
    assert _cli(*ARGS, "--features", sample_store, "--out", out) == 0
    return out


def test_frozen_layers_never_move_and_the_top_fine_tunes(cached_run):
    path = _ported_or_skip()
    out = cached_run
    config = json.loads((out / "config.json").read_text())
    assert [p["name"] for p in config["training"]["phases"]] == ["frozen", "finetune"]
    trained = keras.models.load_model(out / "model.keras", safe_mode=True, compile=False)
    block = networks.get_block(trained, BLOCK)
    ported = networks.build_network(BLOCK, True, 7, image_size=32, weights=None)
    load_converted_weights(networks.get_block(ported, BLOCK), path)
    ported_block = networks.get_block(ported, BLOCK)
    names = [layer.name for layer in block.layers]
    for layer in block.layers:
        same = all(np.array_equal(a, b) for a, b in zip(layer.get_weights(),
                                                         ported_block.get_layer(layer.name).get_weights()))
        if layer.get_weights():
            assert same == (names.index(layer.name) < names.index(CUT)), layer.name


def test_a_killed_cached_run_resumes_bit_identical(cached_run, sample_store, tmp_path, capsys):
    from tests.test_training import _kill_after_first_epoch

    args = [*ARGS, "--features", sample_store]
    whole = cached_run
    killed = tmp_path / "killed"
    _kill_after_first_epoch([*args, "--out", killed], killed)
    assert not (killed / "config.json").exists()
    kept = killed / ".run" / cached_trunk.TRUNK_CACHE_DIR
    assert (kept / "train" / "view-0.npy").is_file() and (kept / "val" / "view-0.npy").is_file()
    capsys.readouterr()
    # not --quiet: the resume says that it read the cache the killed run kept
    assert cli.main([str(a) for a in args] + ["--out", str(killed), "--resume"]) == 0
    said = capsys.readouterr().out
    # every view of both splits read back, none computed again
    assert re.search(r"train: (\d+) of \1 view\(s\) read from", said) and "val: 1 of 1 view(s) read from" in said
    assert not kept.exists()   # the run is complete: its cache is removed
    assert [r.split(",")[:8] for r in (killed / "history.csv").read_text().splitlines()] == \
           [r.split(",")[:8] for r in (whole / "history.csv").read_text().splitlines()]
    assert np.array_equal(artifacts.load_npz(killed / "predictions.npz")["val_proba"],
                          artifacts.load_npz(whole / "predictions.npz")["val_proba"])
    a = keras.models.load_model(killed / "model.keras", safe_mode=True, compile=False).get_weights()
    b = keras.models.load_model(whole / "model.keras", safe_mode=True, compile=False).get_weights()
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))


def test_a_kept_cache_is_read_back_and_computed_again_when_its_inputs_change(sample_rows, tmp_path, monkeypatch):
    """``cache_split(keep_in=...)`` keeps each view as it is computed and reads it back on the
    same key; a damaged view is computed again, other crops are another key."""
    import dataclasses

    keras.utils.set_random_seed(0)
    image = keras.Input((48, 48, 1))
    bottom = keras.Model(image, keras.layers.ReLU(6.0)(keras.layers.Conv2D(3, 8, strides=8)(image)))
    keep_in = tmp_path / cached_trunk.TRUNK_CACHE_DIR   # as a run keeps it, in its .run/
    folder = keep_in / sample_rows.name
    said = []
    first = cached_trunk.cache_split(bottom, sample_rows, 2, True, said.append, keep_in=keep_in)
    assert first.features.dtype == np.uint8 and not [s for s in said if "read from" in s]
    assert sorted(p.name for p in folder.iterdir()) == ["bovw-0.npy", "bovw-1.npy", "key.txt",
                                                        "view-0.npy", "view-1.npy"]
    # What is read is what is on disk, not a new computation: a view altered on disk comes back altered.
    altered = np.load(folder / "view-1.npy") ^ np.uint8(1)
    with open(folder / "view-1.npy", "wb") as handle:
        np.save(handle, altered)
    said.clear()
    again = cached_trunk.cache_split(bottom, sample_rows, 2, True, said.append, keep_in=keep_in)
    assert [s for s in said if "2 of 2 view(s) read from" in s]
    np.testing.assert_array_equal(again.features[0], first.features[0])
    np.testing.assert_array_equal(again.features[1], altered)
    np.testing.assert_array_equal(again.bovw, first.bovw)
    # A file cut short is computed again (and kept again).
    (folder / "view-1.npy").write_bytes((folder / "view-1.npy").read_bytes()[:200])
    said.clear()
    from ensemble_fer.features import augment

    warped, tta_view = [], augment.tta_view
    monkeypatch.setattr(augment, "tta_view", lambda images, points, index: warped.append(index)
                        or tta_view(images, points, index))
    again = cached_trunk.cache_split(bottom, sample_rows, 2, True, said.append, keep_in=keep_in)
    assert [s for s in said if "1 of 2 view(s) read from" in s]
    assert [s for s in said if "computing view" in s] == [f"  {sample_rows.name}: computing view 2/2"]
    assert warped == [1]   # only the view it lacks is made (warped, its HOG computed)
    monkeypatch.undo()
    np.testing.assert_array_equal(again.features, first.features)
    np.testing.assert_array_equal(np.load(folder / "view-1.npy"), first.features[1])
    # Other crops: another key, so nothing kept is used.
    other = dataclasses.replace(sample_rows, images=np.ascontiguousarray(sample_rows.images[:, ::-1]))
    said.clear()
    changed = cached_trunk.cache_split(bottom, other, 2, True, said.append, keep_in=keep_in)
    assert not [s for s in said if "read from" in s]
    assert not np.array_equal(changed.features, first.features)
    cached_trunk.discard_kept(tmp_path)
    assert not keep_in.exists()


def test_finetune_from_is_checked():
    with pytest.raises(InputError, match="finetune_from: only for a pretrained block"):
        TrainConfig(block="cnn5", finetune_from="conv1")
    with pytest.raises(InputError, match="finetune_from: only for a pretrained block"):
        TrainConfig(block=BLOCK, weights="none", finetune_from=CUT)
    model = networks.build_network(BLOCK, False, 7, image_size=32, weights=None)
    with pytest.raises(InputError, match="has no layer 'conv_dw_99'") as info:
        cached_trunk.split_network(model, BLOCK, "conv_dw_99", bovw=False)
    assert "\n" not in str(info.value)


def test_a_cached_row_takes_the_teacher_s_target_of_its_own_view():
    """With the teacher's fixed views (distill.TeacherViews), a cached phase's row drawn view v
    gets the teacher's target of view v: the cache's views are the teacher's (both TTA_VIEWS)."""
    rng = np.random.default_rng(0)
    n, k = 50, 6
    features = rng.random((k, n, 2, 2, 3)).astype(cached_trunk.CACHE_DTYPE)
    soft = rng.dirichlet(np.ones(7), size=(k, n)).astype(np.float32)
    y = rng.integers(7, size=n)
    cached = cached_trunk.CachedSplit(features, None, y, soft)
    ds, _ = cached_trunk.train_dataset(cached, 7, 16, seed=3, first_epoch=2, last_epoch=3, distill_weight=0.7)
    x, target = next(iter(ds))
    rows = np.sort(np.random.default_rng([3, 2]).permutation(n)[:16])
    view = np.random.default_rng([3, 2, cached_trunk.VIEW_STREAM]).integers(k, size=n)[rows]
    np.testing.assert_array_equal(x[cached_trunk.FEATURES_INPUT].numpy(), features[view, rows].astype(np.float32))
    np.testing.assert_allclose(target.numpy(), 0.3 * np.eye(7)[y[rows]] + 0.7 * soft[view, rows], atol=1e-6)


def test_pooling_a_cut_cache_reports_progress_and_decodes_its_steps():
    # a cut low in a block is pooled for the frozen phase in minutes: say hears of every 20 batches
    rest = keras.Sequential([keras.Input((2, 2, 3)), keras.layers.GlobalAveragePooling2D()])
    features = np.arange(2 * 45 * 12, dtype=np.int64).reshape(2, 45, 2, 2, 3) % 256
    cached = cached_trunk.CachedSplit(features.astype(np.uint8), None, np.zeros(45, int))
    said = []
    pooled = cached_trunk.pooled_from(rest, cached, batch_size=2, say=said.append, what="train")
    assert said == [f"  pooling train view {v}/2: {n}/45" for v in (1, 2) for n in (40,)]
    expected = (features * cached_trunk.RELU6_STEP).mean(axis=(2, 3))
    assert pooled.features.shape == (2, 45, 3)
    np.testing.assert_allclose(pooled.features.astype(np.float32), expected, rtol=1e-3)
