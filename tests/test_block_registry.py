"""Fast tests of the block registry, the ``weights=`` / ``image_size`` checks and the weights cache.

No block is built here: a test block whose builder fails if it is ever called shows that every
check happens before building, and the weights cache is exercised with small files.
"""

from __future__ import annotations

import hashlib
import inspect

import h5py
import numpy as np
import pytest

from ensemble_fer.errors import InputError
from ensemble_fer.models import applications, blocks, registry, weights
from ensemble_fer.models.preprocessing import symmetric_preprocessing
from ensemble_fer.models.weights import WeightsFile, WeightsUnavailableError

TRANSFER = ("vgg16", "resnet50v2", "efficientnetv2b2")


def _refuse_to_build(inputs, name):
    raise AssertionError("the block was built")


@pytest.fixture
def unbuildable(tmp_path, monkeypatch):
    """A registered pretrained block that must never be built, offline, with an empty cache."""
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras_home"))
    monkeypatch.setenv(weights.OFFLINE_ENV, "1")
    file = WeightsFile(name="imagenet", fname="x_unbuildable.h5",
                       origin="http://127.0.0.1:9/x_unbuildable.h5", file_hash=None)
    registry.register_block("x_unbuildable", default_size=48, min_size=40, channels=3,
                            description="test", preprocessing=symmetric_preprocessing,
                            default_weights="imagenet", weights_files=(file,),
                            pretrained=True)(_refuse_to_build)
    yield blocks.get_block_spec("x_unbuildable")
    registry._REGISTRY.pop("x_unbuildable", None)


def _hdf5(path):
    with h5py.File(path, "w") as f:
        f.attrs["layer_names"] = np.array([b"dense"])
    return path


# ------------------------------------------------------------------ registry

def test_duplicate_name_is_refused_and_the_first_spec_stays():
    before = blocks.get_block_spec("cnn5")
    with pytest.raises(ValueError, match="name: a block named 'cnn5' is already registered"):
        registry.register_block("cnn5", default_size=48, min_size=32, channels=1, description="",
                                preprocessing=symmetric_preprocessing)
    assert blocks.get_block_spec("cnn5") is before


def test_unknown_name_lists_the_choices():
    with pytest.raises(InputError) as info:
        blocks.get_block_spec("resnet51")
    message = str(info.value)
    assert message.startswith("name: unknown block") and "received 'resnet51'" in message
    assert all(repr(name) in message for name in blocks.list_blocks())


@pytest.mark.parametrize("bad, match", [(dict(channels=2), "channels: must be 1 or 3"),
                                        (dict(min_size=64), "min_size: must be in"),
                                        (dict(min_size=0), "min_size"),
                                        (dict(default_weights="imagenet"), "default_weights")])
def test_bad_specs_are_refused_before_registration(bad, match):
    kwargs = dict(default_size=48, min_size=32, channels=1, description="",
                  preprocessing=symmetric_preprocessing)
    with pytest.raises(ValueError, match=match) as info:
        registry.register_block("x_bad", **{**kwargs, **bad})(_refuse_to_build)
    assert not isinstance(info.value, InputError)   # a programming error, not the user's
    assert "x_bad" not in blocks.list_blocks()


def test_list_follows_the_families_whatever_was_imported_first(unbuildable):
    names = blocks.list_blocks()
    assert names[:12] == ["resnet50", "inception_resnet_v2", "vgg16", "resnet50v2", "efficientnetv2b2",
                          "faceres_mobilenet", "efficientnet_lite0", "squeezenet11",
                          "cnn5", "complex_cnn", "se_resnet", "vgg_fast"]
    assert names[-1] == "x_unbuildable"   # registered outside the families: listed last
    assert blocks.FAMILIES == ("vggface", "applications", "faceres", "efficientnet_lite", "squeezenet",
                                 "compact")


def test_spec_checks_sizes_naming_the_argument():
    spec = blocks.get_block_spec("cnn5")
    assert spec.check_size(None) == 48
    assert spec.check_size(np.int64(40)) == 40 and type(spec.check_size(np.int64(40))) is int
    for bad in (True, 40.0, "40"):
        with pytest.raises(InputError, match=r"^image_size: must be None or an int >= 32"):
            spec.check_size(bad, argument="image_size")
    with pytest.raises(InputError, match=r"^image_size: block 'cnn5' needs images of at least 32 "
                                         r"px \(default 48\); received 31$"):
        spec.check_size(31)


# ------------------------------------------------------------------ weights=, then image_size

def test_weights_are_checked_before_the_image_size(unbuildable):
    with pytest.raises(InputError, match="^weights: .*received 'nope'"):
        blocks.create_block(unbuildable.name, weights="nope", image_size=1)
    with pytest.raises(InputError, match="^weights: .*of type float"):
        blocks.create_block(unbuildable.name, weights=1.5, image_size=1)


def test_image_size_is_checked_before_any_download(unbuildable):
    # Offline with an empty cache: fetching would raise WeightsUnavailableError.
    with pytest.raises(InputError, match="^image_size") as info:
        blocks.create_block(unbuildable.name, image_size=39)
    assert not isinstance(info.value, WeightsUnavailableError)
    with pytest.raises(WeightsUnavailableError):
        blocks.create_block(unbuildable.name, image_size=40)
    with pytest.raises(AssertionError, match="was built"):   # all checks passed
        blocks.create_block(unbuildable.name, weights=None, image_size=40)


def test_resolve_weights(unbuildable, tmp_path):
    spec = unbuildable
    file = spec.weights_file("imagenet")
    assert weights.resolve_weights(spec, None) is None
    assert weights.resolve_weights(spec, "none") is None
    assert weights.resolve_weights(spec, "None") is None
    assert weights.resolve_weights(spec, "default") is file
    assert weights.resolve_weights(spec, "imagenet") is file
    assert weights.resolve_weights(blocks.get_block_spec("cnn5"), "default") is None
    h5 = _hdf5(tmp_path / "w.h5")
    assert weights.resolve_weights(spec, str(h5)) == h5
    archive = tmp_path / "m.keras"
    archive.write_bytes(b"zip")     # .keras archives are left to Keras to read
    assert weights.resolve_weights(spec, archive) == archive

    with pytest.raises(InputError) as info:
        weights.resolve_weights(spec, str(tmp_path / "absent.h5"))
    message = str(info.value)
    assert "neither a named weight set of this block nor an existing file" in message
    assert "'imagenet'" in message and "'default' (= 'imagenet')" in message
    junk = tmp_path / "junk.h5"
    junk.write_bytes(b"not hdf5")
    with pytest.raises(InputError, match="HDF5"):
        weights.resolve_weights(spec, junk)
    with pytest.raises(InputError, match="of type list"):
        weights.resolve_weights(spec, ["imagenet"])


# ------------------------------------------------------------------ the Keras cache

def test_cache_path_follows_keras_home(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "kh"))
    assert weights.keras_cache_dir() == tmp_path / "kh"
    file = WeightsFile(name="imagenet", fname="f.h5", origin="http://x/f.h5", file_hash=None,
                       cache_subdir="models")
    assert file.cache_path() == tmp_path / "kh" / "models" / "f.h5"


@pytest.mark.parametrize("algorithm", ["md5", "sha256"])
def test_cached_file_is_used_when_its_hash_matches(tmp_path, monkeypatch, algorithm):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    monkeypatch.setenv(weights.OFFLINE_ENV, "1")
    content = b"weights"
    digest = hashlib.new(algorithm, content).hexdigest()
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "f.h5").write_bytes(content)
    good = WeightsFile(name="w", fname="f.h5", origin="http://x/f.h5", file_hash=digest.upper())
    assert good.fetch() == tmp_path / "models" / "f.h5"
    unknown = WeightsFile(name="w", fname="f.h5", origin="http://x/f.h5", file_hash=None)
    assert unknown.fetch() == tmp_path / "models" / "f.h5"
    bad = WeightsFile(name="w", fname="f.h5", origin="http://x/f.h5",
                      file_hash="0" * len(digest))
    with pytest.raises(WeightsUnavailableError, match="does not have the expected hash"):
        bad.fetch()


def test_file_found_in_another_cache_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    monkeypatch.setenv(weights.OFFLINE_ENV, "1")
    (tmp_path / "models" / "vggface").mkdir(parents=True)
    (tmp_path / "models" / "vggface" / "f.h5").write_bytes(b"w")
    file = WeightsFile(name="w", fname="f.h5", origin="http://x/f.h5", file_hash=None,
                       also_look_in=("models/vggface",))
    assert file.fetch() == tmp_path / "models" / "vggface" / "f.h5"


def test_offline_error_says_what_to_put_where(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    monkeypatch.setenv(weights.OFFLINE_ENV, "yes")
    file = applications.IMAGENET_VGG16_WEIGHTS
    with pytest.raises(WeightsUnavailableError) as info:
        file.fetch("vgg16")
    message = str(info.value)
    assert "pretrained weights 'imagenet' of block 'vgg16' are not available" in message
    assert f"Download {file.origin} and put it at {tmp_path / 'models' / file.fname}" in message
    assert f"its md5 must be {file.file_hash}" in message
    assert "--weights none" in message and weights.OFFLINE_ENV in message
    assert isinstance(info.value, RuntimeError) and isinstance(info.value, InputError)
    assert not (tmp_path / "models" / file.fname).exists()


# ------------------------------------------------------------------ the transfer models

@pytest.mark.parametrize("name", TRANSFER)
def test_transfer_blocks_are_pretrained_rgb_entries(name):
    spec = blocks.get_block_spec(name)
    assert (spec.channels, spec.default_size, spec.min_size) == (3, 96, 32)
    assert spec.pretrained and spec.default_weights == "imagenet"
    assert not spec.legacy_h5_by_name       # keras' own files: topological order
    file = spec.weights_file("imagenet")
    assert file.fname.endswith("notop.h5") and file.origin.endswith("/" + file.fname)
    assert file.cache_subdir == "models"    # where keras.applications caches the same file


def test_transfer_weights_files_are_those_keras_applications_downloads():
    from keras.src.applications import efficientnet_v2, resnet, vgg16

    assert applications.IMAGENET_VGG16_WEIGHTS.origin == vgg16.WEIGHTS_PATH_NO_TOP
    assert f'file_hash="{applications.IMAGENET_VGG16_WEIGHTS.file_hash}"' in inspect.getsource(vgg16)
    assert applications.IMAGENET_RESNET50V2_WEIGHTS.origin == (
        resnet.BASE_WEIGHTS_PATH + "resnet50v2_weights_tf_dim_ordering_tf_kernels_notop.h5")
    assert applications.IMAGENET_RESNET50V2_WEIGHTS.file_hash == resnet.WEIGHTS_HASHES[
        "resnet50v2"][1]
    assert applications.IMAGENET_EFFICIENTNETV2B2_WEIGHTS.origin == (
        efficientnet_v2.BASE_WEIGHTS_PATH + "efficientnetv2-b2_notop.h5")
    assert applications.IMAGENET_EFFICIENTNETV2B2_WEIGHTS.file_hash == (
        efficientnet_v2.WEIGHTS_HASHES["b2"][1])
