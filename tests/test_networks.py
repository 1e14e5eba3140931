"""The two-input network: inputs, branches, layer names, safe-mode reload, precision."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from ensemble_fer.models import blocks, networks
from ensemble_fer.features.bovw import BOVW_SIZE

COMPACT = [name for name in blocks.list_blocks() if not blocks.get_block_spec(name).pretrained]
HEAVY = [name for name in blocks.list_blocks() if blocks.get_block_spec(name).pretrained]


def _smallest_size(name: str) -> int:
    return blocks.get_block_spec(name).min_size


def _bovw_rows(n=40, seed=0):
    rng = np.random.default_rng(seed)
    rows = rng.normal(5.0, 2.0, size=(n, BOVW_SIZE)).astype(np.float32)
    rows[:, 200] = 0.25   # a constant HOG value, as in a cell that is always empty
    return rows


def _inputs(model, n=3, seed=0):
    rng = np.random.default_rng(seed)
    x = {}
    names = {t.name for t in model.inputs}
    if networks.IMAGE_INPUT in names:
        x[networks.IMAGE_INPUT] = rng.integers(0, 256, size=(n, 48, 48, 1), dtype=np.uint8)
    if networks.BOVW_INPUT in names:
        x[networks.BOVW_INPUT] = _bovw_rows(n, seed)
    return x


def _predict(model, x):
    # A direct call: no tf.function to trace, much faster than predict() on a few rows.
    return keras.ops.convert_to_numpy(model(x, training=False))


def _all_layers(model):
    for layer in model.layers:
        yield layer
        if isinstance(layer, keras.Model):
            yield from _all_layers(layer)


@pytest.mark.parametrize("block", blocks.list_blocks())
def test_every_block_builds_a_two_input_network(block):
    spec = blocks.get_block_spec(block)
    size = _smallest_size(block) if block in HEAVY else None
    model = networks.build_network(block, True, 5, weights=None, image_size=size, bovw_adapt_data=_bovw_rows())

    inputs = {t.name: t for t in model.inputs}
    assert set(inputs) == {"image", "bovw"}
    assert inputs["image"].dtype == "uint8" and tuple(inputs["image"].shape) == (None, 48, 48, 1)
    assert inputs["bovw"].dtype == "float32" and tuple(inputs["bovw"].shape) == (None, BOVW_SIZE)
    assert tuple(model.output.shape) == (None, 5)
    names = [layer.name for layer in model.layers]
    assert networks.get_block(model, block).name == block
    assert ("gray_to_rgb" in names) == (spec.channels == 3)
    assert ("image_resize" in names) == ((size or spec.default_size) != 48)
    assert "image_pool" in names and "bovw_norm" in names and names[-1] == "probabilities"
    # No Lambda anywhere: a Lambda would make the saved model unloadable in safe mode.
    assert not any(isinstance(layer, keras.layers.Lambda) for layer in _all_layers(model))


@pytest.mark.parametrize("block", COMPACT)
def test_compact_network_reloads_in_safe_mode_with_the_same_outputs(block, tmp_path):
    model = networks.build_network(block, True, 7, weights=None, bovw_adapt_data=_bovw_rows())
    x = _inputs(model)
    proba = _predict(model, x)
    assert proba.shape == (3, 7)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, atol=1e-5)

    model.save(tmp_path / "m.keras")
    reloaded = keras.models.load_model(tmp_path / "m.keras", safe_mode=True, compile=False)
    np.testing.assert_allclose(_predict(reloaded, x), proba, atol=1e-6)
    assert [layer.name for layer in reloaded.layers] == [layer.name for layer in model.layers]


def test_layer_names_are_the_same_in_every_build():
    first = networks.build_network("cnn5", True, 7, weights=None)
    keras.layers.Dense(3)   # auto-named layers in between must not shift our names
    second = networks.build_network("cnn5", True, 7, weights=None)
    names = [[layer.name for layer in _all_layers(m)] for m in (first, second)]
    assert names[0] == names[1]


def test_bovw_only_and_image_only_networks():
    bovw_only = networks.build_network(None, True, 3, bovw_adapt_data=_bovw_rows())
    assert [t.name for t in bovw_only.inputs] == ["bovw"]
    assert bovw_only.name == "bovw"
    assert _predict(bovw_only, _inputs(bovw_only)).shape == (3, 3)

    image_only = networks.build_network("cnn5", False, 4, weights=None, dense_units=0)
    assert [t.name for t in image_only.inputs] == ["image"]
    assert "concat" not in [layer.name for layer in image_only.layers]
    assert "head_dense" not in [layer.name for layer in image_only.layers]
    assert _predict(image_only, _inputs(image_only)).shape == (3, 4)


def test_bovw_normalisation_uses_the_given_rows_and_floors_the_variance():
    rows = _bovw_rows(200)
    model = networks.build_network(None, True, 3, bovw_adapt_data=rows)
    norm = keras.Model(model.inputs, model.get_layer("bovw_norm").output)
    z = _predict(norm, {"bovw": rows})
    varying = np.ones(BOVW_SIZE, bool)
    varying[200] = False
    np.testing.assert_allclose(z[:, varying].mean(axis=0), 0.0, atol=1e-4)
    np.testing.assert_allclose(z[:, varying].std(axis=0), 1.0, atol=1e-3)
    # The constant feature: floored variance, so a new value gives a finite, moderate input.
    other = rows[:1].copy()
    other[0, 200] = 0.35
    shifted = _predict(norm, {"bovw": other})[0, 200]
    assert np.isfinite(shifted) and abs(shifted - 0.1 / np.sqrt(networks.MIN_VARIANCE)) < 1e-2

    mean, var = networks.bovw_statistics(rows)
    same = networks.build_network(None, True, 3, bovw_mean=mean, bovw_var=var)
    same.set_weights(model.get_weights())
    np.testing.assert_allclose(_predict(same, {"bovw": rows[:5]}),
                               _predict(model, {"bovw": rows[:5]}), atol=1e-6)


def test_softmax_stays_float32_under_mixed_precision():
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        model = networks.build_network("cnn5", True, 7, weights=None, bovw_adapt_data=_bovw_rows())
    finally:
        keras.mixed_precision.set_global_policy(previous)
    assert model.get_layer("logits").compute_dtype == "float16"
    assert model.get_layer("probabilities").compute_dtype == "float32"
    assert model.get_layer("bovw_norm").compute_dtype == "float32"
    assert _predict(model, _inputs(model)).dtype == np.float32


def test_variant_names():
    assert networks.variant_name("resnet50", True) == "resnet50+bovw"
    assert networks.variant_name("cnn5", False) == "cnn5"
    assert networks.variant_name(None, True) == "bovw"
    with pytest.raises(ValueError, match="block"):
        networks.variant_name(None, False)


@pytest.mark.parametrize("kwargs, match", [
    (dict(block=None, bovw=False, n_classes=7), "block=None with bovw=False"),
    (dict(block="cnn5", bovw=False, n_classes=7, image_size=16), "image_size.*at least 32.*received 16"),
    (dict(block=None, bovw=True, n_classes=7, image_size=64), "image_size"),
    (dict(block="no_such_block", bovw=False, n_classes=7), "unknown block"),
    (dict(block="cnn5", bovw=False, n_classes=1), "n_classes must be an int >= 2; received 1"),
    (dict(block="cnn5", bovw=False, n_classes=7, dropout=1.0), r"dropout must be in \[0, 1\)"),
    (dict(block=None, bovw=True, n_classes=7, bovw_mean=np.zeros(BOVW_SIZE)), "together"),
    (dict(block=None, bovw=True, n_classes=7, bovw_adapt_data=np.zeros((4, 10))), r"shape \(n >= 1, 2728\)"),
])
def test_bad_arguments_are_named(kwargs, match):
    with pytest.raises(ValueError, match=match):
        networks.build_network(weights=None, **kwargs)


def test_refused_arguments_are_input_errors():
    """A bad argument is the user's (InputError, one line, exit 2 from the CLIs), not a bug."""
    from ensemble_fer.errors import InputError

    with pytest.raises(InputError, match="block=None with bovw=False"):
        networks.variant_name(None, False)
    with pytest.raises(InputError, match="n_classes must be an int >= 2"):
        networks.build_network("cnn5", False, 1, weights=None)
    with pytest.raises(InputError, match="unknown block"):
        networks.build_network("no_such_block", False, 7, weights=None)
