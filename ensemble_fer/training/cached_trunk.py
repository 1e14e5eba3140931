"""Training on cached trunk outputs: the frozen part of a pretrained block runs once per crop
and view, not once per crop and epoch.

On a CPU the pretrained trunk is what costs (the VGGFace2 MobileNet at 128 px: ~7 ms a crop
forward, ~3x that to train). Where it does not learn, its output is the same every epoch, so:

* **frozen phase**: the whole block is frozen; its pooled output for every training crop in
  each of ``cached_views`` fixed views (identity, mirror, then the test-time views of
  :data:`~ensemble_fer.features.augment.TTA_VIEWS`) is computed once, and the head and the
  BOVW branch train on those vectors (seconds an epoch instead of an hour);
* **finetune phase with** ``finetune_from`` (a layer of the block): the layers before it stay
  frozen and the input of that layer is cached the same way; the top of the block and the
  head fine-tune on it ("top blocks first").

The model that trains (:func:`split_network`'s ``top``) is built from the full network's own
layers, so every step changes the full network's weights; the full network is what is
checkpointed, resumed and saved, compiled with the same optimizer, whose variables are those
of the full network's trainable layers (the same set). Each epoch, row ``i`` of the shuffled
order (as in :func:`~ensemble_fer.training.data.train_dataset`, from ``(seed, epoch)``) takes
the view drawn for it from ``(seed, epoch, VIEW_STREAM)``: a function of (seed, epoch), so a
resumed run is bit-identical. What the cache cannot give: random affine augmentation beyond
the fixed views, and mixup (neither is applied in a cached phase).

The cache of a run is also kept on disk, view by view (:class:`ViewStore`, in the run's
``.run/trunk_cache/``), so that a resumed run reads it instead of computing it again (36
minutes for 6 views of FER2013 at 128 px cut at ``conv_dw_7`` on a 2-core CPU; 7.5 GB to read
back with the BOVW rows), including a run stopped while it was caching. It is removed when the
run completes.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import shutil
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from ensemble_fer import artifacts
from ensemble_fer.errors import InputError
from ensemble_fer.features.bovw import BOVW_SIZE
from ensemble_fer.models import networks

VIEW_STREAM = 0xCA
"""Third seed word of the per-epoch view draw (apart from the order's ``(seed, epoch)``)."""

FEATURES_INPUT = "trunk_features"
"""Input name of the top model: the cached tensor."""

CACHE_DTYPE = np.float16
"""The dtype of a cache of unbounded values (a pooled output, a plain ReLU's output)."""

RELU6_STEP = 6.0 / 255.0
"""A cut at a ReLU6's output (MobileNet's) holds values in [0, 6]: stored as uint8 multiples of
this step (error <= 0.012; 1 byte a value where float16 takes 2), so the cache holds twice the
views in the same memory (4 views of FER2013 cut at faceres's ``conv_dw_5`` at 160 px: 11 GB).
:func:`decode` turns it back into float32."""


def _codec(bottom: keras.Model) -> tuple[type, float | None]:
    """(dtype, step) of the cache of ``bottom``'s output: uint8 steps after a ReLU6."""
    last = bottom.layers[-1]
    if isinstance(last, keras.layers.ReLU) and last.max_value is not None and float(last.max_value) == 6.0 \
            and not last.negative_slope and not last.threshold:
        return np.uint8, RELU6_STEP
    return CACHE_DTYPE, None


def decode(features: np.ndarray) -> np.ndarray:
    """Cached rows as float32 (uint8 rows are ReLU6 steps)."""
    if features.dtype == np.uint8:
        return features.astype(np.float32) * np.float32(RELU6_STEP)
    return features.astype(np.float32)


@dataclasses.dataclass
class SplitNetwork:
    """A network cut where its block stops being frozen."""

    bottom: keras.Model       # image -> the cached tensor (frozen layers only)
    top: keras.Model          # {trunk_features[, bovw]} -> the network's outputs (what trains)
    frozen_layers: list       # the block's layers that stay frozen (empty: the whole block)
    rest: keras.Model | None = None   # cached tensor -> pooled block output (a cut inside the block)


def block_input_tensor(model: keras.Model, block: str):
    """The tensor of the full network that the nested block is called on (after preprocessing)."""
    net = networks.get_block(model, block)
    return net._inbound_nodes[0].input_tensors[0]   # the block is called once in build_network


def split_network(model: keras.Model, block: str, first_trainable: str | None, bovw: bool) -> SplitNetwork:
    """Cut ``model`` before block layer ``first_trainable`` (None: after the pooled block output).

    Both models are made of the network's own layers (no copies), applied anew to new inputs:
    a model whose inputs are intermediate tensors of another would corrupt that one's graph.
    Cutting inside the block needs a block whose layers form a chain (MobileNet does)."""
    image = model.get_layer(networks.IMAGE_INPUT).output
    net = networks.get_block(model, block)
    bovw_in = keras.Input((BOVW_SIZE,), name=networks.BOVW_INPUT) if bovw else None
    extra = {networks.BOVW_INPUT: bovw_in} if bovw else {}
    if first_trainable is None:
        pooled = model.get_layer("image_pool").output
        bottom = keras.Model(image, pooled, name="frozen_bottom")
        features = keras.Input(shape=tuple(pooled.shape[1:]), name=FEATURES_INPUT)
        top = keras.Model({FEATURES_INPUT: features, **extra}, networks.apply_head(model, features, bovw_in),
                          name="cached_top")
        return SplitNetwork(bottom, top, list(net.layers))
    from ensemble_fer.training.schedule import frozen_block_layers

    frozen = frozen_block_layers(net, first_trainable)
    chain = net.layers[1:]   # [0] is the block's InputLayer
    for previous, layer in zip(net.layers, chain):
        inbound = layer._inbound_nodes[0].input_tensors
        if len(inbound) != 1 or inbound[0]._keras_history[0] is not previous:
            raise InputError(f"finetune_from: block {block!r} is not a chain of layers ({layer.name!r} does not "
                             f"take the output of {previous.name!r}), so it cannot be cut at {first_trainable!r}")
    preprocess = keras.Model(image, block_input_tensor(model, block), name="preprocess")
    bottom_in = keras.Input(shape=tuple(image.shape[1:]), dtype=image.dtype, name="image_in")
    x = preprocess(bottom_in)
    for layer in frozen[1:]:
        x = layer(x)
    bottom = keras.Model(bottom_in, x, name="frozen_bottom")
    features = keras.Input(shape=tuple(x.shape[1:]), name=FEATURES_INPUT)
    y = features
    for layer in chain[len(frozen) - 1:]:
        y = layer(y)
    pooled = model.get_layer("image_pool")(y)
    top = keras.Model({FEATURES_INPUT: features, **extra}, networks.apply_head(model, pooled, bovw_in),
                      name="cached_top")
    return SplitNetwork(bottom, top, frozen, rest=keras.Model(features, pooled, name="block_rest"))


def fixed_view(split, index: int, bovw: bool):
    """Fixed view ``index`` of a split's crops (:data:`~ensemble_fer.features.augment.TTA_VIEWS`):
    ``(images, bovw rows or None)``. One view at a time: six views' BOVW rows at once would be
    2 GB beside the cache."""
    from ensemble_fer.features.augment import tta_image, tta_view

    if bovw:
        images, _, rows = tta_view(split.images, split.landmarks, index)
        return images, rows
    return tta_image(split.images, index), None


def cache_features(bottom: keras.Model, images: np.ndarray, batch_size: int = 256, say=None,
                   what: str = "", out: np.ndarray | None = None) -> np.ndarray:
    """``bottom`` run once over uint8 crops (n, 48, 48): (n, *cut shape), float16, or uint8 steps
    after a ReLU6 (:func:`decode`); written into ``out`` when given."""
    n = len(images)
    dtype, step = _codec(bottom)
    for start in range(0, n, batch_size):
        x = images[start:start + batch_size, ..., None]
        y = keras.ops.convert_to_numpy(bottom(tf.constant(x), training=False))
        if out is None:
            out = np.empty((n,) + y.shape[1:], dtype)
        if step is not None:
            y = np.clip(np.rint(y.astype(np.float32) / np.float32(step)), 0, 255)
        out[start:start + len(y)] = y
        if say is not None and (start // batch_size) % 20 == 19:
            say(f"  caching {what}: {start + len(y):,}/{n:,}")
    return out


@dataclasses.dataclass
class CachedSplit:
    """One split's cached tensors: ``features`` (n_views, n, *shape) and BOVW (n_views, n, 2728)."""

    features: np.ndarray
    bovw: np.ndarray | None
    y: np.ndarray
    soft: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.y)


def pooled_from(rest: keras.Model, cached: CachedSplit, batch_size: int = 512, say=None,
                what: str = "") -> CachedSplit:
    """The pooled block outputs of a cache cut inside the block (``rest`` applied once per row
    and view): the frozen phase's cache, without running the bottom again. Minutes for a cut
    low in the block (4 views at ``conv_dw_5``), so ``say`` hears of every 20 batches."""
    views = []
    n_views = len(cached.features)
    for v, features in enumerate(cached.features):
        out = []
        for i in range(0, len(features), batch_size):
            out.append(keras.ops.convert_to_numpy(rest(tf.constant(decode(features[i:i + batch_size])),
                                                       training=False)))
            if say is not None and len(out) % 20 == 0:
                say(f"  pooling {what} view {v + 1}/{n_views}: {i + len(out[-1]):,}/{len(features):,}")
        views.append(np.concatenate(out).astype(CACHE_DTYPE))
    return CachedSplit(np.stack(views), cached.bovw, cached.y, cached.soft)


TRUNK_CACHE_DIR = "trunk_cache"
"""The folder of a run's ``.run/`` that keeps its cache between sittings (:class:`ViewStore`)."""

_STORE_FORMAT = 1


def cache_key(bottom: keras.Model, split, n_views: int, bovw: bool) -> str:
    """What a split's cache is a function of: the frozen layers (kinds, names, weights), the
    crops (and landmarks, which the BOVW rows of a view are computed from), the views. A cache
    on disk under another key is computed again."""
    from ensemble_fer.features.augment import TTA_VIEWS

    digest = hashlib.sha256(json.dumps({
        "format": _STORE_FORMAT, "views": n_views, "bovw": bool(bovw), "tta_views": repr(TTA_VIEWS),
        "layers": [[type(layer).__name__, layer.name] for layer in bottom.layers],
        "dtype": np.dtype(_codec(bottom)[0]).name}).encode())
    for array in [*bottom.get_weights(), split.images, split.y] + ([split.landmarks] if bovw else []):
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


class ViewStore:
    """One split's cache on disk: ``<folder>/key.txt`` and one ``.npy`` per view (``view-<v>.npy``,
    and ``bovw-<v>.npy`` with the BOVW branch), each written atomically as soon as it is
    computed, read without pickle. A folder of another key is emptied first. A view that cannot
    be written (a full disk) is only not kept: the run goes on, and a resume computes it again."""

    def __init__(self, folder, key: str, say=None):
        self.folder, self.say = Path(folder), say
        self.writable = True
        key_path = self.folder / "key.txt"
        if self.folder.exists():
            artifacts.clean_stale_temporaries(self.folder)
            if not key_path.is_file() or key_path.read_text(errors="replace").strip() != key:
                shutil.rmtree(self.folder)
        if not self.folder.exists():
            try:
                self.folder.mkdir(parents=True)
                with artifacts.atomic_path(key_path) as tmp:
                    tmp.write_text(key + "\n")
            except (OSError, InputError) as exc:
                self._give_up(exc)

    def _give_up(self, exc) -> None:
        self.writable = False
        if self.say is not None:
            self.say(f"  the cache is not kept on disk ({exc}); a resumed run computes it again")

    def _path(self, what: str, view: int) -> Path:
        return self.folder / f"{what}-{view}.npy"

    def read(self, view: int, features: np.ndarray, rows: np.ndarray | None) -> bool:
        """Fill ``features`` (and ``rows``) with a kept view; False when it is not there whole."""
        parts = [("view", features)] + ([("bovw", rows)] if rows is not None else [])
        try:
            kept = [np.load(self._path(what, view), mmap_mode="r", allow_pickle=False) for what, _ in parts]
        except (OSError, ValueError):
            return False   # not written yet, or not a whole .npy: computed again
        if any(k.shape != out.shape or k.dtype != out.dtype for k, (_, out) in zip(kept, parts)):
            return False
        for k, (_, out) in zip(kept, parts):
            out[...] = k
        return True

    def write(self, view: int, features: np.ndarray, rows: np.ndarray | None) -> None:
        if not self.writable:
            return
        try:
            # The BOVW rows first: a view counts as kept once its features are there.
            for what, array in ([("bovw", rows)] if rows is not None else []) + [("view", features)]:
                with artifacts.atomic_path(self._path(what, view), suffix=".npy") as tmp, open(tmp, "wb") as handle:
                    np.save(handle, array, allow_pickle=False)
        except (OSError, InputError) as exc:
            self._give_up(exc)


def cache_split(bottom, split, n_views: int, bovw: bool, say, keep_in=None) -> CachedSplit:
    """``bottom``'s outputs for ``n_views`` fixed views of ``split`` (and their BOVW rows).

    ``keep_in``: a folder where the views are kept as they are computed and read back from
    by a later call on the same key (:class:`ViewStore`)."""
    # Filled in place, view by view: the peak is the cache, not twice it (6 views of 28,709 crops
    # cut at faceres's conv_dw_7: 11 GB).
    dtype, _ = _codec(bottom)
    shape = tuple(bottom.output.shape[1:])
    n = len(split.y)
    features = np.empty((n_views, n) + shape, dtype)
    rows = np.empty((n_views, n, BOVW_SIZE), np.float32) if bovw else None
    store = None if keep_in is None else ViewStore(Path(keep_in) / split.name,
                                                   cache_key(bottom, split, n_views, bovw), say)
    missing = [v for v in range(n_views)
               if store is None or not store.read(v, features[v], rows[v] if bovw else None)]
    if store is not None and len(missing) < n_views and say is not None:
        say(f"  {split.name}: {n_views - len(missing)} of {n_views} view(s) read from {store.folder}")
    for v in missing:
        if say is not None:
            say(f"  {split.name}: computing view {v + 1}/{n_views}")
        images, view_rows = fixed_view(split, v, bovw)
        cache_features(bottom, images, say=say, what=f"{split.name} view {v + 1}/{n_views}", out=features[v])
        if bovw:
            rows[v] = view_rows
        if store is not None:
            store.write(v, features[v], rows[v] if bovw else None)
    soft = split.views.soft if split.views is not None else split.soft
    return CachedSplit(features, rows, split.y, soft)


def discard_kept(run_dir) -> None:
    """Remove the cache a run kept on disk (when the run is complete: it is large)."""
    shutil.rmtree(Path(run_dir) / TRUNK_CACHE_DIR, ignore_errors=True)


def train_dataset(cached: CachedSplit, n_classes: int, batch_size: int, seed: int, first_epoch: int,
                  last_epoch: int, distill_weight: float = 0.0):
    """Training batches of a cached split for epochs ``first_epoch .. last_epoch - 1``: the order of
    epoch ``e`` from ``(seed, e)`` (as the image pipeline's), each row's view from
    ``(seed, e, VIEW_STREAM)``."""
    n, n_views = len(cached), cached.features.shape[0]
    steps = math.ceil(n / batch_size)
    shape = cached.features.shape[2:]
    has_bovw = cached.bovw is not None

    draws: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def make_batch(epoch, step):
        epoch, step = int(epoch), int(step)
        # Once per epoch, not per batch; two threads may draw the same epoch: same arrays.
        if epoch not in draws:
            draws[epoch] = (np.random.default_rng([seed, epoch]).permutation(n),
                            np.random.default_rng([seed, epoch, VIEW_STREAM]).integers(n_views, size=n))
            draws.pop(epoch - 2, None)
        order, views = draws[epoch]
        rows = np.sort(order[step * batch_size:(step + 1) * batch_size])
        x = decode(cached.features[views[rows], rows])
        b = cached.bovw[views[rows], rows] if has_bovw else np.zeros((0,), np.float32)
        one_hot = np.eye(n_classes, dtype=np.float32)[cached.y[rows]]
        if cached.soft is not None:
            # per view when the teacher predicted the same fixed views (distill.TeacherViews)
            soft = cached.soft[views[rows], rows] if cached.soft.ndim == 3 else cached.soft[rows]
            one_hot = (1.0 - distill_weight) * one_hot + distill_weight * soft
        return x, b, one_hot

    def to_element(index):
        x, b, one_hot = tf.numpy_function(make_batch, [index // steps, index % steps],
                                          [tf.float32, tf.float32, tf.float32], stateful=False)
        inputs = {FEATURES_INPUT: tf.ensure_shape(x, [None, *shape])}
        if has_bovw:
            inputs[networks.BOVW_INPUT] = tf.ensure_shape(b, [None, BOVW_SIZE])
        return inputs, tf.ensure_shape(one_hot, [None, n_classes])

    ds = tf.data.Dataset.range(first_epoch * steps, last_epoch * steps)
    ds = ds.map(to_element, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return ds.prefetch(tf.data.AUTOTUNE), steps


def eval_dataset(cached: CachedSplit, n_classes: int, batch_size: int):
    """The first view (the crops as they are) of a cached split, in order."""
    x = {FEATURES_INPUT: cached.features[0]}
    if cached.bovw is not None:
        x[networks.BOVW_INPUT] = cached.bovw[0]
    y = np.eye(n_classes, dtype=np.float32)[cached.y]
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(batch_size)
    step = RELU6_STEP if cached.features.dtype == np.uint8 else 1.0
    return ds.map(lambda a, b: ({k: tf.cast(v, tf.float32) * (step if k == FEATURES_INPUT else 1.0)
                                 for k, v in a.items()}, b)).prefetch(tf.data.AUTOTUNE)
