"""Pretrained weights of the blocks: where each file comes from, the Keras cache, the download,
and what ``weights=`` may be.

``weights=`` of :func:`ensemble_fer.models.blocks.create_block` (``--weights`` of the CLIs):

* ``None`` or ``"none"`` (any case): random initialisation;
* ``"default"``: the block's ``default_weights`` (``None`` for the compact blocks);
* a registered name (``spec.allowed_weights``, e.g. ``"imagenet"``): fetched through
  ``keras.utils.get_file`` into the Keras cache (``$KERAS_HOME/models``, ``~/.keras/models`` by
  default), hash-checked where the hash is known; offline, or with ``ENSEMBLE_FER_OFFLINE=1``,
  a missing file raises :class:`WeightsUnavailableError` saying which file to put where;
* the path of an existing file: a Keras 3 ``.weights.h5`` / ``.keras`` file, a legacy
  Keras 2 ``.h5`` file (:mod:`ensemble_fer.models.legacy_h5`), loaded by layer name or in
  topological order (``spec.legacy_h5_by_name``), or a converted ``.npz`` (below).

Converted weights (:class:`ConvertedWeights`): trunks published in another framework's format
(TensorFlow.js, PyTorch, Keras 1) are ported by project code into a pickle-free ``.npz`` of
the block's Keras weights (``<layer>/<index>`` -> array), kept in the repository's
``pretrained/`` folder with a manifest (provenance, licence, the port's check). Nothing is
downloaded: a missing file names the one command that rebuilds it from the original.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import logging
import os
import socket
import urllib.parse
from pathlib import Path
from typing import Callable

import h5py
import numpy as np

import keras

from ensemble_fer.errors import InputError
from ensemble_fer.models.legacy_h5 import WeightsReport, is_legacy_h5, load_legacy_h5_weights

log = logging.getLogger(__name__)

OFFLINE_ENV = "ENSEMBLE_FER_OFFLINE"
CONNECT_TIMEOUT_S = 3.0     # connectivity probe before a download: fail fast when offline
DOWNLOAD_TIMEOUT_S = 60.0   # per socket operation during the download itself


class WeightsUnavailableError(InputError, RuntimeError):
    """Named pretrained weights are neither in the Keras cache nor downloadable now.

    An :class:`~ensemble_fer.errors.InputError` (the user can supply the file or pass
    ``--weights none``); also a ``RuntimeError``, as it was before InputError existed."""


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
                f"weights=..., or train from scratch with `--weights none` (weights=None)."
                + offline_trunks_note())


def offline_trunks_note() -> str:
    """`` Pretrained trunks that need no download: faceres_mobilenet (VGGFace2), ...`` (the blocks
    whose default weights are ported into ``pretrained/``), for the offline errors."""
    from ensemble_fer.models.registry import registered_blocks   # below the families that import this module

    trunks = []
    for block, spec in registered_blocks().items():
        default = spec.weights_file(spec.default_weights) if spec.default_weights else None
        if isinstance(default, ConvertedWeights):
            trunks.append(f"{block} ({default.trained_on.split(' (')[0]})")
    return (f" Pretrained trunks that need no download (in pretrained/, or rebuilt from shared/weights by "
            f"`python -m pipelines.convert_weights BLOCK`): {', '.join(trunks)}."
            if trunks else "")


PRETRAINED_ENV = "ENSEMBLE_FER_PRETRAINED"
"""A folder searched first for converted weights (then the repository's ``pretrained/``)."""

_ROOT = Path(__file__).resolve().parents[2]
REPOSITORY_PRETRAINED = _ROOT / "pretrained" if (_ROOT / "pyproject.toml").is_file() else None
"""Where a clone keeps its converted weights (``pretrained/`` at the repository root); None in
an installed package, which has no such folder (predicting needs no pretrained trunk,
retraining does: set ``ENSEMBLE_FER_PRETRAINED``)."""


@dataclasses.dataclass(frozen=True)
class ConvertedWeights(WeightsFile):
    """Weights ported by project code from a published file of another framework.

    ``file_hash`` is the sha256 of the arrays (:func:`weights_content_hash`), not of the
    ``.npz`` bytes (zip timestamps differ between rebuilds); ``origin`` says where the
    original comes from; ``convert_command`` rebuilds the file from it.
    """

    convert_command: str = ""
    convert: Callable | None = dataclasses.field(default=None, compare=False)
    """convert(source folder) -> the block's ``<layer>/<index>`` arrays."""
    reference: Callable | None = dataclasses.field(default=None, compare=False)
    """reference(source folder, float RGB images in [0, 255]) -> the original network's pooled
    features, computed by the original's own framework (the check of the port)."""
    source_folder: str = ""        # the original's folder under shared/weights
    trained_on: str = ""
    licence: str = ""

    def search_paths(self) -> list[Path]:
        folders = [Path(os.environ[PRETRAINED_ENV]).expanduser()] if os.environ.get(PRETRAINED_ENV) else []
        if REPOSITORY_PRETRAINED is not None:
            folders.append(REPOSITORY_PRETRAINED)
        return [folder / self.fname for folder in folders]

    def cache_path(self) -> Path:
        paths = self.search_paths()
        return paths[0] if paths else Path("pretrained") / self.fname

    def fetch(self, block: str = "") -> Path:
        what = f"pretrained weights {self.name!r}" + (f" of block {block!r}" if block else "")
        looked = [str(p) for p in self.search_paths()]
        for path in self.search_paths():
            if not path.is_file():
                continue
            if self.file_hash and weights_content_hash(path) != self.file_hash:
                raise WeightsUnavailableError(
                    f"{path}: the {what} do not have the expected content hash {self.file_hash}; rebuild "
                    f"them with `{self.convert_command} --force`")
            return path
        raise WeightsUnavailableError(
            f"{what} are not available: {self.fname} is in none of {looked}; build it from the original "
            f"({self.origin}) with `{self.convert_command}`, or train from scratch with `--weights none`")


def published_files(source, folder: str, sha256_by_name: dict[str, str]) -> dict[str, Path]:
    """The original files of a ported trunk, ``<source>/<folder>/<name>``, each hash-checked
    against its published sha256 (``source`` is ``shared/weights``)."""
    from ensemble_fer.artifacts import sha256_file

    folder_path = Path(source) / folder
    paths = {}
    for name, sha256 in sha256_by_name.items():
        path = folder_path / name
        if not path.is_file():
            raise InputError(f"{path}: not found (the published {folder} files belong in {folder_path})")
        if sha256_file(path) != sha256:
            raise InputError(f"{path}: sha256 is not the published file's {sha256}")
        paths[name] = path
    return paths


def weights_content_hash(path) -> str:
    """sha256 over the names, dtypes, shapes and bytes of a converted ``.npz``, in name order."""
    from ensemble_fer.artifacts import load_npz

    digest = hashlib.sha256()
    for name, value in sorted(load_npz(path).items()):
        value = np.ascontiguousarray(value)
        digest.update(f"{name}|{value.dtype.str}|{value.shape}|".encode())
        digest.update(value.tobytes())
    return digest.hexdigest()


def block_weights(model: keras.Model) -> dict[str, np.ndarray]:
    """``<layer>/<index>`` -> array of every layer with weights: the converted ``.npz`` layout."""
    return {f"{layer.name}/{i}": np.asarray(w) for layer in model.layers for i, w in enumerate(layer.get_weights())}


def load_converted_weights(model: keras.Model, path) -> None:
    """Set every layer's weights from a converted ``.npz``; refuses a missing, extra or
    mis-shaped array (a port of another architecture) with one line naming the file."""
    from ensemble_fer.artifacts import load_npz

    stored = load_npz(path)
    expected = block_weights(model)
    missing, extra = sorted(set(expected) - set(stored)), sorted(set(stored) - set(expected))
    if missing or extra:
        raise InputError(f"{path}: not weights of block {model.name!r}: "
                         + (f"no {missing[:3]}" if missing else "") + (" and " if missing and extra else "")
                         + (f"unknown {extra[:3]}" if extra else ""))
    for name, value in expected.items():
        if stored[name].shape != value.shape:
            raise InputError(f"{path}: {name} has shape {stored[name].shape}, block {model.name!r} "
                             f"needs {value.shape}")
    for layer in model.layers:
        n = len(layer.get_weights())
        if n:
            layer.set_weights([stored[f"{layer.name}/{i}"].astype(np.float32) for i in range(n)])


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


def resolve_weights(spec, weights) -> WeightsFile | Path | None:
    """Check ``weights=`` for block ``spec`` without building or downloading anything.

    Returns ``None`` (random initialisation), the :class:`WeightsFile` to fetch, or the path of
    the user's file (which exists and is HDF5 or ``.keras``).
    """
    if weights is None:
        return None
    if isinstance(weights, str):
        if weights == "default":
            return None if spec.default_weights is None else spec.weights_file(spec.default_weights)
        if weights.lower() == "none":
            return None
        if weights in spec.allowed_weights:
            return spec.weights_file(weights)
    allowed = (f"None, 'none', 'default' (= {spec.default_weights!r}), "
               + "".join(f"{w!r}, " for w in spec.allowed_weights)
               + "or the path of an existing weight file")
    if not isinstance(weights, (str, os.PathLike)):
        raise InputError(f"weights: for block {spec.name!r} must be {allowed}; "
                         f"received {weights!r} of type {type(weights).__name__}")
    path = Path(weights).expanduser()
    if not path.is_file():
        raise InputError(f"weights: for block {spec.name!r} must be {allowed}; received "
                         f"{str(weights)!r}, which is neither a named weight set of this "
                         "block nor an existing file")
    return check_weights_file(path)


def check_weights_file(path: Path) -> Path:
    """Refuse, before building, a file that is neither HDF5, a .keras archive nor a converted .npz."""
    if not str(path).endswith((".keras", ".npz")) and not h5py.is_hdf5(path):
        raise InputError(f"weights: must be an HDF5 weight file (.h5, .weights.h5), a .keras file or "
                         f"converted weights (.npz); received {str(path)!r}, which is none of them")
    return path


def load_weights_file(model: keras.Model, path, by_name: bool = True) -> WeightsReport | None:
    """Load a ``.keras``, Keras 3 ``.weights.h5`` or legacy Keras 2 ``.h5`` file into ``model``."""
    path = Path(path)
    if str(path).endswith(".keras"):
        model.load_weights(str(path))
        return None
    if str(path).endswith(".npz"):
        load_converted_weights(model, path)
        return None
    if is_legacy_h5(path):
        return load_legacy_h5_weights(model, path, by_name=by_name)
    if not str(path).endswith(".weights.h5"):
        raise InputError(f"weights: a Keras 3 weight file must be named *.weights.h5; received "
                         f"{str(path)!r} (rename it, or save it with model.save_weights)")
    model.load_weights(str(path))
    return None
