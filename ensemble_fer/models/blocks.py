"""Registry of image conv blocks: the image branch of the two-input FER network.

A *block* is a convolutional feature extractor. ``networks.py`` feeds it like this::

    uint8 (48, 48, 1) -> float32 -> resize to (size, size) -> gray to RGB if spec.channels == 3
        -> *spec.preprocessing() -> block = create_block(name, weights, size)
        -> GlobalAveragePooling2D (every block here outputs a 4-D feature map)

Public API (keras.applications / timm style: a registry, one factory)::

    list_blocks() -> list[str]
    get_block_spec(name) -> BlockSpec
    create_block(name, weights="default", input_size=None) -> keras.Model
    register_block(name, *, default_size, min_size, channels, description, preprocessing, ...)
    load_legacy_h5_weights(model, path, by_name=True) -> WeightsReport
    save_legacy_h5_weights(model, path, layer_names=None)
    WeightsUnavailableError (RuntimeError)

Contract of the model ``create_block`` returns:

* input ``(size, size, spec.channels)`` float32, already preprocessed by ``spec.preprocessing()``
  (the preprocessing is *not* inside the block, so the network can put resize and gray->RGB
  before it and keep everything inside the saved ``.keras`` file);
* output: the last 4-D feature map ``(batch, h, w, c)`` of the block, never pooled; the
  network adds ``GlobalAveragePooling2D``;
* the model is named after the block; call it as a layer (``block(x)``) so that it stays a
  nested model whose layer names live in their own namespace. Layer names are deterministic:
  every layer of our own blocks is named explicitly with the block name as prefix; the
  ``resnet50`` names are the published keras-vggface names (see below); the
  ``inception_resnet_v2`` names are those keras.applications gives in a fresh session.

Weights (``weights=``), validated before anything is built or downloaded:

* ``None`` or ``"none"``: random initialisation;
* ``"default"``: the spec's ``default_weights`` (``None`` for the compact blocks);
* a registered name (``spec.allowed_weights``): fetched through ``keras.utils.get_file`` into the
  Keras cache (``$KERAS_HOME/models``, ``~/.keras/models`` by default), hash-checked where the
  hash is known; offline or with ``ENSEMBLE_FER_OFFLINE=1`` a missing file raises
  :class:`WeightsUnavailableError` saying which file to put where;
* the path of an existing file: a Keras 3 ``.weights.h5`` / ``.keras`` file, or a legacy Keras 2
  ``.h5`` weight file (attributes ``layer_names`` / ``weight_names``, optionally under
  ``model_weights``), loaded by layer name (``spec.legacy_h5_by_name``) or in topological order.

Keras 3 forbids ``/`` in layer names, so a published name such as ``conv1/7x7_s2/bn`` becomes
``conv1_7x7_s2_bn`` here; :func:`load_legacy_h5_weights` applies the same mapping to the file's
layer names (:func:`keras_layer_name`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import logging
import os
import socket
import urllib.parse
import warnings
from pathlib import Path
from typing import Callable, Mapping, Sequence

import h5py
import numpy as np

import keras
from keras import layers

from ensemble_fer.errors import InputError

log = logging.getLogger(__name__)

__all__ = [
    "BlockSpec",
    "WeightsFile",
    "WeightsReport",
    "WeightsUnavailableError",
    "ReverseChannels",
    "register_block",
    "list_blocks",
    "get_block_spec",
    "create_block",
    "load_legacy_h5_weights",
    "save_legacy_h5_weights",
    "keras_layer_name",
    "keras_cache_dir",
    "VGGFACE_RESNET50_LAYER_NAMES",
]

OFFLINE_ENV = "ENSEMBLE_FER_OFFLINE"
CONNECT_TIMEOUT_S = 3.0     # connectivity probe before a download: fail fast when offline
DOWNLOAD_TIMEOUT_S = 60.0   # per socket operation during the download itself


class WeightsUnavailableError(InputError, RuntimeError):
    """Named pretrained weights are neither in the Keras cache nor downloadable now.

    An :class:`~ensemble_fer.errors.InputError` (the user can supply the file or pass
    ``--weights none``); also a ``RuntimeError``, as it was before InputError existed."""


# --------------------------------------------------------------------------------------------
# preprocessing layers (serialisable; no Lambda, so a .keras file loads with safe_mode=True)
# --------------------------------------------------------------------------------------------

@keras.saving.register_keras_serializable(package="ensemble_fer")
class ReverseChannels(layers.Layer):
    """Reverse the channel axis (RGB -> BGR, and back)."""

    def call(self, inputs):
        return keras.ops.flip(inputs, axis=-1)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return super().get_config()


# keras_vggface.utils.preprocess_input(version=2): x[..., ::-1] (RGB -> BGR), then
# x[..., 0] -= 91.4953 (B), x[..., 1] -= 103.8827 (G), x[..., 2] -= 131.0912 (R).
VGGFACE2_MEAN_BGR = (91.4953, 103.8827, 131.0912)


def vggface2_preprocessing(prefix: str) -> list[layers.Layer]:
    """keras-vggface "version 2" preprocessing: RGB -> BGR, subtract the VGGFace2 BGR means."""
    return [
        ReverseChannels(name=f"{prefix}_rgb_to_bgr"),
        layers.Rescaling(scale=1.0, offset=[-m for m in VGGFACE2_MEAN_BGR],
                         name=f"{prefix}_subtract_mean"),
    ]


def symmetric_preprocessing(prefix: str) -> list[layers.Layer]:
    """[0, 255] -> [-1, 1] (Inception "tf" mode; also used by the compact blocks)."""
    return [layers.Rescaling(scale=1.0 / 127.5, offset=-1.0, name=f"{prefix}_rescale")]


# --------------------------------------------------------------------------------------------
# specs, weights files and the registry
# --------------------------------------------------------------------------------------------

def keras_cache_dir() -> Path:
    """The folder ``keras.utils.get_file`` caches into, read from ``KERAS_HOME`` at call time.

    Mirrors keras: ``$KERAS_HOME`` or ``~/.keras``, falling back to ``/tmp/.keras`` when the
    folder cannot be written.
    """
    base = os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")
    base = os.path.expanduser(base)
    with contextlib.suppress(OSError):
        os.makedirs(base, exist_ok=True)
    if not os.access(base, os.W_OK):
        base = os.path.join("/tmp", ".keras")
    return Path(base)


@dataclasses.dataclass(frozen=True)
class WeightsFile:
    """One published weight file: where it comes from and where the Keras cache keeps it."""

    name: str                    # the value of ``weights=`` that selects it
    fname: str
    origin: str
    file_hash: str | None        # sha256 or md5 (keras auto-detects by length); None = unknown
    cache_subdir: str = "models"
    also_look_in: tuple[str, ...] = ()   # other cache subfolders where the file may already be
    description: str = ""

    def cache_path(self) -> Path:
        return keras_cache_dir() / self.cache_subdir / self.fname

    def fetch(self, block: str = "") -> Path:
        """Return the local path of the file, downloading it into the Keras cache if needed.

        A cached file whose hash is known and wrong is downloaded again (as get_file does).
        Raises :class:`WeightsUnavailableError` when the file is missing (or bad) and cannot
        be downloaded now: ``ENSEMBLE_FER_OFFLINE`` set, the host unreachable within
        ``CONNECT_TIMEOUT_S`` seconds, or the download failing.
        """
        target = self.cache_path()
        if target.is_file():
            if self.file_hash is None or _hash_matches(target, self.file_hash):
                return target
            missing = f"the cached {target} does not have the expected hash"
        else:
            for sub in self.also_look_in:
                other = keras_cache_dir() / sub / self.fname
                if other.is_file() and (self.file_hash is None
                                        or _hash_matches(other, self.file_hash)):
                    log.info("using %s (found in the keras cache under %s)", other, sub)
                    return other
            missing = f"{self.fname} is not in the Keras cache"
        if os.environ.get(OFFLINE_ENV, "").strip().lower() not in ("", "0", "false", "no"):
            raise WeightsUnavailableError(self._missing_message(
                block, f"{missing} and {OFFLINE_ENV} is set, so nothing is downloaded"))
        unreachable = _probe(self.origin)
        if unreachable:
            raise WeightsUnavailableError(self._missing_message(
                block, f"{missing} and {unreachable}"))
        try:
            with _default_socket_timeout(DOWNLOAD_TIMEOUT_S):
                path = keras.utils.get_file(
                    self.fname, self.origin, file_hash=self.file_hash,
                    cache_subdir=self.cache_subdir, cache_dir=str(keras_cache_dir()))
        except Exception as exc:  # URL fetch failure, bad hash, interrupted download ...
            raise WeightsUnavailableError(self._missing_message(
                block, f"{missing} and the download failed ({type(exc).__name__}: {exc})"
            )) from exc
        return Path(path)

    def _missing_message(self, block: str, reason: str) -> str:
        what = f"pretrained weights {self.name!r}" + (f" of block {block!r}" if block else "")
        hash_note = (f" (its {'sha256' if len(self.file_hash) == 64 else 'md5'} must be "
                     f"{self.file_hash})" if self.file_hash else "")
        return (f"{what} are not available: {reason}. Download {self.origin} and put it "
                f"at {self.cache_path()}{hash_note} (the Keras cache: $KERAS_HOME/{self.cache_subdir}/, "
                f"~/.keras/{self.cache_subdir}/ by default), or pass the path of the file as "
                f"weights=..., or train from scratch with `--weights none` (weights=None).")


def _hash_matches(path: Path, file_hash: str) -> bool:
    """sha256 (64 hex digits) or md5 (32), as keras.utils.get_file decides."""
    digest = hashlib.sha256() if len(file_hash) == 64 else hashlib.md5()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest() == file_hash.lower()


def _probe(url: str) -> str | None:
    """None if a TCP connection to the URL's host opens within CONNECT_TIMEOUT_S, else why not."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return None  # file:// and friends: let get_file deal with it
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        with socket.create_connection((parts.hostname, port), timeout=CONNECT_TIMEOUT_S):
            return None
    except OSError as exc:
        return f"{parts.hostname}:{port} cannot be reached ({type(exc).__name__}: {exc})"


@contextlib.contextmanager
def _default_socket_timeout(seconds: float):
    old = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(old)


Builder = Callable[[keras.KerasTensor, str], keras.KerasTensor]


@dataclasses.dataclass(frozen=True)
class BlockSpec:
    """Everything the network and the training script need to know about one block."""

    name: str
    default_size: int
    min_size: int
    channels: int                      # 1 (grayscale) or 3 (RGB)
    description: str
    builder: Builder                   # builder(inputs, name) -> 4-D output tensor
    preprocessing_fn: Callable[[str], list]
    default_weights: str | None = None
    weights_files: tuple[WeightsFile, ...] = ()
    pretrained: bool = False           # has a pretrained default worth a frozen phase
    legacy_h5_by_name: bool = True     # legacy Keras 2 .h5 files: by layer name or topological

    @property
    def allowed_weights(self) -> tuple[str, ...]:
        return tuple(w.name for w in self.weights_files)

    def weights_file(self, name: str) -> WeightsFile:
        for w in self.weights_files:
            if w.name == name:
                return w
        raise InputError(f"weights: block {self.name!r} has named weights "
                         f"{list(self.allowed_weights)}; received {name!r}")

    def input_shape(self, input_size: int | None = None) -> tuple[int, int, int]:
        size = self.default_size if input_size is None else input_size
        return (size, size, self.channels)

    def preprocessing(self) -> list[layers.Layer]:
        """Fresh preprocessing layers: float32 pixels in [0, 255], shape ``input_shape()``."""
        return list(self.preprocessing_fn(self.name))

    def to_config(self) -> dict:
        """A JSON-able summary (for config.json / manifests); no callables."""
        return {
            "name": self.name, "default_size": self.default_size, "min_size": self.min_size,
            "channels": self.channels, "default_weights": self.default_weights,
            "allowed_weights": list(self.allowed_weights), "pretrained": self.pretrained,
            "description": self.description,
            "weights_files": {w.name: {"fname": w.fname, "origin": w.origin,
                                       "file_hash": w.file_hash,
                                       "cache_subdir": w.cache_subdir}
                              for w in self.weights_files},
            "preprocessing": [type(layer).__name__ for layer in self.preprocessing()],
        }


_REGISTRY: dict[str, BlockSpec] = {}


def register_block(name: str, *, default_size: int, min_size: int, channels: int,
                   description: str, preprocessing: Callable[[str], list],
                   default_weights: str | None = None,
                   weights_files: Sequence[WeightsFile] = (), pretrained: bool = False,
                   legacy_h5_by_name: bool = True):
    """Decorator registering ``builder(inputs, name) -> 4-D tensor`` as block ``name``."""
    if name in _REGISTRY:
        raise ValueError(f"name: a block named {name!r} is already registered")
    if channels not in (1, 3):
        raise ValueError(f"channels: must be 1 or 3; received {channels!r}")
    if not 1 <= min_size <= default_size:
        raise ValueError(f"min_size: must be in [1, default_size={default_size}]; "
                         f"received {min_size!r}")
    names = tuple(w.name for w in weights_files)
    if default_weights is not None and default_weights not in names:
        raise ValueError(f"default_weights: must be None or one of {list(names)}; "
                         f"received {default_weights!r}")

    def decorator(builder: Builder) -> Builder:
        _REGISTRY[name] = BlockSpec(
            name=name, default_size=default_size, min_size=min_size, channels=channels,
            description=description, builder=builder, preprocessing_fn=preprocessing,
            default_weights=default_weights, weights_files=tuple(weights_files),
            pretrained=pretrained, legacy_h5_by_name=legacy_h5_by_name)
        return builder

    return decorator


def list_blocks() -> list[str]:
    """Names of the registered blocks, in registration order."""
    return list(_REGISTRY)


def get_block_spec(name: str) -> BlockSpec:
    try:
        return _REGISTRY[name]
    except (KeyError, TypeError):
        raise InputError(f"name: unknown block; valid blocks are {list_blocks()}; "
                         f"received {name!r}") from None


# --------------------------------------------------------------------------------------------
# the factory
# --------------------------------------------------------------------------------------------

def create_block(name: str, weights: str | os.PathLike | None = "default",
                 input_size: int | None = None) -> keras.Model:
    """Build block ``name`` for inputs ``(input_size, input_size, spec.channels)``.

    ``weights``: ``"default"`` (the spec's default), ``None``/``"none"`` (random init), one of
    ``spec.allowed_weights``, or the path of an existing weight file. ``input_size`` defaults to
    ``spec.default_size`` and must be at least ``spec.min_size``. Both are checked, and named
    weights fetched, before the model is built. Returns a ``keras.Model`` named ``name`` whose
    output is the last 4-D feature map (not pooled).
    """
    spec = get_block_spec(name)
    size = _check_input_size(spec, input_size)
    source = _resolve_weights(spec, weights)    # None | ("named", WeightsFile) | ("path", Path)
    path = None
    if source is not None:
        kind, value = source
        path = value.fetch(spec.name) if kind == "named" else value
        _check_weights_file(path)

    with _fresh_auto_names():
        inputs = keras.Input(shape=spec.input_shape(size), dtype="float32",
                             name=f"{spec.name}_input")
        outputs = spec.builder(inputs, spec.name)
        model = keras.Model(inputs, outputs, name=spec.name)

    if path is not None:
        load_weights_file(model, path, by_name=spec.legacy_h5_by_name)
    return model


def _check_input_size(spec: BlockSpec, input_size) -> int:
    if input_size is None:
        return spec.default_size
    if isinstance(input_size, bool) or not isinstance(input_size, (int, np.integer)):
        raise InputError(f"input_size: must be None or an int >= {spec.min_size} for block "
                         f"{spec.name!r}; received {input_size!r}")
    if input_size < spec.min_size:
        raise InputError(f"input_size: block {spec.name!r} needs input_size >= "
                         f"{spec.min_size} (default {spec.default_size}); "
                         f"received {input_size}")
    return int(input_size)


def _resolve_weights(spec: BlockSpec, weights):
    allowed = (f"None, 'none', 'default' (= {spec.default_weights!r}), "
               + "".join(f"{w!r}, " for w in spec.allowed_weights)
               + "or the path of an existing weight file")
    if weights is None:
        return None
    if isinstance(weights, str):
        if weights == "default":
            return (None if spec.default_weights is None
                    else ("named", spec.weights_file(spec.default_weights)))
        if weights.lower() == "none":
            return None
        if weights in spec.allowed_weights:
            return ("named", spec.weights_file(weights))
    if isinstance(weights, (str, os.PathLike)):
        path = Path(weights).expanduser()
        if path.is_file():
            return ("path", path)
        raise InputError(f"weights: for block {spec.name!r} must be {allowed}; received "
                         f"{str(weights)!r}, which is neither a named weight set of this "
                         "block nor an existing file")
    raise InputError(f"weights: for block {spec.name!r} must be {allowed}; "
                     f"received {weights!r} of type {type(weights).__name__}")


def _check_weights_file(path: Path) -> None:
    """Refuse, before building, a file that is neither HDF5 nor a .keras archive."""
    if str(path).endswith(".keras"):
        return
    if not h5py.is_hdf5(path):
        raise InputError(f"weights: must be an HDF5 weight file (.h5, .weights.h5) or a "
                         f".keras file; received {str(path)!r}, which is neither")


@contextlib.contextmanager
def _fresh_auto_names():
    """Give auto-named layers the names of a fresh Keras session, whatever was built before.

    Only layers we do not name ourselves (inside keras.applications models) are concerned.
    Uses Keras' private uid table; if that moves, names are merely less predictable.
    """
    try:
        from keras.src.backend.common import global_state
    except ImportError:  # pragma: no cover - depends on the Keras version
        yield
        return
    saved = global_state.get_global_attribute("object_name_uids")
    global_state.set_global_attribute("object_name_uids", None)
    try:
        yield
    finally:
        global_state.set_global_attribute("object_name_uids", saved)


# --------------------------------------------------------------------------------------------
# weight files
# --------------------------------------------------------------------------------------------

@dataclasses.dataclass
class WeightsReport:
    """What a legacy .h5 load matched: model layer names, and what stayed unmatched."""

    path: str
    matched: list[str]
    unmatched_file_layers: list[str]
    unmatched_model_layers: list[str]

    def summary(self) -> str:
        return (f"{self.path}: loaded {len(self.matched)} layers; "
                f"{len(self.unmatched_model_layers)} model layers with weights not in the file"
                f"{_examples(self.unmatched_model_layers)}; "
                f"{len(self.unmatched_file_layers)} file layers not in the model"
                f"{_examples(self.unmatched_file_layers)}")


def _examples(names: Sequence[str], n: int = 5) -> str:
    if not names:
        return ""
    return " (" + ", ".join(names[:n]) + (", ..." if len(names) > n else "") + ")"


def keras_layer_name(published: str) -> str:
    """The Keras 3 layer name for a layer name of a published Keras 2 file ('/' -> '_')."""
    return published.replace("/", "_")


def load_weights_file(model: keras.Model, path, by_name: bool = True) -> WeightsReport | None:
    """Load any supported weight file into ``model`` (see the module docstring)."""
    path = Path(path)
    if str(path).endswith(".keras"):
        model.load_weights(str(path))
        return None
    with h5py.File(path, "r") as f:
        legacy = "layer_names" in f.attrs or "model_weights" in f or "layer_names0" in f.attrs
    if legacy:
        return load_legacy_h5_weights(model, path, by_name=by_name)
    if not str(path).endswith(".weights.h5"):
        raise InputError(f"weights: a Keras 3 weight file must be named *.weights.h5; received "
                         f"{str(path)!r} (rename it, or save it with model.save_weights)")
    model.load_weights(str(path))
    return None


def _attr_list(group, name: str) -> list[str]:
    """A string-list attribute, possibly chunked as name0, name1, ... (as Keras writes it)."""
    if name in group.attrs:
        values = list(group.attrs[name])
    else:
        values, i = [], 0
        while f"{name}{i}" in group.attrs:
            values.extend(group.attrs[f"{name}{i}"])
            i += 1
    return [v.decode("utf8") if isinstance(v, bytes) else str(v) for v in values]


def _legacy_variables(layer) -> list:
    return list(layer.trainable_weights) + list(layer.non_trainable_weights)


def _short(weight_name: str) -> str:
    """'conv1/7x7_s2/bn/gamma:0' -> 'gamma'."""
    return weight_name.rsplit("/", 1)[-1].split(":", 1)[0]


def _assign_layer(layer, file_layer: str, names: list[str], values: list[np.ndarray]) -> None:
    variables = _legacy_variables(layer)
    if len(variables) != len(values):
        raise InputError(f"layer {layer.name!r} has {len(variables)} weights but the file's "
                         f"layer {file_layer!r} has {len(values)} ({names})")
    by_short = {_short(n): v for n, v in zip(names, values)}
    if len(by_short) == len(values) and set(by_short) == {v.name for v in variables}:
        ordered = [by_short[v.name] for v in variables]   # match by weight name
    else:
        ordered = values                                   # else the legacy order
    for variable, value in zip(variables, ordered):
        if tuple(variable.shape) != tuple(value.shape):
            raise InputError(f"layer {layer.name!r}: weight {variable.name!r} has shape "
                             f"{tuple(variable.shape)} but the file's layer {file_layer!r} "
                             f"gives shape {tuple(value.shape)}")
    for variable, value in zip(variables, ordered):
        variable.assign(value.astype(variable.dtype, copy=False))


def load_legacy_h5_weights(model: keras.Model, path, by_name: bool = True) -> WeightsReport:
    """Load a Keras 2 ``.h5`` weight file (``save_weights`` or whole-model ``save``) with h5py.

    ``by_name``: each file layer goes to the model layer named ``keras_layer_name(file_name)``;
    layers present on one side only are reported (and a warning given when model layers stay
    unloaded). Otherwise the layers with weights are matched in topological order, which needs
    equal counts. Raises ``InputError`` when nothing matches or shapes differ.
    """
    path = Path(path)
    model_layers = [layer for layer in model.layers if _legacy_variables(layer)]
    with h5py.File(path, "r") as f:
        group = f
        if "layer_names" not in f.attrs and "layer_names0" not in f.attrs and "model_weights" in f:
            group = f["model_weights"]
        file_layers = []
        for lname in _attr_list(group, "layer_names"):
            wnames = _attr_list(group[lname], "weight_names") if lname in group else []
            if wnames:
                file_layers.append((lname, wnames,
                                    [np.asarray(group[lname][w]) for w in wnames]))
    if not file_layers:
        raise InputError(f"weights: {str(path)!r} is not a legacy Keras weight file with "
                         "weights (no 'layer_names' / 'weight_names' attributes found)")

    matched, unmatched_file = [], []
    if by_name:
        index = {layer.name: layer for layer in model_layers}
        for lname, wnames, values in file_layers:
            layer = index.get(keras_layer_name(lname))
            if layer is None:
                unmatched_file.append(lname)
                continue
            _assign_layer(layer, lname, wnames, values)
            matched.append(layer.name)
    else:
        if len(file_layers) != len(model_layers):
            raise InputError(f"weights: {str(path)!r} has {len(file_layers)} layers with "
                             f"weights but block {model.name!r} has {len(model_layers)}; "
                             "topological loading needs the same architecture")
        for (lname, wnames, values), layer in zip(file_layers, model_layers):
            _assign_layer(layer, lname, wnames, values)
            matched.append(layer.name)
    done = set(matched)
    report = WeightsReport(str(path), matched, unmatched_file,
                           [layer.name for layer in model_layers if layer.name not in done])
    if not matched:
        raise InputError(f"weights: no layer of {str(path)!r} matches a layer of block "
                         f"{model.name!r} by name; file layers{_examples(unmatched_file)}, "
                         f"block layers{_examples(report.unmatched_model_layers)}")
    log.info("%s", report.summary())
    if report.unmatched_model_layers:
        warnings.warn(report.summary(), stacklevel=2)
    return report


def save_legacy_h5_weights(model: keras.Model, path,
                           layer_names: Mapping[str, str] | None = None) -> Path:
    """Write ``model``'s weights as a Keras 2 ``save_weights`` .h5 file.

    Root attributes ``layer_names``, ``backend``, ``keras_version``; one group per layer
    (nested where the name has '/') with attribute ``weight_names`` (``<layer>/<weight>:0``)
    and one dataset per weight. ``layer_names`` maps Keras layer names to the names to write
    (e.g. the published keras-vggface names with '/'); by default the Keras names are written.
    """
    layer_names = dict(layer_names or {})
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        names = [layer_names.get(layer.name, layer.name) for layer in model.layers]
        f.attrs["layer_names"] = np.array([n.encode("utf8") for n in names])
        f.attrs["backend"] = b"tensorflow"
        f.attrs["keras_version"] = keras.__version__.encode("utf8")
        for name, layer in sorted(zip(names, model.layers), key=lambda item: item[0]):
            group = f.require_group(name)
            variables = _legacy_variables(layer)
            wnames = [f"{name}/{v.name}:0".encode("utf8") for v in variables]
            group.attrs["weight_names"] = np.array(wnames, dtype="S") if wnames else np.array(
                [], dtype="S1")
            for wname, variable in zip(wnames, variables):
                group.create_dataset(wname.decode("utf8"),
                                     data=np.asarray(variable.numpy()))
    return path


# --------------------------------------------------------------------------------------------
# resnet50: VGGFace2 ResNet-50 exactly as keras-vggface (rcmalli) publishes it for Keras
# --------------------------------------------------------------------------------------------

RESNET50_STAGES = ((2, 3, (64, 64, 256)), (3, 4, (128, 128, 512)),
                   (4, 6, (256, 256, 1024)), (5, 3, (512, 512, 2048)))


def _vggface_resnet50_published_names() -> tuple[str, ...]:
    names = ["conv1/7x7_s2", "conv1/7x7_s2/bn"]
    for stage, blocks, _ in RESNET50_STAGES:
        for block in range(1, blocks + 1):
            kinds = ["1x1_reduce", "3x3", "1x1_increase"] + (["1x1_proj"] if block == 1 else [])
            for kind in kinds:
                names += [f"conv{stage}_{block}_{kind}", f"conv{stage}_{block}_{kind}/bn"]
    return tuple(names)


#: The names, in the published file, of the 106 layers with weights (53 conv + 53 batch norm).
VGGFACE_RESNET50_LAYER_NAMES = _vggface_resnet50_published_names()

VGGFACE2_RESNET50_WEIGHTS = WeightsFile(
    name="vggface2",
    fname="rcmalli_vggface_tf_notop_resnet50.h5",
    origin="https://github.com/rcmalli/keras-vggface/releases/download/v2.0/"
           "rcmalli_vggface_tf_notop_resnet50.h5",
    # The sha256 of this file is not published (keras-vggface downloads it without a hash)
    # and it could not be fetched here to compute one, so the cache is not hash-checked.
    file_hash=None,
    cache_subdir="models",
    also_look_in=("models/vggface",),   # where keras-vggface itself caches it
    description="VGGFace2 (8631 identities) ResNet-50 without top, keras-vggface v2.0",
)


def _vggface_conv_bn(x, filters, kernel, name, strides=1, padding="valid", relu=True):
    """Conv (no bias) + BatchNormalization (Keras defaults: eps 1e-3, momentum 0.99) [+ relu]."""
    x = layers.Conv2D(filters, kernel, strides=strides, padding=padding, use_bias=False,
                      name=keras_layer_name(name))(x)
    x = layers.BatchNormalization(axis=-1, name=keras_layer_name(f"{name}/bn"))(x)
    if relu:
        x = layers.Activation("relu", name=keras_layer_name(f"{name}/relu"))(x)
    return x


def _vggface_bottleneck(x, filters, stage, block, strides):
    """keras-vggface ``resnet_conv_block`` (block 1: projection, stride on 1x1_reduce and proj)
    or ``resnet_identity_block`` (later blocks)."""
    f1, f2, f3 = filters
    base = f"conv{stage}_{block}"
    shortcut = x
    y = _vggface_conv_bn(x, f1, 1, f"{base}_1x1_reduce", strides=strides)
    y = _vggface_conv_bn(y, f2, 3, f"{base}_3x3", padding="same")
    y = _vggface_conv_bn(y, f3, 1, f"{base}_1x1_increase", relu=False)
    if block == 1:
        shortcut = _vggface_conv_bn(x, f3, 1, f"{base}_1x1_proj", strides=strides, relu=False)
    y = layers.Add(name=f"{base}_add")([y, shortcut])
    return layers.Activation("relu", name=f"{base}_relu")(y)


@register_block(
    "resnet50", default_size=197, min_size=197, channels=3,
    description="VGGFace2 ResNet-50 (keras-vggface RESNET50, include_top=False): 23.6M params, "
                "output the 'avg_pool' map (1x1x2048 at 197-223 px)",
    preprocessing=vggface2_preprocessing, default_weights="vggface2",
    weights_files=(VGGFACE2_RESNET50_WEIGHTS,), pretrained=True, legacy_h5_by_name=True)
def vggface_resnet50(inputs, name):
    """keras-vggface ``RESNET50(include_top=False)`` layer for layer, published names with '/'
    -> '_'. Stem 7x7/2 'same' conv + BN + relu + 3x3/2 'valid' max pool; stages 2-5 of
    [3, 4, 6, 3] bottlenecks; ``AveragePooling2D((7, 7), name='avg_pool')`` last, which is why
    the input must be >= 197 px (197 -> 99 -> 49 -> 25 -> 13 -> 7)."""
    x = _vggface_conv_bn(inputs, 64, 7, "conv1/7x7_s2", strides=2, padding="same")
    x = layers.MaxPooling2D((3, 3), strides=(2, 2), name="pool1_3x3_s2")(x)
    for stage, blocks, filters in RESNET50_STAGES:
        for block in range(1, blocks + 1):
            strides = (1 if stage == 2 else 2) if block == 1 else 1
            x = _vggface_bottleneck(x, filters, stage, block, strides)
    return layers.AveragePooling2D((7, 7), name="avg_pool")(x)


# --------------------------------------------------------------------------------------------
# inception_resnet_v2: keras.applications, ImageNet weights
# --------------------------------------------------------------------------------------------

IMAGENET_INCEPTION_RESNET_V2_WEIGHTS = WeightsFile(
    name="imagenet",
    fname="inception_resnet_v2_weights_tf_dim_ordering_tf_kernels_notop.h5",
    origin="https://storage.googleapis.com/tensorflow/keras-applications/inception_resnet_v2/"
           "inception_resnet_v2_weights_tf_dim_ordering_tf_kernels_notop.h5",
    file_hash="d19885ff4a710c122648d3b5c3b684e4",   # md5, as in keras.applications
    cache_subdir="models",                           # the file keras.applications caches
    description="ImageNet InceptionResNetV2 without top (keras.applications)",
)


@register_block(
    "inception_resnet_v2", default_size=139, min_size=75, channels=3,
    description="keras.applications.InceptionResNetV2(include_top=False): 54.3M params, "
                "output the last 1536-channel map (3x3 at 139 px)",
    preprocessing=symmetric_preprocessing, default_weights="imagenet",
    weights_files=(IMAGENET_INCEPTION_RESNET_V2_WEIGHTS,), pretrained=True,
    legacy_h5_by_name=False)   # keras loads its own file in topological order
def inception_resnet_v2(inputs, name):
    app = keras.applications.InceptionResNetV2(include_top=False, weights=None,
                                               input_tensor=inputs)
    return app.output


# --------------------------------------------------------------------------------------------
# compact blocks at the native 48x48 grayscale
# --------------------------------------------------------------------------------------------

def _conv_bn_relu(x, filters, name, kernel=3, strides=1):
    x = layers.Conv2D(filters, kernel, strides=strides, padding="same", use_bias=False,
                      kernel_initializer="he_normal", name=f"{name}_conv")(x)
    x = layers.BatchNormalization(name=f"{name}_bn")(x)
    return layers.Activation("relu", name=f"{name}_relu")(x)


def conv_stack(x, prefix: str, stages: Sequence[tuple[int, int, bool, float]]):
    """Generic VGG-style builder: per stage ``(filters, n_convs, pool, dropout)``.

    Each conv is 3x3 'same', no bias, + BatchNorm + ReLU; then 2x2 max pooling if ``pool``,
    then ``Dropout(dropout)`` if > 0. Layers are named ``{prefix}_s{stage}_c{conv}_{conv|bn|relu}``,
    ``{prefix}_s{stage}_pool``, ``{prefix}_s{stage}_drop``.
    """
    for s, (filters, n_convs, pool, dropout) in enumerate(stages, start=1):
        for c in range(1, n_convs + 1):
            x = _conv_bn_relu(x, filters, f"{prefix}_s{s}_c{c}")
        if pool:
            x = layers.MaxPooling2D(2, name=f"{prefix}_s{s}_pool")(x)
        if dropout:
            x = layers.Dropout(dropout, name=f"{prefix}_s{s}_drop")(x)
    return x


@register_block(
    "cnn5", default_size=48, min_size=32, channels=1,
    description="five-layer FER2013 baseline: conv32-conv32-pool-drop-conv64-conv64-pool-drop "
                "(+ the network's dense layer); 66k params, 54M MACs, 12x12x64 output at 48 px",
    preprocessing=symmetric_preprocessing)
def cnn5(inputs, name):
    """The five-layer baseline: four 3x3 convs (32, 32 | 64, 64) with BatchNorm + ReLU, a 2x2
    max pool and Dropout(0.25) after each pair; the fifth layer is the network's dense
    classifier on the pooled 64 features. Output 12x12x64 at 48 px. 65,568 params, 54M MACs."""
    return conv_stack(inputs, name, [(32, 2, True, 0.25), (64, 2, True, 0.25)])


@register_block(
    "complex_cnn", default_size=48, min_size=32, channels=1,
    description="5 conv blocks (32, 64, 128, 256, 256; two 3x3 conv + BN each, pool + dropout "
                "0.25): 2.36M params, 128M MACs, 3x3x256 output at 48 px; the report's two dense "
                "layers are the network's head",
    preprocessing=symmetric_preprocessing)
def complex_cnn(inputs, name):
    """Five conv blocks of two 3x3 convs + BatchNorm + ReLU (32, 64, 128, 256, 256 filters),
    2x2 max pooling after blocks 1-4 (48 -> 3) and Dropout(0.25) after every block. The report's
    two dense layers are *not* here: they are the network's dense head after global pooling.
    Output 3x3x256 at 48 px; 2,356,256 params, 128M MACs."""
    return conv_stack(inputs, name, [(32, 2, True, 0.25), (64, 2, True, 0.25),
                                     (128, 2, True, 0.25), (256, 2, True, 0.25),
                                     (256, 2, False, 0.25)])


def _se_basic_block(x, filters, strides, name, ratio=8):
    """Basic residual block (two 3x3 conv + BN) with squeeze-and-excitation before the add."""
    shortcut = x
    y = _conv_bn_relu(x, filters, f"{name}_1", strides=strides)
    y = layers.Conv2D(filters, 3, padding="same", use_bias=False,
                      kernel_initializer="he_normal", name=f"{name}_2_conv")(y)
    y = layers.BatchNormalization(name=f"{name}_2_bn")(y)
    se = layers.GlobalAveragePooling2D(keepdims=True, name=f"{name}_se_squeeze")(y)
    se = layers.Dense(max(filters // ratio, 4), activation="relu", name=f"{name}_se_reduce")(se)
    se = layers.Dense(filters, activation="sigmoid", name=f"{name}_se_expand")(se)
    y = layers.Multiply(name=f"{name}_se_scale")([y, se])
    if strides != 1 or x.shape[-1] != filters:
        shortcut = layers.Conv2D(filters, 1, strides=strides, use_bias=False,
                                 kernel_initializer="he_normal", name=f"{name}_proj_conv")(x)
        shortcut = layers.BatchNormalization(name=f"{name}_proj_bn")(shortcut)
    y = layers.Add(name=f"{name}_add")([y, shortcut])
    return layers.Activation("relu", name=f"{name}_out")(y)


@register_block(
    "se_resnet", default_size=48, min_size=32, channels=1,
    description="SE-ResNet: 3x3 stem (32) + 3 stages x 2 basic SE blocks (64, 128, 256; "
                "stride 2 each, SE ratio 8): 2.81M params, 227M MACs, 6x6x256 output at 48 px",
    preprocessing=symmetric_preprocessing)
def se_resnet(inputs, name):
    """A small SE-ResNet for 48 px faces: 3x3 stem conv (32) at full resolution, then three
    stages of two basic residual blocks with squeeze-and-excitation (ratio 8), 64/128/256
    filters, the first block of each stage strided (48 -> 24 -> 12 -> 6) with a 1x1 projection
    shortcut. Output 6x6x256 at 48 px; 2,805,904 params, 227M MACs."""
    x = _conv_bn_relu(inputs, 32, f"{name}_stem")
    for s, filters in enumerate((64, 128, 256), start=1):
        for b in range(1, 3):
            x = _se_basic_block(x, filters, 2 if b == 1 else 1, f"{name}_s{s}_b{b}")
    return x


@register_block(
    "vgg_fast", default_size=48, min_size=32, channels=1,
    description="CPU-lean VGG: one 3x3 conv (32) at 48 px, then conv pairs of 64 / 128 / 256 at "
                "24 / 12 / 6 px, BN everywhere: 1.17M params, 96M MACs, 6x6x256 output",
    preprocessing=symmetric_preprocessing)
def vgg_fast(inputs, name):
    """VGG-style block aimed at FER2013 accuracy per CPU-minute on a 2-core machine.

    Layout (3x3 'same' convs, no bias, BatchNorm + ReLU each)::

        48x48x1  conv 32            -> pool -> 24x24
        24x24    conv 64,  conv 64  -> pool -> 12x12
        12x12    conv 128, conv 128 -> pool -> 6x6   -> Dropout(0.1)
        6x6      conv 256, conv 256                  -> output 6x6x256 (receptive field 66 px)

    1,165,216 parameters (1,163,360 trainable); 96.2M multiply-adds (0.19 GFLOPs) forward per
    48x48 image, ~0.58 GFLOPs forward+backward (convs and dense only).

    Why: the VGG nets that reach ~73% on FER2013 from scratch (Khaireddin & Chen 2021;
    Pramerdorfer & Kampel 2016) run two 64-channel convs at the full 48x48 resolution, which
    alone costs ~170M MACs per image (and the most memory traffic in the backward pass). Here
    the full-resolution stage is a single 32-filter conv on the 1-channel input (0.7M MACs),
    and each later stage doubles the width as it halves the side, so every stage costs the
    same ~32M MACs: depth (7 convs, receptive field larger than the face) is kept where it is
    cheap. Plain 3x3 convs rather than depthwise-separable ones: a separable version of this
    layout has 8x fewer MACs but trained only ~3x faster here (TensorFlow's CPU depthwise
    kernels are memory-bound), and full convs learn more per epoch. BatchNorm on every conv allows a high learning rate; regularisation is left to the
    augmentation and to the network's dropout head (only a light Dropout(0.1) here), because
    heavy dropout slows convergence per epoch, which is what a CPU budget pays for.
    """
    return conv_stack(inputs, name, [(32, 1, True, 0.0), (64, 2, True, 0.0),
                                     (128, 2, True, 0.1), (256, 2, False, 0.0)])
