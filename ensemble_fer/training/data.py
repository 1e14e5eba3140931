"""The rows a variant trains and is evaluated on, and the ``tf.data`` pipelines that feed them.

``load_splits`` reads a feature store inside a label set; ``train_dataset`` makes the training
batches (augmented, mixed up, class-weighted) as a function of (seed, epoch, step), which is
what makes a resumed run bit-identical to an uninterrupted one; ``eval_dataset`` the
validation batches.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import tensorflow as tf

from ensemble_fer.errors import InputError
from ensemble_fer.features.bovw import BOVW_SIZE, IMAGE_SIZE
from ensemble_fer.features.feature_store import FeatureStore, FeatureStoreError
from ensemble_fer.models.forward import model_inputs
from ensemble_fer.models import networks

@dataclasses.dataclass
class SplitData:
    """The rows of one split that a variant trains or is evaluated on."""

    name: str
    ids: np.ndarray
    y: np.ndarray            # class indices into the label set
    images: np.ndarray       # uint8 (n, 48, 48)
    landmarks: np.ndarray    # float32 (n, 68, 2)
    bovw: np.ndarray         # float32 (n, 2728)
    face_found: np.ndarray   # bool (n,)
    aux: np.ndarray | None = None   # float32 (n, k) auxiliary 0/1 targets, when the variant has them
    soft: np.ndarray | None = None  # float32 (n, n_classes) a teacher's probabilities (distillation)
    views: object | None = None     # distill.TeacherViews: fixed views and the teacher's targets on each

    def __len__(self) -> int:
        return len(self.y)

    def inputs(self, block: str | None, bovw: bool) -> dict[str, np.ndarray]:
        """The named model inputs of these rows."""
        return model_inputs(block, bovw, self.images, self.bovw)


def load_splits(store: FeatureStore, label_set) -> tuple[dict[str, SplitData], dict]:
    """The train/val/test rows of ``store`` inside ``label_set``, and counts of left-out rows.

    Training keeps the rows the store marks ``kept`` (the extraction filter); validation and
    test keep every row, so their metrics cover the whole split. Rows whose label is outside
    the label set are left out everywhere. Raises ``InputError`` (one line) when a split is
    empty or when classes present in validation have no training rows.
    """
    splits, counts = {}, {}
    for split in store.splits:
        arrays = store.load(split)
        y = label_set.encode(arrays["labels"])
        inside = y >= 0
        rows = inside & arrays["kept"] if split == "train" else inside
        n_faces = arrays["n_faces"]
        # n_faces is -1 everywhere when the store was made without a detector: every crop
        # then counts as a face (FER crops are faces), so the subset is the whole split.
        face_found = n_faces == 1 if (n_faces >= 0).all() else np.ones(len(y), dtype=bool)
        splits[split] = SplitData(split, arrays["ids"][rows], y[rows], arrays["images"][rows],
                                  arrays["landmarks"][rows].astype(np.float32),
                                  arrays["bovw"][rows].astype(np.float32), face_found[rows])
        left_out = {"outside_label_set": int((~inside).sum())}
        if split == "train":
            dropped = inside & ~arrays["kept"]
            for reason in np.unique(arrays["reason"][dropped]):
                left_out[f"dropped_{reason or 'filtered'}"] = int((arrays["reason"][dropped] == reason).sum())
        counts[split] = {"rows": int(len(y)), "used": int(rows.sum()), "left_out": left_out,
                         "per_class": {label_set.classes[c]: int(n) for c, n in
                                       zip(*np.unique(y[rows], return_counts=True))}}

    for split in ("train", "val"):
        if split not in splits:
            raise FeatureStoreError(f"{store.path}: has no {split!r} split; training needs train and val")
        if len(splits[split]) == 0:
            raise InputError(f"labels: no {split} rows of {store.path} are inside the label set "
                             f"{label_set.name!r} ({label_set.classes})")
    in_train = set(np.unique(splits["train"].y).tolist())
    for split in ("val", "test"):
        if split not in splits:
            continue
        missing = sorted(set(np.unique(splits[split].y).tolist()) - in_train)
        if missing:
            names = [label_set.classes[c] for c in missing]
            raise InputError(f"labels: classes {names} are in the {split} split of {store.path} but have no "
                             f"training rows (after the extraction filter); choose a label set without "
                             f"them (--labels) or a store whose train split has them")
    if len(in_train) < 2:
        raise InputError(f"labels: the train split of {store.path} has rows of only "
                         f"{[label_set.classes[c] for c in in_train]}; training needs at least 2 classes")
    return splits, counts


def train_dataset(split: SplitData, block, bovw, n_classes, batch_size, seed, first_epoch, last_epoch,
                  augment_config=None, class_weights=None, mixup=0.0, distill_weight=0.0):
    """A ``tf.data`` pipeline of training batches for epochs ``first_epoch .. last_epoch - 1``.

    Element ``i`` is batch ``i % steps`` of epoch ``i // steps``. The order of epoch ``e`` and
    the augmentation of each batch are drawn from numpy generators seeded with ``(seed, e)``
    and ``(seed, e, batch)``, so a batch is the same whichever worker thread makes it and
    whether or not the run was interrupted and resumed. Augmentation (``augment_config`` not
    None) moves the image and its landmarks with one transform and recomputes the HOG, so both
    inputs always describe the same face. Batches are made in parallel and prefetched.

    ``mixup`` > 0 blends every row with another row of its batch (Zhang et al., "mixup",
    ICLR 2018): weight ``lam ~ Beta(mixup, mixup)``, folded to ``max(lam, 1 - lam)`` so the
    row keeps its identity (and its class weight), applied alike to the image, the BOVW
    vector and the one-hot label (and the auxiliary targets). The BOVW of a blend is then the
    blend of the two BOVW vectors, as mixup treats every input of a multi-input network.

    With a teacher's probabilities (``split.soft``, :mod:`ensemble_fer.training.distill`) the
    target of a row is ``(1 - distill_weight) * one_hot + distill_weight * soft`` (before mixup).
    With the teacher's fixed views (``split.views``) each row of epoch ``e`` starts from the
    view drawn for it from ``(seed, e, distill.VIEW_STREAM)`` (augmented from there) and takes
    that view's target.

    With auxiliary targets (``split.aux``) the labels are a dict ``{"probabilities": one-hot,
    "aux": targets}``; Keras takes no ``class_weight`` for two outputs, so ``class_weights``
    (a class -> weight map) then become per-row sample weights of the emotion loss. Without
    them ``class_weights`` is ignored (pass it to ``fit``).
    """
    n = len(split)
    steps = math.ceil(n / batch_size)
    want_images, want_bovw = block is not None, bool(bovw)
    has_aux = split.aux is not None
    aux_rows = split.aux if has_aux else np.zeros((n, 0), np.float32)
    n_aux = aux_rows.shape[1]
    row_weights = None
    if has_aux and class_weights:
        row_weights = np.array([class_weights[int(c)] for c in split.y], dtype=np.float32)
    make_batch = _batch_maker(split, want_images, want_bovw, n_classes, batch_size, seed, augment_config, mixup,
                              distill_weight, aux_rows, row_weights)

    def to_element(index):
        images, features, one_hot, aux, weights = tf.numpy_function(
            make_batch, [index // steps, index % steps], [tf.uint8, tf.float32, tf.float32, tf.float32, tf.float32],
            stateful=False)
        x = {}
        if want_images:
            x[networks.IMAGE_INPUT] = tf.ensure_shape(images[..., None], [None, IMAGE_SIZE, IMAGE_SIZE, 1])
        if want_bovw:
            x[networks.BOVW_INPUT] = tf.ensure_shape(features, [None, BOVW_SIZE])
        one_hot = tf.ensure_shape(one_hot, [None, n_classes])
        if not has_aux:
            return x, one_hot
        labels = {networks.PROBABILITIES_OUTPUT: one_hot, networks.AUX_OUTPUT: tf.ensure_shape(aux, [None, n_aux])}
        if row_weights is None:
            return x, labels
        weights = tf.ensure_shape(weights, [None])
        return x, labels, {networks.PROBABILITIES_OUTPUT: weights, networks.AUX_OUTPUT: tf.ones_like(weights)}

    ds = tf.data.Dataset.range(first_epoch * steps, last_epoch * steps)
    ds = ds.map(to_element, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return ds.prefetch(tf.data.AUTOTUNE), steps


def _batch_maker(split: SplitData, want_images: bool, want_bovw: bool, n_classes: int, batch_size: int, seed,
                 augment_config, mixup: float, distill_weight: float, aux_rows: np.ndarray, row_weights):
    """``make_batch(epoch, step)``: the numpy arrays of one training batch (images, BOVW,
    targets, auxiliary targets, row weights), a function of ``(seed, epoch, step)`` only
    (see :func:`train_dataset`)."""
    n = len(split)
    draws: dict[int, tuple] = {}
    if augment_config is not None:
        from ensemble_fer.features.augment import augment_batch

    views = split.views

    def make_batch(epoch, step):
        epoch, step = int(epoch), int(step)
        if epoch not in draws:
            # Two threads may compute the same epoch's draws at once: both get the same arrays.
            draws[epoch] = _epoch_draws(seed, epoch, n, views)
            draws.pop(epoch - 2, None)
        order, view_of = draws[epoch]
        rows = np.sort(order[step * batch_size:(step + 1) * batch_size])
        if views is None:
            images, landmarks, features = split.images[rows], split.landmarks[rows], split.bovw[rows]
        else:
            v = view_of[rows]
            images = views.images[v, rows]
            landmarks = views.landmarks[v, rows] if views.landmarks is not None else split.landmarks[rows]
            features = views.bovw[v, rows] if views.bovw is not None else split.bovw[rows]
        if augment_config is not None:
            rng = np.random.default_rng([seed, epoch, step + 1])
            images, _, features = augment_batch(images, landmarks, rng, augment_config)
        one_hot = np.eye(n_classes, dtype=np.float32)[split.y[rows]]
        if views is not None:
            one_hot = (1.0 - distill_weight) * one_hot + distill_weight * views.soft[v, rows]
        elif split.soft is not None:
            one_hot = (1.0 - distill_weight) * one_hot + distill_weight * split.soft[rows]
        aux = aux_rows[rows]
        if mixup > 0:
            images, features, one_hot, aux = _mix(np.random.default_rng([seed, epoch, step + 1, 1]), mixup,
                                                  images, features, one_hot, aux)
        images = np.asarray(images, dtype=np.uint8) if want_images else np.zeros((0,), np.uint8)
        features = np.asarray(features, dtype=np.float32) if want_bovw else np.zeros((0,), np.float32)
        weights = row_weights[rows] if row_weights is not None else np.ones(len(rows), np.float32)
        return images, features, one_hot, aux, weights

    return make_batch


def _epoch_draws(seed, epoch: int, n: int, views) -> tuple[np.ndarray, np.ndarray | None]:
    """The row order of an epoch and, with a teacher's views, the view of each row."""
    order = np.random.default_rng([seed, epoch]).permutation(n)
    if views is None:
        return order, None
    from ensemble_fer.training.distill import VIEW_STREAM

    return order, np.random.default_rng([seed, epoch, VIEW_STREAM]).integers(views.n_views, size=n)


def _mix(rng, alpha, images, features, one_hot, aux):
    """mixup of one batch (see :func:`train_dataset`); images stay uint8 (rounded)."""
    lam = rng.beta(alpha, alpha, size=len(one_hot)).astype(np.float32)
    lam = np.maximum(lam, 1.0 - lam)
    partner = rng.permutation(len(one_hot))

    def blend(a):
        a = np.asarray(a, dtype=np.float32)
        w = lam.reshape((-1,) + (1,) * (a.ndim - 1))
        return w * a + (1.0 - w) * a[partner]

    return (np.clip(np.rint(blend(images)), 0, 255).astype(np.uint8), blend(features), blend(one_hot),
            blend(aux))


def eval_dataset(split: SplitData, block, bovw, n_classes, batch_size):
    """A ``tf.data`` pipeline of (inputs, one-hot labels) batches of ``split``, in order."""
    x = split.inputs(block, bovw)
    y = np.eye(n_classes, dtype=np.float32)[split.y]
    if split.aux is not None:
        y = {networks.PROBABILITIES_OUTPUT: y, networks.AUX_OUTPUT: split.aux}
    return tf.data.Dataset.from_tensor_slices((x, y)).batch(batch_size).prefetch(tf.data.AUTOTUNE)



def balanced_class_weights(y: np.ndarray, n_classes: int) -> dict[int, float]:
    """``class_weight="balanced"``: ``n / (k * count)`` per class present in ``y``
    (``sklearn.utils.class_weight.compute_class_weight``)."""
    from sklearn.utils.class_weight import compute_class_weight

    present = np.unique(y)
    values = compute_class_weight("balanced", classes=present, y=y)
    # Classes without training rows never occur in a batch; 1.0 only completes the map.
    weights = {c: 1.0 for c in range(n_classes)}
    weights.update({int(c): float(w) for c, w in zip(present, values)})
    return weights
