"""Tests of the image blocks (factory, registry, weights, architectures): every registered block
gets the generic tests for free.

Big blocks are built at their smallest allowed input (resnet50 needs 197 px) and only as often
as needed: one cached random-init model per block is shared by the tests of this module.
"""

from __future__ import annotations

import time

import h5py
import numpy as np
import pytest

import keras

from ensemble_fer.models import (applications, blocks, compact, legacy_h5, preprocessing, registry,
                                 vggface, weights)
from ensemble_fer.models.weights import WeightsUnavailableError
from legacy_h5_files import save_legacy_h5_weights

BLOCKS = blocks.list_blocks()
HEAVY = {name for name in BLOCKS if blocks.get_block_spec(name).pretrained}
_CACHE: dict[str, keras.Model] = {}


def small_size(name: str) -> int:
    return blocks.get_block_spec(name).min_size


def built(name: str) -> keras.Model:
    """One random-init model per block at its smallest input, built once for the module."""
    if name not in _CACHE:
        _CACHE[name] = blocks.create_block(name, weights=None, image_size=small_size(name))
    return _CACHE[name]


def randomize(model: keras.Model, seed: int = 0) -> None:
    """Give every variable (moving statistics included) distinct random values."""
    rng = np.random.default_rng(seed)
    for v in model.weights:
        value = rng.normal(0.0, 0.05, size=tuple(v.shape))
        if "variance" in v.name:
            value = np.abs(value) + 0.5
        v.assign(value.astype(v.dtype))


def assert_same_weights(a: keras.Model, b: keras.Model) -> None:
    wa = {(layer.name, v.name): v for layer in a.layers for v in layer.weights}
    wb = {(layer.name, v.name): v for layer in b.layers for v in layer.weights}
    assert wa.keys() == wb.keys()
    assert len(wa) == len(a.weights)
    for key, v in wa.items():
        np.testing.assert_array_equal(v.numpy(), wb[key].numpy(), err_msg=str(key))


def pixels(shape, n=2, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0, 255, size=(n, *shape)).astype("float32")


@pytest.fixture
def offline_cache(tmp_path, monkeypatch):
    """An empty Keras cache and no downloads."""
    home = tmp_path / "keras_home"
    home.mkdir()
    monkeypatch.setenv("KERAS_HOME", str(home))
    monkeypatch.setenv(weights.OFFLINE_ENV, "1")
    return home


# ------------------------------------------------------------------ registry and specs

def test_registry_has_the_blocks():
    assert set(BLOCKS) >= {"resnet50", "inception_resnet_v2", "cnn5", "complex_cnn",
                           "se_resnet", "vgg_fast"}


@pytest.mark.parametrize("name", BLOCKS)
def test_spec_is_consistent(name):
    spec = blocks.get_block_spec(name)
    assert spec.name == name
    assert spec.channels in (1, 3)
    assert 1 <= spec.min_size <= spec.default_size
    assert spec.default_weights is None or spec.default_weights in spec.allowed_weights
    assert spec.pretrained == (spec.default_weights is not None)
    assert spec.input_shape() == (spec.default_size, spec.default_size, spec.channels)
    with pytest.raises(Exception):
        spec.name = "other"  # frozen


def test_compact_blocks_are_native_grayscale():
    for name in ("cnn5", "complex_cnn", "se_resnet", "vgg_fast", "vgg_wide", "vgg_dw"):
        spec = blocks.get_block_spec(name)
        assert (spec.channels, spec.default_size, spec.default_weights) == (1, 48, None)
        assert 32 <= spec.min_size <= 48


def test_unknown_block_name_lists_valid_names():
    with pytest.raises(ValueError) as info:
        blocks.create_block("resnet51")
    message = str(info.value)
    assert "name" in message and "'resnet51'" in message
    for name in BLOCKS:
        assert name in message
    with pytest.raises(ValueError, match="valid blocks"):
        blocks.get_block_spec("nope")


def test_register_block_rejects_duplicates_and_bad_specs():
    with pytest.raises(ValueError, match="already registered"):
        registry.register_block("cnn5", default_size=48, min_size=32, channels=1,
                              description="", preprocessing=preprocessing.symmetric_preprocessing)
    with pytest.raises(ValueError, match="channels"):
        registry.register_block("x_bad", default_size=48, min_size=32, channels=2,
                              description="", preprocessing=preprocessing.symmetric_preprocessing)
    with pytest.raises(ValueError, match="default_weights"):
        registry.register_block("x_bad", default_size=48, min_size=32, channels=1,
                              description="", preprocessing=preprocessing.symmetric_preprocessing,
                              default_weights="imagenet")
    assert "x_bad" not in blocks.list_blocks()


@pytest.fixture
def exploding_block():
    """A registered block whose builder fails the test if it is ever called."""
    def builder(inputs, name):
        raise AssertionError("the block was built")

    registry.register_block("x_exploding", default_size=48, min_size=40, channels=1,
                          description="test", preprocessing=preprocessing.symmetric_preprocessing)(builder)
    yield "x_exploding"
    registry._REGISTRY.pop("x_exploding", None)


def test_arguments_are_checked_before_building(exploding_block, tmp_path):
    for kwargs in ({"image_size": 39}, {"weights": "imagenet"},
                   {"weights": str(tmp_path / "missing.h5")}, {"image_size": "48"}):
        with pytest.raises(ValueError):
            blocks.create_block(exploding_block, **kwargs)
    with pytest.raises(AssertionError, match="was built"):
        blocks.create_block(exploding_block, weights=None)


# ------------------------------------------------------------------ building and running

@pytest.mark.parametrize("name", BLOCKS)
def test_builds_and_runs_forward(name):
    spec = blocks.get_block_spec(name)
    model = built(name)
    size = small_size(name)
    assert model.name == name
    assert tuple(model.input_shape) == (None, size, size, spec.channels)
    out = model(pixels(spec.input_shape(size)) / 255.0, training=False)
    out = keras.ops.convert_to_numpy(out)
    assert out.ndim == 4 and out.shape[0] == 2 and min(out.shape[1:]) >= 1
    assert np.all(np.isfinite(out))
    names = [layer.name for layer in model.layers]
    assert len(names) == len(set(names))
    assert all("/" not in n for n in names)


@pytest.mark.parametrize("name", sorted(set(BLOCKS) - HEAVY))
def test_compact_block_names_are_deterministic_and_prefixed(name):
    first = built(name)
    keras.layers.Dense(3)  # auto-named objects in between must not change the names
    second = blocks.create_block(name, weights=None, image_size=small_size(name))
    names = [layer.name for layer in first.layers]
    assert names == [layer.name for layer in second.layers]
    assert all(n.startswith(name + "_") for n in names)


@pytest.mark.parametrize("name", sorted(set(BLOCKS) - HEAVY))
def test_compact_block_model_saves_and_loads_safely(name, tmp_path):
    spec = blocks.get_block_spec(name)
    model = built(name)
    path = tmp_path / f"{name}.keras"
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    x = pixels(spec.input_shape(small_size(name))) / 127.5 - 1.0
    np.testing.assert_allclose(keras.ops.convert_to_numpy(model(x, training=False)),
                               keras.ops.convert_to_numpy(loaded(x, training=False)),
                               rtol=1e-5, atol=1e-5)


def test_compact_block_at_default_size_shapes():
    expected = {"cnn5": (12, 12, 64), "complex_cnn": (3, 3, 256), "se_resnet": (6, 6, 256),
                "vgg_fast": (6, 6, 256), "vgg_wide": (6, 6, 384), "vgg_dw": (6, 6, 512)}
    for name, shape in expected.items():
        model = blocks.create_block(name)   # default weights: None for compact blocks
        assert tuple(model.output_shape[1:]) == shape


@pytest.mark.parametrize("name, params, macs, doc", [("vgg_fast", 1_165_216, 96_215_040, "96.2M"),
                                                     ("vgg_wide", 2_618_736, 215_986_176, "216.0M"),
                                                     ("vgg_dw", 531_392, 42_347_520, "42.3M")])
def test_vgg_cost_matches_its_docstring(name, params, macs, doc):
    model = blocks.create_block(name, weights=None)
    assert model.count_params() == params
    counted = 0
    for layer in model.layers:
        if isinstance(layer, keras.layers.SeparableConv2D):
            kernels = int(np.prod(layer.depthwise_kernel.shape)) + int(np.prod(layer.pointwise_kernel.shape))
        elif isinstance(layer, keras.layers.Conv2D):
            kernels = int(np.prod(layer.kernel.shape))
        else:
            continue
        counted += int(np.prod(layer.output.shape[1:3])) * kernels
    assert counted == macs
    assert f"{params:,}" in getattr(compact, name).__doc__ and doc in getattr(compact, name).__doc__


# ------------------------------------------------------------------ preprocessing

@pytest.mark.parametrize("name", BLOCKS)
def test_preprocessing_serialises(name, tmp_path):
    spec = blocks.get_block_spec(name)
    shape = spec.input_shape(small_size(name))
    layers = spec.preprocessing()
    assert layers, "every block has its preprocessing"
    assert not any(isinstance(layer, keras.layers.Lambda) for layer in layers)
    assert all(layer.name.startswith(name + "_") for layer in layers)
    inputs = keras.Input(shape, dtype="float32")
    x = inputs
    for layer in layers:
        x = layer(x)
    model = keras.Model(inputs, x)
    path = tmp_path / "pre.keras"
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    data = pixels(shape)
    out = keras.ops.convert_to_numpy(model(data))
    np.testing.assert_allclose(keras.ops.convert_to_numpy(loaded(data)), out, rtol=1e-6)
    assert out.shape == data.shape and np.all(np.isfinite(out))
    assert [type(layer) for layer in loaded.layers] == [type(layer) for layer in model.layers]


def keras_vggface_preprocess_v2(x: np.ndarray) -> np.ndarray:
    """keras_vggface.utils.preprocess_input(x, version=2), channels_last."""
    x = np.copy(x)[..., ::-1]
    x[..., 0] -= 91.4953
    x[..., 1] -= 103.8827
    x[..., 2] -= 131.0912
    return x


def apply(layers, x):
    for layer in layers:
        x = layer(x)
    return keras.ops.convert_to_numpy(x)


def test_resnet50_preprocessing_is_keras_vggface_version_2():
    x = pixels((5, 7, 3), n=3)
    got = apply(blocks.get_block_spec("resnet50").preprocessing(), x)
    np.testing.assert_allclose(got, keras_vggface_preprocess_v2(x), rtol=1e-6, atol=1e-4)
    # a pure red pixel: channel 2 (R after the flip) minus the R mean
    red = np.zeros((1, 1, 1, 3), "float32")
    red[..., 0] = 255
    got = apply(blocks.get_block_spec("resnet50").preprocessing(), red)[0, 0, 0]
    np.testing.assert_allclose(got, [-91.4953, -103.8827, 255 - 131.0912], rtol=1e-6)


def test_inception_preprocessing_is_keras_applications():
    x = pixels((5, 5, 3))
    got = apply(blocks.get_block_spec("inception_resnet_v2").preprocessing(), x)
    want = keras.applications.inception_resnet_v2.preprocess_input(np.copy(x))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    assert got.min() >= -1 and got.max() <= 1


@pytest.mark.parametrize("name, module", [("vgg16", keras.applications.vgg16),
                                          ("resnet50v2", keras.applications.resnet_v2)])
def test_transfer_preprocessing_is_keras_applications(name, module):
    x = pixels((5, 5, 3))
    got = apply(blocks.get_block_spec(name).preprocessing(), x)
    np.testing.assert_allclose(got, module.preprocess_input(np.copy(x)), rtol=1e-5, atol=1e-4)


def test_efficientnetv2_preprocessing_is_its_include_preprocessing_layers():
    """keras' EfficientNetV2-B* scale inside the model: x / 255, then ImageNet mean and std."""
    x = pixels((5, 5, 3))
    got = apply(blocks.get_block_spec("efficientnetv2b2").preprocessing(), x)
    want = (x / 255.0 - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225])
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------ argument checks

@pytest.mark.parametrize("name", BLOCKS)
def test_input_below_min_size_errors_before_building(name):
    spec = blocks.get_block_spec(name)
    start = time.perf_counter()
    with pytest.raises(ValueError) as info:
        blocks.create_block(name, weights=None, image_size=spec.min_size - 1)
    assert time.perf_counter() - start < 1.0
    message = str(info.value)
    assert "image_size" in message and str(spec.min_size) in message
    assert str(spec.min_size - 1) in message
    for bad in (True, 48.0, "48"):
        with pytest.raises(ValueError, match="image_size"):
            blocks.create_block(name, weights=None, image_size=bad)


@pytest.mark.parametrize("name", BLOCKS)
def test_bad_weights_values(name, tmp_path):
    spec = blocks.get_block_spec(name)
    size = spec.min_size
    with pytest.raises(ValueError) as info:
        blocks.create_block(name, weights="no_such_weights", image_size=size)
    message = str(info.value)
    assert "weights" in message and "'no_such_weights'" in message
    for allowed in spec.allowed_weights:
        assert repr(allowed) in message
    with pytest.raises(ValueError, match="existing file"):
        blocks.create_block(name, weights=tmp_path / "absent.h5", image_size=size)
    with pytest.raises(ValueError, match="weights"):
        blocks.create_block(name, weights=3, image_size=size)
    junk = tmp_path / "junk.h5"
    junk.write_bytes(b"not an hdf5 file")
    with pytest.raises(ValueError, match="HDF5"):
        blocks.create_block(name, weights=str(junk), image_size=size)


def test_none_string_means_random_init():
    model = blocks.create_block("cnn5", weights="None")
    assert model.count_params() == 65_568


# ------------------------------------------------------------------ weights loading

def save_in_published_format(name: str, model: keras.Model, folder) -> str:
    """Save ``model``'s weights as the block's published weight file would be."""
    if name == "resnet50":
        path = folder / "rcmalli_vggface_tf_notop_resnet50.h5"
        published = {legacy_h5.keras_layer_name(n): n for n in vggface.VGGFACE_RESNET50_LAYER_NAMES}
        save_legacy_h5_weights(model, path, layer_names=published)
    elif not blocks.get_block_spec(name).legacy_h5_by_name:   # the keras.applications blocks
        spec = blocks.get_block_spec(name)
        path = folder / spec.weights_file(spec.default_weights).fname
        save_legacy_h5_weights(model, path)   # keras' file: loaded in topological order
    else:
        path = folder / f"{name}.weights.h5"
        model.save_weights(path)
    return str(path)


@pytest.mark.parametrize("name", BLOCKS)
def test_weights_file_round_trip(name, tmp_path):
    source = built(name)
    randomize(source)
    path = save_in_published_format(name, source, tmp_path)
    fresh = blocks.create_block(name, weights=path, image_size=small_size(name))
    assert [layer.name for layer in fresh.layers] == [layer.name for layer in source.layers]
    assert_same_weights(source, fresh)


def test_resnet50_file_has_the_keras_vggface_layout(tmp_path):
    source = built("resnet50")
    path = save_in_published_format("resnet50", source, tmp_path)
    with h5py.File(path, "r") as f:
        layer_names = [n.decode() for n in f.attrs["layer_names"]]
        assert "conv1/7x7_s2" in layer_names and "conv5_3_1x1_increase/bn" in layer_names
        group = f["conv2_1_1x1_proj/bn"]
        assert [n.decode() for n in group.attrs["weight_names"]] == [
            f"conv2_1_1x1_proj/bn/{w}:0" for w in ("gamma", "beta", "moving_mean",
                                                    "moving_variance")]
        assert f["conv1/7x7_s2"]["conv1/7x7_s2/kernel:0"].shape == (7, 7, 3, 64)
    # the published file was written by Keras 2 with its own order: load by name, not order
    reordered = tmp_path / "shuffled.h5"
    with h5py.File(path, "r") as src, h5py.File(reordered, "w") as dst:
        for key, value in src.attrs.items():
            dst.attrs[key] = value
        dst.attrs["layer_names"] = np.array(list(reversed(list(src.attrs["layer_names"]))))
        for key in src:
            src.copy(key, dst)
    target = blocks.create_block("resnet50", weights=None)
    report = legacy_h5.load_legacy_h5_weights(target, reordered, by_name=True)
    assert len(report.matched) == len(vggface.VGGFACE_RESNET50_LAYER_NAMES) == 106
    assert not report.unmatched_model_layers
    assert_same_weights(source, target)


def test_resnet50_architecture_is_keras_vggface():
    model = built("resnet50")
    with_weights = [layer.name for layer in model.layers if layer.weights]
    assert sorted(with_weights) == sorted(
        legacy_h5.keras_layer_name(n) for n in vggface.VGGFACE_RESNET50_LAYER_NAMES)
    convs = [layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]
    bns = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    assert len(convs) == len(bns) == 53
    assert not any(layer.use_bias for layer in convs)
    assert all(layer.epsilon == 1e-3 and layer.momentum == 0.99 for layer in bns)
    stem = model.get_layer("conv1_7x7_s2")
    assert stem.kernel_size == (7, 7) and stem.strides == (2, 2) and stem.padding == "same"
    assert model.get_layer("conv2_1_1x1_reduce").strides == (1, 1)
    for stage in (3, 4, 5):
        assert model.get_layer(f"conv{stage}_1_1x1_reduce").strides == (2, 2)
        assert model.get_layer(f"conv{stage}_1_1x1_proj").strides == (2, 2)
        assert model.get_layer(f"conv{stage}_1_3x3").strides == (1, 1)
    assert model.get_layer("avg_pool").pool_size == (7, 7)
    assert tuple(model.output_shape) == (None, 1, 1, 2048)
    # parameters from the architecture: conv kernels + 4 per batch-norm channel
    expected = sum(int(np.prod(c.kernel.shape)) + 4 * c.filters for c in convs)
    assert model.count_params() == expected == 23_561_152


@pytest.mark.parametrize("name, application", [("vgg16", "VGG16"), ("resnet50v2", "ResNet50V2"),
                                               ("efficientnetv2b2", "EfficientNetV2B2")])
def test_transfer_block_takes_the_keras_applications_file(name, application):
    """Same layers with weights, in the same order and shapes, as the keras.applications model
    that keras loads its ImageNet file into (topologically), in-model scaling included."""
    def layout(model):
        return [(layer.name, [tuple(v.shape) for v in layer.weights])
                for layer in model.layers if layer.weights]

    size = small_size(name)
    theirs = getattr(keras.applications, application)(include_top=False, weights=None,
                                                        input_shape=(size, size, 3))
    assert layout(built(name)) == layout(theirs)
    assert built(name).layers[-1].name == theirs.layers[-1].name


def test_legacy_h5_under_model_weights_and_reports(tmp_path):
    source = blocks.create_block("cnn5", weights=None)
    randomize(source, seed=1)
    flat = tmp_path / "flat.h5"
    save_legacy_h5_weights(source, flat)
    nested = tmp_path / "whole_model.h5"   # a Keras 2 model.save(): weights under model_weights
    with h5py.File(flat, "r") as src, h5py.File(nested, "w") as dst:
        group = dst.create_group("model_weights")
        for key, value in src.attrs.items():
            group.attrs[key] = value
        for key in src:
            src.copy(key, group)
    fresh = blocks.create_block("cnn5", weights=str(nested))
    assert_same_weights(source, fresh)

    # a file with only some of the layers: loaded, and the rest reported
    partial = tmp_path / "partial.h5"
    with h5py.File(flat, "r") as src, h5py.File(partial, "w") as dst:
        keep = [n for n in src.attrs["layer_names"] if b"_s1_" in n]
        dst.attrs["layer_names"] = np.array(keep)
        for key in keep:
            src.copy(key.decode(), dst)
    target = blocks.create_block("cnn5", weights=None)
    with pytest.warns(UserWarning, match="not in the file"):
        report = legacy_h5.load_legacy_h5_weights(target, partial)
    assert sorted(report.matched) == ["cnn5_s1_c1_bn", "cnn5_s1_c1_conv", "cnn5_s1_c2_bn",
                                      "cnn5_s1_c2_conv"]
    assert "cnn5_s2_c1_conv" in report.unmatched_model_layers

    # a file of another block: no layer matches -> error naming both sides
    other = tmp_path / "other.h5"
    save_legacy_h5_weights(blocks.create_block("vgg_fast", weights=None), other)
    with pytest.raises(ValueError, match="no layer .* matches"):
        blocks.create_block("cnn5", weights=str(other))


def test_legacy_h5_shape_mismatch_is_an_error(tmp_path):
    path = tmp_path / "wide.h5"
    save_legacy_h5_weights(blocks.create_block("cnn5", weights=None, image_size=32), path)
    with h5py.File(path, "a") as f:
        del f["cnn5_s1_c1_conv"]["cnn5_s1_c1_conv/kernel:0"]
        f["cnn5_s1_c1_conv"].create_dataset("cnn5_s1_c1_conv/kernel:0",
                                            data=np.zeros((3, 3, 3, 32), "float32"))
    with pytest.raises(ValueError, match="shape"):
        blocks.create_block("cnn5", weights=str(path))


def test_native_weights_need_the_keras_suffix(tmp_path):
    model = blocks.create_block("cnn5", weights=None)
    model.save_weights(tmp_path / "w.weights.h5")
    renamed = tmp_path / "w.h5"
    (tmp_path / "w.weights.h5").rename(renamed)
    with pytest.raises(ValueError, match=r"\.weights\.h5"):
        blocks.create_block("cnn5", weights=str(renamed))


# ------------------------------------------------------------------ pretrained weights, offline

def downloaded_default(name: str) -> bool:
    """Pretrained with default weights from the Keras cache / a download (not ported into pretrained/:
    those are tested in test_ported_blocks.py)."""
    spec = blocks.get_block_spec(name)
    return spec.pretrained and not isinstance(spec.weights_file(spec.default_weights), weights.ConvertedWeights)


@pytest.mark.parametrize("name", [n for n in BLOCKS if downloaded_default(n)])
def test_offline_default_weights_error_says_what_to_do(name, offline_cache):
    spec = blocks.get_block_spec(name)
    file = spec.weights_file(spec.default_weights)
    start = time.perf_counter()
    with pytest.raises(WeightsUnavailableError) as info:
        blocks.create_block(name)   # default weights
    assert time.perf_counter() - start < 5
    assert isinstance(info.value, RuntimeError)
    message = str(info.value)
    assert str(offline_cache / "models" / file.fname) in message
    assert file.origin in message and "--weights none" in message
    assert not (offline_cache / "models" / file.fname).exists()


def test_unreachable_origin_fails_fast(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    monkeypatch.delenv(weights.OFFLINE_ENV, raising=False)
    file = weights.WeightsFile(name="x", fname="x.h5", origin="http://127.0.0.1:9/x.h5",
                              file_hash=None)
    start = time.perf_counter()
    with pytest.raises(WeightsUnavailableError, match="cannot be reached|download failed"):
        file.fetch("cnn5")
    assert time.perf_counter() - start < 10


def test_no_internet_default_weights_fail_fast(tmp_path, monkeypatch):
    """The real path on a machine without internet (skipped where the host is reachable)."""
    file = vggface.VGGFACE2_RESNET50_WEIGHTS
    if weights._probe(file.origin) is None:
        pytest.skip("the weights host is reachable: this would download 94 MB")
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    monkeypatch.delenv(weights.OFFLINE_ENV, raising=False)
    start = time.perf_counter()
    with pytest.raises(WeightsUnavailableError, match="--weights none"):
        blocks.create_block("resnet50")
    assert time.perf_counter() - start < 15


def test_cached_default_weights_load_offline(offline_cache):
    source = built("resnet50")
    randomize(source, seed=2)
    cache = offline_cache / "models"
    cache.mkdir()
    save_in_published_format("resnet50", source, cache)
    model = blocks.create_block("resnet50")   # default 'vggface2', found in the cache
    assert_same_weights(source, model)


def test_cached_file_with_a_wrong_hash_is_not_used_offline(offline_cache):
    file = applications.IMAGENET_INCEPTION_RESNET_V2_WEIGHTS
    (offline_cache / "models").mkdir()
    (offline_cache / "models" / file.fname).write_bytes(b"corrupt")
    with pytest.raises(WeightsUnavailableError, match="expected hash"):
        blocks.create_block("inception_resnet_v2", image_size=75)


def test_refused_blocks_and_weights_are_input_errors(tmp_path):
    """The user's block names, sizes and weight files are InputError (one line, exit 2 from the
    CLIs); a bad registration is a programming error and stays a plain ValueError."""
    from ensemble_fer.errors import InputError

    with pytest.raises(InputError, match="valid blocks"):
        blocks.get_block_spec("nope")
    with pytest.raises(InputError, match="image_size"):
        blocks.create_block("cnn5", image_size=8)
    with pytest.raises(InputError, match="neither a named weight set"):
        blocks.create_block("cnn5", weights=str(tmp_path / "missing.h5"))
    assert issubclass(WeightsUnavailableError, InputError) and issubclass(WeightsUnavailableError, RuntimeError)
    with pytest.raises(ValueError, match="already registered") as info:
        registry.register_block("cnn5", default_size=48, min_size=32, channels=1,
                              description="", preprocessing=preprocessing.symmetric_preprocessing)
    assert not isinstance(info.value, InputError)
