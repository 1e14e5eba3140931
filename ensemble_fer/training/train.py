"""Training one variant: the two-phase EmoNet schedule and the outputs of ``models/<variant>/``.

Schedule
--------
* **frozen** (only when the block starts from pretrained weights, and ``epochs_frozen > 0``):
  the block is frozen (``block.trainable = False``, which in Keras 3 also runs its batch-norm
  layers in inference mode, so their moving statistics stay those of the pretraining) and only
  the new layers learn, with Adam (``frozen_lr``, 1e-3) for ``epochs_frozen`` epochs. This
  protects the pretrained filters from the large gradients of a randomly initialised head.
* **finetune**: everything trainable, SGD with Nesterov momentum 0.9 at ``lr`` (the paper's
  fine-tuning), up to ``epochs`` epochs, ReduceLROnPlateau and EarlyStopping on ``val_loss``.
* **scratch** replaces both when there are no pretrained weights (a compact block, the
  BOVW-only network or ``weights=None``): there is nothing to protect, so the whole network
  trains from the start, with Adam at ``lr`` by default (``scratch_optimizer="sgd"`` gives the
  finetune optimiser instead). Adam because SGD at the fine-tuning rate of 1e-3 is far too
  slow for randomly initialised layers, and it needs no per-block learning-rate search.
  ReduceLROnPlateau and EarlyStopping as in finetune.

``lr_schedule="cosine"`` replaces ReduceLROnPlateau in the finetune / scratch phase by a cosine
decay of the rate, per step, from ``lr`` to 1% of it at the last of ``epochs`` epochs. For a
fixed budget (``epochs`` chosen to fill ``max_minutes``) a rate that reaches ~0 exactly when
the budget ends beats waiting for plateaus, which a short run hardly sees (Li, Yumer & Ramanan,
"Budgeted training", ICLR 2020). The decay is part of the optimizer, so ``resume`` continues it;
``epochs`` then cannot change on resume.

Every phase ends on the weights of its best epoch (lowest ``val_loss``), and the next phase
starts from them; ``model.keras`` holds the best epoch of the last phase.

Outputs (see docs/ARCHITECTURE.md): ``model.keras``, ``config.json`` (written last: its
presence means the variant is complete), ``history.csv`` (rewritten after every epoch, with a
``phase`` column), ``curves.png``, ``predictions.npz``, ``metrics.json``,
``confusion_matrix.png`` -- every file written atomically. ``.run/`` holds what ``resume``
needs (the full model with its optimizer state after the last epoch, the best weights of the
current phase, ``state.json``); it is kept after the run so that a finished run can be
continued with more epochs, and can be deleted when that is not wanted. A resumed run is
bit-identical to an uninterrupted one (same machine): the data order, the augmentation and
the dropout masks are functions of (seed, epoch, step), and the optimizer and the
early-stopping / plateau counters are in the checkpoint. What a killed run (``kill -9``) left
half-written is removed by the next run in the same folder.

Public API::

    train_variant(store, block=None, bovw=False, *, out=None, labels="fer7", ...) -> Path
    check_arguments(**train_variant_kwargs) -> dict       (validation alone, e.g. of a search grid)
    load_variant(path) -> (keras.Model, config dict)
    predict_proba(model, config, images=None, bovw=None, batch_size=256) -> (n, n_classes)
    predict_aux_proba(model, config, images=None, bovw=None, batch_size=256) -> (n, n_aux)
"""

from __future__ import annotations

import dataclasses
import math
import os
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from ensemble_fer import artifacts

from ensemble_fer.evaluation import metrics
from ensemble_fer.models import networks
from ensemble_fer.features.bovw import BOVW_SIZE, IMAGE_SIZE
from ensemble_fer.errors import InputError, MissingInputError
from ensemble_fer.features.feature_store import FeatureStore, FeatureStoreError
from ensemble_fer.labels import get_label_set

PHASE_FROZEN = "frozen"
PHASE_FINETUNE = "finetune"
PHASE_SCRATCH = "scratch"

PRECISIONS = ("auto", "float32", "mixed_float16", "mixed_bfloat16")
CLASS_WEIGHTS = ("none", "balanced")
SCRATCH_OPTIMIZERS = ("adam", "sgd")
LR_SCHEDULES = ("plateau", "cosine")
COSINE_FLOOR = 0.01
"""The cosine schedule ends at this fraction of ``lr``."""

OUTPUT_FILES = ("model.keras", "config.json", "history.csv", "curves.png", "predictions.npz",
                "metrics.json", "confusion_matrix.png")
RUN_DIR = ".run"

MAX_SEED = 2**32 - 1
"""Largest seed: numpy's and Keras's generators take seeds in [0, 2**32 - 1]."""

MOMENTUM = 0.9
"""SGD momentum of the finetune phase (Nesterov)."""

RESUMABLE_CHANGES = ("epochs", "max_minutes", "features", "out", "progress")
"""Arguments that may differ between a run and its ``resume``: how long to train, where the
files are, how much is printed. Everything else would make a different model."""

ADDED_ARGUMENTS = {"aux_targets": None, "aux_loss_weight": 1.0, "lr_schedule": "plateau", "mixup": 0.0,
                   "weight_decay": 0.0}
"""Arguments added after runs may have been saved: a saved run without them was made with
these values (so that ``resume`` still accepts it)."""

HISTORY_COLUMNS = ("epoch", "phase", "phase_epoch", "loss", "accuracy", "val_loss",
                   "val_accuracy", "learning_rate", "seconds")


# ------------------------------------------------------------------------------------------
# data
# ------------------------------------------------------------------------------------------

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

    def __len__(self) -> int:
        return len(self.y)

    def inputs(self, block: str | None, bovw: bool) -> dict[str, np.ndarray]:
        """The named model inputs of these rows."""
        return _model_inputs(block, bovw, self.images, self.bovw)


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


def _model_inputs(block, bovw, images, bovw_rows) -> dict[str, np.ndarray]:
    inputs = {}
    if block is not None:
        inputs[networks.IMAGE_INPUT] = images[..., None] if images.ndim == 3 else images
    if bovw:
        inputs[networks.BOVW_INPUT] = bovw_rows
    return inputs


def train_dataset(split: SplitData, block, bovw, n_classes, batch_size, seed, first_epoch, last_epoch,
                  augment_config=None, class_weights=None, mixup=0.0):
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
    orders: dict[int, np.ndarray] = {}
    if augment_config is not None:
        from ensemble_fer.training.augment import augment_batch

    def make_batch(epoch, step):
        epoch, step = int(epoch), int(step)
        order = orders.get(epoch)
        if order is None:
            # Two threads may compute the same epoch's order at once: both get the same array.
            order = orders[epoch] = np.random.default_rng([seed, epoch]).permutation(n)
            orders.pop(epoch - 2, None)
        rows = np.sort(order[step * batch_size:(step + 1) * batch_size])
        if augment_config is not None:
            rng = np.random.default_rng([seed, epoch, step + 1])
            images, _, features = augment_batch(split.images[rows], split.landmarks[rows], rng, augment_config)
        else:
            images, features = split.images[rows], split.bovw[rows]
        one_hot = np.eye(n_classes, dtype=np.float32)[split.y[rows]]
        aux = aux_rows[rows]
        if mixup > 0:
            images, features, one_hot, aux = _mix(np.random.default_rng([seed, epoch, step + 1, 1]), mixup,
                                                  images, features, one_hot, aux)
        images = np.asarray(images, dtype=np.uint8) if want_images else np.zeros((0,), np.uint8)
        features = np.asarray(features, dtype=np.float32) if want_bovw else np.zeros((0,), np.float32)
        weights = row_weights[rows] if row_weights is not None else np.ones(len(rows), np.float32)
        return images, features, one_hot, aux, weights

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


# ------------------------------------------------------------------------------------------
# the public entry points
# ------------------------------------------------------------------------------------------

def train_variant(store, block: str | None = None, bovw: bool = False, *, out=None, labels: str = "fer7",
                  weights="default", image_size: int | None = None, epochs_frozen: int = 5,
                  epochs: int = 50, batch_size: int = 64, lr: float = 1e-3, frozen_lr: float = 1e-3,
                  scratch_optimizer: str = "adam", class_weight: str | None = None,
                  label_smoothing: float = 0.0, augment: bool = True, augment_config=None,
                  mixup: float = 0.0, weight_decay: float = 0.0, patience: int = 10,
                  lr_schedule: str = "plateau", lr_patience: int = 4,
                  lr_factor: float = 0.5, min_lr: float = 1e-6, dropout: float = 0.5,
                  bovw_units: Sequence[int] = networks.BOVW_UNITS,
                  dense_units: int = networks.DENSE_UNITS, seed: int = 0, precision: str = "auto",
                  aux_targets=None, aux_loss_weight: float = 1.0,
                  resume: bool = False, force: bool = False, max_minutes: float | None = None,
                  progress: bool = True, callbacks: Sequence = ()) -> Path:
    """Train one variant on a feature store and write its folder; returns the folder.

    Parameters
    ----------
    store : FeatureStore or path
        The feature store (``features/<name>``) to train on.
    block : str or None
        Image block (:func:`ensemble_fer.models.blocks.list_blocks`), or None for the BOVW-only
        network (then ``bovw`` must be True).
    bovw : bool
        Whether the network has the BOVW input.
    out : path, optional
        Output folder; default ``models/<variant>`` in the current directory.
    labels : str
        Label set (``fer7``, ``valence3`` or a comma-separated subset).
    weights : "default", None, "none", a named weight set or a file path
        Initial weights of the block. Pretrained weights (the default of ``resnet50`` and
        ``inception_resnet_v2``, or any file) bring the frozen phase; none skip it.
    image_size : int, optional
        Side the crops are resized to for the block; default the block's own size.
    epochs_frozen, epochs : int
        Epochs of the frozen phase, and at most of the finetune / scratch phase.
    batch_size : int
    lr : float
        Learning rate of the finetune phase (SGD Nesterov) or of the scratch phase.
    frozen_lr : float
        Adam learning rate of the frozen phase.
    scratch_optimizer : "adam" or "sgd"
        Optimiser of the scratch phase (see the module docstring).
    class_weight : None, "none" or "balanced"
        "balanced": loss weights ``n / (k * count)`` per class
        (``sklearn.utils.class_weight.compute_class_weight``).
    label_smoothing : float in [0, 1)
    augment : bool
        Random affine augmentation of training batches (``ensemble_fer.training.augment``);
        ``augment_config`` replaces its default ``AugmentConfig()``.
    mixup : float >= 0
        Alpha of mixup's Beta distribution (0: off; 0.2 is usual): every training row is
        blended with another of its batch, inputs and labels alike (see :func:`train_dataset`).
    weight_decay : float in [0, 1)
        Decoupled weight decay of every optimiser (AdamW-style: each step ``w -= lr *
        weight_decay * w``); 0 is off. With SGD momentum 0.9 it matches an L2 term of
        ``weight_decay / 10`` in frameworks that add the decay to the gradient.
    patience : int
        EarlyStopping patience (on ``val_loss``).
    lr_schedule : "plateau" or "cosine"
        How the rate of the finetune / scratch phase falls: "plateau" (the paper's), by
        ``lr_factor`` after ``lr_patience`` epochs without a ``val_loss`` gain, down to
        ``min_lr``; "cosine", per step to 1% of ``lr`` at the end of ``epochs`` epochs (see
        the module docstring).
    lr_patience, lr_factor, min_lr
        ReduceLROnPlateau patience, factor and floor (``lr_schedule="plateau"`` only).
    dropout, bovw_units, dense_units
        Head of the network (see :func:`ensemble_fer.models.networks.build_network`).
    seed : int
        Seeds Keras (initialisation, dropout) and the data order and augmentation: a rerun
        with the same arguments on the same machine gives the same model.
    precision : "auto", "float32", "mixed_float16", "mixed_bfloat16"
        "auto": mixed_float16 when a GPU is visible; on the CPU mixed_bfloat16 when it has native
        bfloat16 (AVX512-BF16 / AMX), else float32 (:func:`auto_precision`). The saved ``model.keras``
        is float32 whatever the training precision.
    aux_targets : path, optional
        A CSV of per-image 0/1 targets (e.g. action units; :mod:`ensemble_fer.training.aux_targets`).
        The network then gets a second, multi-label sigmoid output ``aux`` trained with binary
        cross-entropy beside the emotion softmax (both on the shared head features).
        ``val_loss`` (early stopping, learning-rate drops) is then the weighted sum of both
        losses. Without it the variant is exactly the emotion-only network.
    aux_loss_weight : float
        Weight of the auxiliary loss (the emotion loss has weight 1).
    resume : bool
        Continue the run in ``out`` from its last checkpoint (a new run when there is none);
        refused when arguments other than :data:`RESUMABLE_CHANGES` differ. A finished run
        stopped by its epoch limit continues when ``epochs`` is larger.
    force : bool
        Replace an existing variant in ``out``.
    max_minutes : float, optional
        Wall-clock budget of this call: no epoch starts that would be expected to end after
        it. The outputs are written from the best epoch so far; ``resume`` continues later.
    progress : bool
        Print progress bars and phase headers.
    callbacks : sequence of keras.callbacks.Callback
        Extra callbacks, run after the built-in ones in every phase (e.g. the pruner of a
        hyperparameter search).
    """
    started = time.time()
    settings = _check_arguments(
        block=block, bovw=bovw, labels=labels, weights=weights, image_size=image_size,
        epochs_frozen=epochs_frozen, epochs=epochs, batch_size=batch_size, lr=lr, frozen_lr=frozen_lr,
        scratch_optimizer=scratch_optimizer, class_weight=class_weight, label_smoothing=label_smoothing,
        augment=augment, mixup=mixup, weight_decay=weight_decay, patience=patience, lr_schedule=lr_schedule, lr_patience=lr_patience,
        lr_factor=lr_factor, min_lr=min_lr,
        dropout=dropout, bovw_units=bovw_units, dense_units=dense_units, seed=seed, precision=precision,
        aux_targets=aux_targets, aux_loss_weight=aux_loss_weight, max_minutes=max_minutes)
    say = print if progress else (lambda *args, **kwargs: None)
    label_set = get_label_set(settings["labels"])
    variant = networks.variant_name(block, bovw)
    if not isinstance(store, FeatureStore):
        store = FeatureStore(store)
    out = Path(out) if out is not None else Path("models") / variant

    augment_cfg = None
    if settings["augment"]:
        from ensemble_fer.training import augment as augment_module
        augment_cfg = augment_config if augment_config is not None else augment_module.AugmentConfig()
    settings["augment_config"] = _to_json(augment_cfg) if augment_cfg is not None else None
    settings["features"] = str(store.path)
    settings["feature_store"] = {"config_hash": store.config_hash, "manifest_hash": store.manifest_hash}
    settings["out"] = str(out)
    settings["progress"] = bool(progress)
    gpus = tf.config.list_physical_devices("GPU")
    policy = settings["precision"] if settings["precision"] != "auto" else auto_precision(bool(gpus))
    settings["precision_policy"] = policy

    splits, counts = load_splits(store, label_set)
    aux = None
    if settings["aux_targets"] is not None:
        from ensemble_fer.training.aux_targets import read_aux_targets

        aux = read_aux_targets(settings["aux_targets"])
        aux.check_ids(np.concatenate([store.load(split)["ids"] for split in store.splits]), store.path)
        for name, split in splits.items():
            split.aux = aux.align(split.ids, name)
    state, stale = _check_out(out, settings, resume=resume, force=force, say=say)
    _clean_after_kill(out, state)
    finish_only = False
    if state is not None and state["complete"] and (
            state["stopped"] == "early stopping" or state["args"]["epochs"] >= settings["epochs"]):
        if (out / "config.json").is_file():
            say(f"{out}: the run is already complete (stopped by {state['stopped']} after {state['epoch']} "
                f"epochs); nothing to resume")
            return out
        # Training finished but the run stopped before its outputs were all written.
        say(f"{out}: the run finished training; writing its outputs")
        finish_only = True

    spec = None
    if block is not None:
        from ensemble_fer.models import blocks

        spec = blocks.get_block_spec(block)
    pretrained = _has_pretrained_weights(spec, settings["weights"])
    phases = _plan_phases(pretrained, settings)
    if phases[0]["name"] == PHASE_SCRATCH:
        why = "there is no image block" if block is None else f"block {block!r} starts from random weights"
        say(f"No frozen phase: {why}, so there are no pretrained weights to protect; the whole network "
            f"trains from the start with {phases[0]['optimizer']} (lr {phases[0]['lr']:g}).")
    elif phases[0]["name"] == PHASE_FINETUNE:
        say("No frozen phase (epochs_frozen=0): the pretrained block is fine-tuned from the first epoch.")

    class_weights = None
    if settings["class_weight"] == "balanced":
        from sklearn.utils.class_weight import compute_class_weight

        present = np.unique(splits["train"].y)
        values = compute_class_weight("balanced", classes=present, y=splits["train"].y)
        # Classes without training rows never occur in a batch; 1.0 only completes the map.
        class_weights = {c: 1.0 for c in range(label_set.n_classes)}
        class_weights.update({int(c): float(w) for c, w in zip(present, values)})

    build_args = dict(block=block, bovw=settings["bovw"], n_classes=label_set.n_classes,
                      image_size=settings["image_size"], dropout=settings["dropout"],
                      bovw_units=settings["bovw_units"], dense_units=settings["dense_units"],
                      n_aux=len(aux.names) if aux is not None else 0)
    if settings["bovw"]:
        # Statistics of the training rows only: validation and test must not leak into the model.
        build_args["bovw_mean"], build_args["bovw_var"] = networks.bovw_statistics(splits["train"].bovw)

    previous_policy = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(policy)
    from ensemble_fer.distribute import choose_strategy

    strategy = choose_strategy(gpus)     # TF_CONFIG workers, several GPUs, or the default
    try:
        keras.utils.set_random_seed(settings["seed"])
        with strategy.scope():
            if state is None:
                # Built before the old outputs go, so that unavailable weights change nothing.
                model = networks.build_network(weights=settings["weights"], **build_args)
                _remove(out, stale)
                state = _new_state(settings, phases)
            else:
                model = _load_checkpoint(out, state)
                state["args"] = settings
        run = _Run(model=model, block=block, bovw=settings["bovw"], splits=splits,
                   n_classes=label_set.n_classes, settings=settings, phases=phases, state=state, out=out,
                   strategy=strategy, augment_cfg=augment_cfg, class_weights=class_weights, say=say,
                   started=started, extra_callbacks=list(callbacks))
        if not finish_only:
            run.train()
        elif state["best_weights"]:
            # EarlyStopping had restored these in memory; the checkpoint holds the last epoch's.
            run.model.set_weights(_load_weights_npz(out / RUN_DIR / state["best_weights"]))
        keras.mixed_precision.set_global_policy("float32")
        final = _inference_copy(run.model, build_args)
    finally:
        keras.mixed_precision.set_global_policy(previous_policy)

    _write_outputs(out, final, run, label_set, store, counts, variant, pretrained, aux,
                   {"precision": policy, "gpus": len(gpus), "strategy": type(strategy).__name__,
                    "replicas": int(strategy.num_replicas_in_sync)},
                   time.time() - started)
    say(f"wrote {out}")
    return out


def load_variant(path) -> tuple[keras.Model, dict]:
    """Load a trained variant: ``(keras model, config dict)``.

    ``path``: the variant folder, or its ``model.keras``. The model is loaded in safe mode
    (no code from the file runs) and without an optimizer.
    """
    from ensemble_fer.models import blocks  # noqa: F401  registers the custom preprocessing layers

    path = Path(path)
    folder = path.parent if path.suffix == ".keras" else path
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise MissingInputError(f"{folder}: not a trained variant (no config.json); train one with "
                                f"`python -m pipelines.train_variant`")
    config = artifacts.read_json(config_path)
    model_path = folder / "model.keras"
    if not model_path.is_file():
        raise MissingInputError(f"{model_path}: file not found")
    model = keras.models.load_model(model_path, compile=False, safe_mode=True)
    return model, config


def predict_proba(model, config: dict, images=None, bovw=None, batch_size: int = 256) -> np.ndarray:
    """Class probabilities of a variant for raw feature-store rows, in batches.

    ``images``: uint8 (n, 48, 48) or (n, 48, 48, 1), needed when the variant has a block;
    ``bovw``: float32 (n, 2728), needed when it has the BOVW input. An input the variant
    does not use is ignored. Returns float32 (n, n_classes) in the order of
    ``config["labels"]["classes"]`` -- also for a variant with auxiliary targets, whose
    second output :func:`predict_aux_proba` gives.
    """
    return _predict(model, config, images, bovw, batch_size)[networks.PROBABILITIES_OUTPUT]


def predict_aux_proba(model, config: dict, images=None, bovw=None, batch_size: int = 256) -> np.ndarray:
    """Probabilities of the auxiliary targets (float32 (n, k), in the order of
    ``config["aux"]["targets"]``) of a variant trained with ``aux_targets``."""
    if not config.get("aux"):
        raise InputError(f"aux: variant {config['variant']!r} has no auxiliary targets (trained without "
                         f"--aux-targets)")
    return _predict(model, config, images, bovw, batch_size)[networks.AUX_OUTPUT]


def _predict(model, config: dict, images, bovw, batch_size) -> dict[str, np.ndarray]:
    block, use_bovw = config["block"], bool(config["bovw"])
    n = None
    if block is not None:
        if images is None:
            raise InputError(f"images: variant {config['variant']!r} needs images; received None")
        images = np.asarray(images)
        if images.ndim == 4 and images.shape[-1] == 1:
            images = images[..., 0]
        if images.ndim != 3 or images.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE):
            raise InputError(f"images must have shape (n, {IMAGE_SIZE}, {IMAGE_SIZE}) or "
                             f"(n, {IMAGE_SIZE}, {IMAGE_SIZE}, 1); received {images.shape}")
        if images.dtype != np.uint8:
            if images.size and (images.min() < 0 or images.max() > 255 or not np.all(images == np.round(images))):
                raise InputError(f"images must be uint8 pixels in [0, 255]; received dtype {images.dtype} "
                                 f"with values in [{images.min()}, {images.max()}]")
            images = images.astype(np.uint8)
        n = len(images)
    if use_bovw:
        if bovw is None:
            raise InputError(f"bovw: variant {config['variant']!r} needs BOVW features; received None")
        bovw = np.asarray(bovw, dtype=np.float32)
        if bovw.ndim != 2 or bovw.shape[1] != BOVW_SIZE:
            raise InputError(f"bovw must have shape (n, {BOVW_SIZE}); received {bovw.shape}")
        if n is not None and len(bovw) != n:
            raise InputError(f"bovw has {len(bovw)} rows but images has {n}; they must describe the same faces")
        n = len(bovw)
    n_aux = len((config.get("aux") or {}).get("targets", ()))
    if n == 0:
        return {networks.PROBABILITIES_OUTPUT: np.zeros((0, len(config["labels"]["classes"])), np.float32),
                networks.AUX_OUTPUT: np.zeros((0, n_aux), np.float32)}
    x = _model_inputs(block, use_bovw, images, bovw)
    # predict_on_batch per slice: model.predict builds a tf.data pipeline on every call, which
    # costs 150-300 ms; for the few faces of one photo that overhead would dominate.
    out = []
    for i in range(0, n, batch_size):
        batch = model.predict_on_batch({k: v[i:i + batch_size] for k, v in x.items()})
        if not isinstance(batch, dict):   # the emotion-only network: one output
            batch = {networks.PROBABILITIES_OUTPUT: batch}
        out.append({k: np.asarray(v, dtype=np.float32) for k, v in batch.items()})
    return {k: np.concatenate([o[k] for o in out]) for k in out[0]}


# ------------------------------------------------------------------------------------------
# arguments, output folder, resume state
# ------------------------------------------------------------------------------------------

def check_arguments(**kwargs) -> dict:
    """Validate ``train_variant`` keyword arguments without training; returns them resolved.

    Arguments not given take ``train_variant``'s defaults; ``store``, ``out``, ``resume``,
    ``force``, ``progress``, ``callbacks`` and ``augment_config`` are not checked here (they
    are about the run, not the model). Raises ``InputError`` naming the first bad argument.
    """
    import inspect

    unchecked = {"store", "out", "resume", "force", "progress", "callbacks", "augment_config"}
    parameters = inspect.signature(train_variant).parameters
    unknown = sorted(set(kwargs) - set(parameters))
    if unknown:
        raise InputError(f"{unknown[0]}: not an argument of train_variant; allowed: "
                         f"{sorted(set(parameters) - unchecked)}")
    values = {name: p.default for name, p in parameters.items() if name not in unchecked}
    values.update({k: v for k, v in kwargs.items() if k not in unchecked})
    return _check_arguments(**values)


def _check_arguments(**a) -> dict:
    """Validate every argument before any data is read; returns them resolved and JSON-able."""
    from ensemble_fer.models import blocks

    def integer(name, minimum):
        value = a[name]
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
            raise InputError(f"{name} must be an int >= {minimum}; received {value!r}")
        a[name] = int(value)

    def number(name, low, high, low_open=False, high_open=True):
        value = a[name]
        ok = isinstance(value, (int, float, np.number)) and not isinstance(value, bool) and math.isfinite(value)
        if ok:
            ok = (value > low if low_open else value >= low) and (value < high if high_open else value <= high)
        if not ok:
            interval = f"{'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
            raise InputError(f"{name} must be a number in {interval}; received {value!r}")
        a[name] = float(value)

    block = a["block"]
    if block is not None and block not in blocks.list_blocks():
        raise InputError(f"block must be one of {blocks.list_blocks()} or None; received {block!r}")
    if block is None and not a["bovw"]:
        raise InputError("block: a variant needs an image block, the BOVW input or both; received "
                         "block=None with bovw=False (pass a block or bovw=True / --bovw)")
    if block is None and a["image_size"] is not None:
        raise InputError(f"image_size: only meaningful with an image block; received {a['image_size']!r}")
    if block is not None:
        spec = blocks.get_block_spec(block)
        size = spec.default_size if a["image_size"] is None else a["image_size"]
        if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < spec.min_size:
            raise InputError(f"image_size: block {block!r} needs images of at least {spec.min_size} px "
                             f"(default {spec.default_size}); received {a['image_size']!r}")
        a["image_size"] = int(size)
    get_label_set(a["labels"])   # raises InputError naming the label set
    integer("epochs_frozen", 0)
    for name in ("epochs", "batch_size", "patience", "lr_patience"):
        integer(name, 1)
    seed = a["seed"]
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= seed <= MAX_SEED:
        raise InputError(f"seed must be an int in [0, {MAX_SEED}] (2**32 - 1); received {seed!r}")
    a["seed"] = int(seed)
    integer("dense_units", 0)
    for name in ("lr", "frozen_lr"):
        number(name, 0.0, 10.0, low_open=True, high_open=False)
    number("min_lr", 0.0, 10.0, high_open=False)
    number("lr_factor", 0.0, 1.0, low_open=True)
    number("label_smoothing", 0.0, 1.0)
    number("mixup", 0.0, math.inf)
    number("weight_decay", 0.0, 1.0)
    number("dropout", 0.0, 1.0)
    if a["max_minutes"] is not None:
        number("max_minutes", 0.0, math.inf, low_open=True)
    if a["class_weight"] is None:
        a["class_weight"] = "none"
    if a["class_weight"] not in CLASS_WEIGHTS:
        raise InputError(f"class_weight must be one of {CLASS_WEIGHTS} or None; received {a['class_weight']!r}")
    if a["scratch_optimizer"] not in SCRATCH_OPTIMIZERS:
        raise InputError(f"scratch_optimizer must be one of {SCRATCH_OPTIMIZERS}; received "
                         f"{a['scratch_optimizer']!r}")
    if a["lr_schedule"] not in LR_SCHEDULES:
        raise InputError(f"lr_schedule must be one of {LR_SCHEDULES}; received {a['lr_schedule']!r}")
    if a["precision"] not in PRECISIONS:
        raise InputError(f"precision must be one of {PRECISIONS}; received {a['precision']!r}")
    units = a["bovw_units"]
    if isinstance(units, (str, bytes)) or not isinstance(units, Sequence) or any(
            isinstance(u, bool) or not isinstance(u, (int, np.integer)) or u < 1 for u in units):
        raise InputError(f"bovw_units must be a sequence of ints >= 1 (the dense layers of the BOVW branch); "
                         f"received {units!r}")
    a["bovw_units"] = [int(u) for u in units]
    weights = a["weights"]
    if weights is not None and not isinstance(weights, (str, os.PathLike)):
        raise InputError(f"weights must be 'default', None, 'none', a named weight set or a file path; "
                         f"received {weights!r}")
    a["weights"] = None if weights is None or str(weights).lower() == "none" else str(weights)
    a["bovw"] = bool(a["bovw"])
    a["augment"] = bool(a["augment"])
    number("aux_loss_weight", 0.0, math.inf, low_open=True)
    if a["aux_targets"] is not None:
        if not isinstance(a["aux_targets"], (str, os.PathLike)) or not str(a["aux_targets"]):
            raise InputError(f"aux_targets must be None or the path of a CSV file; received {a['aux_targets']!r}")
        a["aux_targets"] = str(Path(a["aux_targets"]).resolve())
    return a


def cpu_has_native_bfloat16(cpuinfo: str | None = None) -> bool:
    """Whether the CPU computes in bfloat16 natively (AVX512-BF16 or AMX-BF16 in its flags).

    Without them TensorFlow emulates bfloat16 and trains 7-11x slower than in float32
    (measured on an AVX2-only EPYC, issue 12), where with them it is ~1.4x faster."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return False
    flags = set()
    for line in cpuinfo.splitlines():
        if line.startswith("flags"):
            flags.update(line.partition(":")[2].split())
    return bool(flags & {"avx512_bf16", "amx_bf16"})


def auto_precision(gpu: bool) -> str:
    """``--precision auto``: mixed_float16 on a GPU; on the CPU mixed_bfloat16 where the CPU has
    native bfloat16, float32 otherwise."""
    if gpu:
        return "mixed_float16"
    return "mixed_bfloat16" if cpu_has_native_bfloat16() else "float32"


def _has_pretrained_weights(spec, weights) -> bool:
    """Whether the block starts from pretrained weights (which the frozen phase protects)."""
    if spec is None or weights is None:
        return False
    return spec.default_weights is not None if weights == "default" else True


def _plan_phases(pretrained: bool, s: dict) -> list[dict]:
    trainable = {"lr": s["lr"], "max_epochs": s["epochs"], "reduce_lr": s["lr_schedule"] == "plateau",
                 "cosine": s["lr_schedule"] == "cosine"}
    if not pretrained:
        optimizer = "adam" if s["scratch_optimizer"] == "adam" else "sgd_nesterov"
        return [{"name": PHASE_SCRATCH, "optimizer": optimizer, **trainable}]
    phases = []
    if s["epochs_frozen"] > 0:
        phases.append({"name": PHASE_FROZEN, "optimizer": "adam", "lr": s["frozen_lr"],
                       "max_epochs": s["epochs_frozen"], "reduce_lr": False, "cosine": False})
    return phases + [{"name": PHASE_FINETUNE, "optimizer": "sgd_nesterov", **trainable}]


def _comparable(settings: dict) -> dict:
    return {k: v for k, v in settings.items() if k not in RESUMABLE_CHANGES}


def _check_out(out: Path, settings: dict, *, resume: bool, force: bool, say) -> tuple[dict | None, list]:
    """Check the output folder before training.

    Returns the saved state to resume from (None for a new run) and the old outputs a new
    run replaces (removed only once the new network is built).
    """
    if out.exists() and not out.is_dir():
        raise InputError(f"out: must be a folder; received {out}, which is a file")
    run_dir = out / RUN_DIR
    existing = [name for name in OUTPUT_FILES if (out / name).exists()]
    if resume and force:
        raise InputError("resume and force: choose one (resume continues the run in out, force replaces it)")
    if resume:
        state_path = run_dir / "state.json"
        if not state_path.is_file():
            if existing:
                raise InputError(f"resume: {out} holds a variant but no checkpoint to resume from "
                                 f"({RUN_DIR}/state.json); pass --force to replace it")
            say(f"{out}: nothing to resume; starting a new run")
            # A run killed before its first state leaves only half-written files in .run/.
            return None, [RUN_DIR] if run_dir.exists() else []
        state = artifacts.read_json(state_path)
        saved, wanted = _comparable(state["args"]), _comparable(settings)
        differ = sorted(k for k in set(saved) | set(wanted)
                        if saved.get(k, ADDED_ARGUMENTS.get(k)) != wanted.get(k))
        if differ:
            detail = "; ".join(f"{k} was {saved.get(k)!r}, now {wanted.get(k)!r}" for k in differ[:4])
            raise InputError(f"resume: the run in {out} was made with other arguments ({detail}); rerun with "
                             f"the same arguments to resume it, or pass --force to start over")
        if settings["lr_schedule"] == "cosine" and state["args"]["epochs"] != settings["epochs"]:
            raise InputError(f"epochs: the run in {out} decays its learning rate over {state['args']['epochs']} "
                             f"epochs (lr_schedule 'cosine'); resume it with epochs={state['args']['epochs']}, "
                             f"received {settings['epochs']}")
        return state, []
    if existing or run_dir.exists():
        if not force:
            what = ", ".join(existing) or f"{RUN_DIR}/ (an interrupted run)"
            raise InputError(f"out: {out} already holds a variant ({what}); pass --force to replace it "
                             f"or --resume to continue it")
        return None, existing + [RUN_DIR]
    return None, []


def _clean_after_kill(out: Path, state: dict | None) -> None:
    """Remove what a killed run (``kill -9``) left in ``out``: the temporaries of its atomic writes
    and, in ``.run/``, every file its state does not name (half-written or superseded checkpoints).

    A new run replaces ``.run/`` whole (see :func:`_check_out`)."""
    artifacts.clean_stale_temporaries(out)
    if state is None:
        return
    keep = {"state.json", state["checkpoint"], state["best_weights"]}
    _remove(out / RUN_DIR, [p.name for p in (out / RUN_DIR).iterdir() if p.name not in keep])


def _remove(out: Path, names: list[str]) -> None:
    for name in names:
        path = out / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


def _new_state(settings: dict, phases: list[dict]) -> dict:
    return {"args": settings, "phases": [p["name"] for p in phases], "phase_index": 0,
            "phase_start_epoch": 0, "phase_epochs": 0, "epoch": 0, "phases_done": [], "history": [],
            "seconds": 0.0, "checkpoint": None, "best_weights": None, "early_stopping": None,
            "reduce_lr": None, "complete": False, "stopped": None}


def _load_checkpoint(out: Path, state: dict) -> keras.Model:
    from ensemble_fer.models import blocks  # noqa: F401  registers the custom preprocessing layers

    path = out / RUN_DIR / str(state["checkpoint"])
    if not state["checkpoint"] or not path.is_file():
        raise MissingInputError(f"{path}: the checkpoint named in {out / RUN_DIR / 'state.json'} is missing; "
                                f"pass --force to start over")
    # compile=True restores the optimizer with its state (momentum, Adam moments, step count).
    return keras.models.load_model(path, compile=True, safe_mode=True)


def _to_json(config) -> dict:
    if hasattr(config, "to_json"):
        return config.to_json()
    if dataclasses.is_dataclass(config):
        return dataclasses.asdict(config)
    return dict(vars(config))


# ------------------------------------------------------------------------------------------
# the training loop
# ------------------------------------------------------------------------------------------

class _Run:
    """One call of train_variant: runs the remaining phases, checkpointing every epoch."""

    def __init__(self, *, model, block, bovw, splits, n_classes, settings, phases, state, out, strategy,
                 augment_cfg, class_weights, say, started, extra_callbacks):
        self.model, self.block, self.bovw, self.splits = model, block, bovw, splits
        self.n_classes, self.settings, self.phases, self.state = n_classes, settings, phases, state
        self.out, self.strategy, self.augment_cfg = out, strategy, augment_cfg
        self.class_weights, self.say, self.started = class_weights, say, started
        self.extra_callbacks = extra_callbacks
        self.budget_hit = False
        self.has_aux = splits["train"].aux is not None

    def train(self) -> None:
        s, state = self.settings, self.state
        val = eval_dataset(self.splits["val"], self.block, self.bovw, self.n_classes, s["batch_size"])
        # Mid-phase, the checkpoint's optimizer (moments, learning rate) carries on; at the
        # start of a phase it is replaced by the phase's own.
        resumed = state["phase_epochs"] > 0
        if state["complete"]:
            # A finished run continued with more epochs: its last phase goes on.
            state.update(complete=False, stopped=None)
            state["phases_done"].pop()
            resumed = True
        while True:
            phase = self.phases[state["phase_index"]]
            phase_end = state["phase_start_epoch"] + phase["max_epochs"]
            early = False
            if state["epoch"] < phase_end:
                train, steps = train_dataset(self.splits["train"], self.block, self.bovw, self.n_classes,
                                             s["batch_size"], s["seed"], state["epoch"], phase_end,
                                             self.augment_cfg, self.class_weights, s["mixup"])
                if not resumed:
                    self._set_up_phase(phase, steps)
                self.say(f"phase {phase['name']}: epochs {state['epoch'] + 1}-{phase_end} at most, "
                         f"{phase['optimizer']} lr {self._lr():g}, "
                         f"{_count(self.model.trainable_weights):,} trainable parameters")
                callbacks = self._callbacks(phase, resumed)
                verbose = (1 if sys.stdout.isatty() else 2) if s["progress"] else 0
                self.model.fit(train, validation_data=val, epochs=phase_end, initial_epoch=state["epoch"],
                               steps_per_epoch=steps, shuffle=False,
                               # with aux targets the class weights are sample weights (train_dataset)
                               class_weight=None if self.has_aux else self.class_weights,
                               callbacks=callbacks + self.extra_callbacks, verbose=verbose)
                early = callbacks[-1].stopping.stopped_epoch > 0
            elif state["best_weights"]:
                # The phase ended just before an interruption: EarlyStopping had restored its
                # best weights in memory, but the checkpoint holds the last epoch's.
                self.model.set_weights(_load_weights_npz(self._run_path(state["best_weights"])))
            resumed = False
            if not (early or state["epoch"] >= phase_end):
                break   # stopped inside the phase by the time budget or an extra callback
            state["phases_done"].append({"name": phase["name"], "epochs": state["phase_epochs"],
                                         "early_stopping": early})
            if state["phase_index"] + 1 == len(self.phases):
                state.update(complete=True, stopped="early stopping" if early else "epochs")
                self._save_state()
                return
            # The next phase starts from this phase's best weights (restored by EarlyStopping).
            state["phase_index"] += 1
            state.update(phase_start_epoch=state["epoch"], phase_epochs=0, early_stopping=None, reduce_lr=None,
                         best_weights=None)
            self._checkpoint(self.phases[state["phase_index"]]["name"])
            if self.budget_hit:
                break
        state["stopped"] = "time budget" if self.budget_hit else "callback"
        self._save_state()
        why = f"the time budget of {s['max_minutes']:g} min is used up" if self.budget_hit else "a callback stopped it"
        self.say(f"stopped: {why}; the outputs hold the best epoch so far, and resume continues the run")

    def _set_up_phase(self, phase: dict, steps_per_epoch: int) -> None:
        lr = phase["lr"]
        if phase["cosine"]:
            lr = keras.optimizers.schedules.CosineDecay(lr, decay_steps=steps_per_epoch * phase["max_epochs"],
                                                        alpha=COSINE_FLOOR)
        with self.strategy.scope():
            if self.block is not None:
                networks.get_block(self.model, self.block).trainable = phase["name"] != PHASE_FROZEN
            # Keras decays weights decoupled from the gradient (w -= lr * weight_decay * w), as AdamW.
            decay = self.settings.get("weight_decay") or None
            if phase["optimizer"] == "adam":
                optimizer = keras.optimizers.Adam(learning_rate=lr, weight_decay=decay)
            else:
                optimizer = keras.optimizers.SGD(learning_rate=lr, momentum=MOMENTUM, nesterov=True,
                                                 weight_decay=decay)
            # Compile after changing `trainable`: Keras fixes the trained variables at compile time.
            loss = keras.losses.CategoricalCrossentropy(label_smoothing=self.settings["label_smoothing"])
            accuracy = keras.metrics.CategoricalAccuracy(name="accuracy")
            if not self.has_aux:
                self.model.compile(optimizer=optimizer, loss=loss, metrics=[accuracy])
                return
            p, aux = networks.PROBABILITIES_OUTPUT, networks.AUX_OUTPUT
            self.model.compile(
                optimizer=optimizer, loss={p: loss, aux: keras.losses.BinaryCrossentropy()},
                loss_weights={p: 1.0, aux: self.settings["aux_loss_weight"]},
                metrics={p: [accuracy], aux: [keras.metrics.BinaryAccuracy(name="accuracy"),
                                              keras.metrics.AUC(name="auc", multi_label=True)]})

    def _callbacks(self, phase: dict, resumed: bool) -> list:
        s, state = self.settings, self.state
        stopping = _EarlyStopping(s["patience"])
        reduce_lr = _ReduceLROnPlateau(s["lr_factor"], s["lr_patience"], s["min_lr"]) if phase["reduce_lr"] else None
        if resumed and state["early_stopping"]:
            best = self._run_path(state["best_weights"])
            stopping.load_state(state["early_stopping"], _load_weights_npz(best) if best else None)
        if resumed and reduce_lr is not None and state["reduce_lr"]:
            reduce_lr.load_state(state["reduce_lr"])
        callbacks = [_DropoutSeeds(s["seed"]), stopping] + ([reduce_lr] if reduce_lr else [])
        if s["max_minutes"] is not None:
            callbacks.append(_TimeBudget(self, s["max_minutes"] * 60.0))
        # Last: it saves the state the callbacks before it have just updated.
        return callbacks + [_Checkpointer(self, phase["name"], stopping, reduce_lr)]

    def _lr(self) -> float:
        return float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))

    def _run_path(self, name) -> Path | None:
        return None if name is None else self.out / RUN_DIR / name

    def _checkpoint(self, phase: str, best_weights=None) -> None:
        """Save the model with its optimizer, the best weights if given, then the state.

        File names carry the epoch and the state is written last, so an interruption at any
        point leaves a state whose files all exist.
        """
        run_dir = self.out / RUN_DIR
        run_dir.mkdir(parents=True, exist_ok=True)
        epoch = self.state["epoch"]
        old = {self.state["checkpoint"], self.state["best_weights"]}
        name = f"{phase}-{epoch:04d}.keras"
        _save_keras_atomic(self.model, run_dir / name)
        self.state["checkpoint"] = name
        if best_weights is not None:
            best = f"best-{epoch:04d}.npz"
            with artifacts.atomic_path(run_dir / best) as tmp, open(tmp, "wb") as handle:
                np.savez(handle, *best_weights)   # uncompressed: fast enough for a ResNet-50 per epoch
            self.state["best_weights"] = best
        self._save_state()
        for stale in old - {self.state["checkpoint"], self.state["best_weights"], None}:
            (run_dir / stale).unlink(missing_ok=True)

    def _save_state(self) -> None:
        artifacts.write_json(self.out / RUN_DIR / "state.json", self.state)
        if self.state["history"]:
            _write_history(self.out / "history.csv", self.state["history"])


class _DropoutSeeds(keras.callbacks.Callback):
    """Reseeds every random layer (dropout) at the start of each epoch from ``(seed, epoch, i)``.

    Keras keeps a dropout layer's random state in a SeedGenerator variable that ``model.save``
    leaves out, and a loaded checkpoint draws fresh seeds: a resumed run would drop other units
    than the run it continues. Reseeded per epoch (the counter then advances one per step), the
    masks of a step are a function of (seed, epoch, step), interrupted or not.
    """

    def __init__(self, seed: int):
        super().__init__()
        self.seed = seed

    def on_epoch_begin(self, epoch, logs=None):
        states = [v for v in self.model.variables if v.name == "seed_generator_state"]
        for i, variable in enumerate(states):
            first = np.random.default_rng([self.seed, epoch, i]).integers(1, 2**31)
            variable.assign(np.array([first, 0], dtype=variable.dtype))


class _EarlyStopping(keras.callbacks.Callback):
    """Keras's EarlyStopping on ``val_loss`` (min_delta 0, best weights restored at the end),
    holding its state itself: ``state()`` / ``load_state()`` carry it across an interruption.

    Subclassing Keras's and setting its private ``wait`` / ``best`` / ``best_epoch`` does not
    survive Keras versions (3.3-3.5 reset them at the first epoch end of a ``fit``).
    """

    def __init__(self, patience: int):
        super().__init__()
        self.patience = patience
        self.wait, self.best, self.best_epoch, self.best_weights, self.stopped_epoch = 0, None, 0, None, 0

    def state(self) -> dict:
        return {"wait": self.wait, "best": self.best, "best_epoch": self.best_epoch}

    def load_state(self, saved: dict, best_weights=None) -> None:
        self.wait, self.best, self.best_epoch = int(saved["wait"]), saved["best"], int(saved["best_epoch"])
        self.best_weights = best_weights

    def on_epoch_end(self, epoch, logs=None):
        current = float(logs["val_loss"])
        self.wait += 1
        if self.best is None or current < self.best:
            self.wait, self.best, self.best_epoch = 0, current, epoch
            self.best_weights = self.model.get_weights()
        elif self.wait >= self.patience:
            self.stopped_epoch = epoch
            self.model.stop_training = True

    def on_train_end(self, logs=None):
        if self.best_weights is not None:
            self.model.set_weights(self.best_weights)


class _ReduceLROnPlateau(keras.callbacks.Callback):
    """Keras's ReduceLROnPlateau on ``val_loss`` (min_delta 1e-4, no cooldown), holding its state
    itself as :class:`_EarlyStopping` does; the rate it set is in the optimizer's checkpoint."""

    MIN_DELTA = 1e-4

    def __init__(self, factor: float, patience: int, min_lr: float):
        super().__init__()
        self.factor, self.patience, self.min_lr = factor, patience, min_lr
        self.wait, self.best = 0, None

    def state(self) -> dict:
        return {"wait": self.wait, "best": self.best}

    def load_state(self, saved: dict) -> None:
        # States saved before this class also hold Keras's cooldown_counter, always 0 here.
        self.wait, self.best = int(saved["wait"]), saved["best"]

    def on_epoch_end(self, epoch, logs=None):
        lr = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))
        logs["learning_rate"] = lr   # the rate this epoch used, for the history row
        current = float(logs["val_loss"])
        if self.best is None or current + self.MIN_DELTA < self.best:
            self.wait, self.best = 0, current
            return
        self.wait += 1
        if self.wait >= self.patience and lr > np.float32(self.min_lr):
            self.model.optimizer.learning_rate = max(lr * self.factor, self.min_lr)
            self.wait = 0


class _TimeBudget(keras.callbacks.Callback):
    """Stop before an epoch that would be expected to end after the budget."""

    def __init__(self, run: _Run, seconds: float):
        super().__init__()
        self.run, self.seconds, self.longest = run, seconds, 0.0

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch_started = time.time()

    def on_epoch_end(self, epoch, logs=None):
        self.longest = max(self.longest, time.time() - self.epoch_started)
        if time.time() - self.run.started + self.longest > self.seconds:
            self.model.stop_training = True
            self.run.budget_hit = True


class _Checkpointer(keras.callbacks.Callback):
    """After every epoch: a history row, the best weights when they improved, the model with its
    optimizer, and the state -- an atomic, resumable ModelCheckpoint + CSVLogger."""

    def __init__(self, run: _Run, phase: str, stopping: _EarlyStopping, reduce_lr):
        super().__init__()
        self.run, self.phase, self.stopping, self.reduce_lr = run, phase, stopping, reduce_lr

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch_started = time.time()

    def on_epoch_end(self, epoch, logs=None):
        logs = dict(logs or {})
        state = self.run.state
        seconds = time.time() - self.epoch_started
        state["epoch"] = epoch + 1
        state["phase_epochs"] = epoch + 1 - state["phase_start_epoch"]
        state["seconds"] = round(state["seconds"] + seconds, 2)
        # ReduceLROnPlateau logs the rate this epoch used (before it may lower it).
        lr = logs.pop("learning_rate", None)
        if lr is None:
            lr = keras.ops.convert_to_numpy(self.model.optimizer.learning_rate)
        row = {"epoch": epoch + 1, "phase": self.phase, "phase_epoch": state["phase_epochs"],
               "learning_rate": float(lr), "seconds": round(seconds, 2)}
        # Two outputs: Keras prefixes the emotion metrics with the output name; the history
        # keeps the emotion-only column names (accuracy, val_accuracy) for them.
        prefix = networks.PROBABILITIES_OUTPUT + "_"
        for key in [k for k in logs if k.removeprefix("val_").startswith(prefix)]:
            val = "val_" if key.startswith("val_") else ""
            name = key.removeprefix("val_").removeprefix(prefix)
            logs[f"{val}{'accuracy' if name == 'accuracy' else 'emotion_' + name}"] = logs.pop(key)
        row.update({k: float(v) for k, v in logs.items()})
        state["history"].append(row)
        state["early_stopping"] = self.stopping.state()
        state["reduce_lr"] = self.reduce_lr.state() if self.reduce_lr is not None else None
        improved = self.stopping.best_epoch == epoch and self.stopping.best_weights is not None
        self.run._checkpoint(self.phase, self.stopping.best_weights if improved else None)


def _count(weights) -> int:
    return int(sum(np.prod(w.shape) for w in weights))


def _load_weights_npz(path) -> list[np.ndarray]:
    with np.load(path, allow_pickle=False) as data:
        return [data[f"arr_{i}"] for i in range(len(data.files))]


def _save_keras_atomic(model, path: Path) -> None:
    with artifacts.atomic_path(path, suffix=".keras") as tmp:   # Keras insists on the .keras suffix
        model.save(tmp)


def _write_history(path: Path, rows: list[dict]) -> None:
    columns = list(HISTORY_COLUMNS) + sorted({k for r in rows for k in r} - set(HISTORY_COLUMNS))
    lines = [",".join(columns)]
    for row in rows:
        lines.append(",".join("" if row.get(c) is None else str(row[c]) for c in columns))
    with artifacts.atomic_path(path) as tmp:
        tmp.write_text("\n".join(lines) + "\n")


# ------------------------------------------------------------------------------------------
# outputs
# ------------------------------------------------------------------------------------------

def _inference_copy(model, build_args: dict) -> keras.Model:
    """The model to save: float32, uncompiled, whatever policy it was trained in.

    A fresh network of the same architecture (built under the float32 policy) takes the
    trained weights -- variables are float32 under the mixed policies too -- so ``model.keras``
    runs anywhere and carries no optimizer state.
    """
    copy = networks.build_network(weights=None, **build_args)
    copy.set_weights(model.get_weights())
    return copy


def _write_outputs(out: Path, model, run: _Run, label_set, store, counts, variant, pretrained, aux, device,
                   wall_seconds) -> None:
    state, settings = run.state, run.settings
    classes = list(label_set.classes)
    config = {"variant": variant, "block": run.block, "bovw": run.bovw, "labels": label_set.to_json()}
    if aux is not None:
        config["aux"] = {**aux.describe(), "loss_weight": settings["aux_loss_weight"],
                         "positives": {name: dict(zip(aux.names, split.aux.sum(axis=0).astype(int).tolist()))
                                       for name, split in run.splits.items()}}
    _save_keras_atomic(model, out / "model.keras")

    predictions, scores = {}, {}
    for split in ("val", "test"):
        if split not in run.splits:
            continue
        data = run.splits[split]
        outputs = _predict(model, config, data.images, data.bovw, 256)
        proba = outputs[networks.PROBABILITIES_OUTPUT]
        if not np.isfinite(proba).all():
            # The arguments made training diverge (a learning rate too high): a failed run of a
            # grid search, not a bug. Checked here, before the metrics refuse the NaN.
            row = int(np.flatnonzero(~np.isfinite(proba).all(axis=1))[0])
            rates = f"lr={settings['lr']!r}" + (f", frozen_lr={settings['frozen_lr']!r}"
                                                 if PHASE_FROZEN in state["phases"] else "")
            raise InputError(f"lr: training diverged with {rates}: the {split} probabilities of row {row} "
                             f"are NaN or inf; train with a smaller learning rate")
        predictions.update({f"{split}_ids": data.ids.astype(str), f"{split}_y": data.y.astype(np.int64),
                            f"{split}_proba": proba, f"{split}_face_found": data.face_found})
        if aux is not None:
            from ensemble_fer.training.aux_targets import aux_metrics

            aux_proba = outputs[networks.AUX_OUTPUT]
            predictions.update({f"{split}_aux_proba": aux_proba, f"{split}_aux_y": data.aux.astype(np.int64)})
            scores.setdefault("aux", {})[split] = aux_metrics(data.aux, aux_proba, aux.names)
        scores[split] = metrics.classification_metrics(data.y, proba, classes)
        found = data.face_found
        scores[f"{split}_face_found"] = (metrics.classification_metrics(data.y[found], proba[found], classes)
                                         if found.any() else None)
    artifacts.save_npz(out / "predictions.npz", **predictions)
    artifacts.write_json(out / "metrics.json", scores)

    cm_split = "test" if "test" in scores else "val"
    metrics.plot_confusion_matrix(scores[cm_split]["confusion_matrix"], classes, out / "confusion_matrix.png",
                                  title=f"{variant}: {cm_split} (n = {scores[cm_split]['n']})")
    history = {column: [row.get(column) for row in state["history"]]
               for column in ("phase", "loss", "val_loss", "accuracy", "val_accuracy")}
    metrics.plot_training_curves(history, out / "curves.png", title=variant)

    stopping = state["early_stopping"] or {}
    config.update({
        "feature_store": store.describe(),
        "args": settings,
        "versions": artifacts.package_versions(),
        "model": {"n_params": int(model.count_params()), "inputs": sorted(t.name for t in model.inputs),
                  "image_size": settings["image_size"], "pretrained_block": bool(pretrained)},
        "training": {
            "complete": bool(state["complete"]), "stopped": state["stopped"],
            "epochs_run": state["epoch"], "phases": state["phases_done"] + (
                [] if state["complete"] else [{"name": state["phases"][state["phase_index"]],
                                               "epochs": state["phase_epochs"], "unfinished": True}]),
            "best_epoch": stopping.get("best_epoch", -1) + 1, "best_val_loss": stopping.get("best"),
            "class_weights": run.class_weights, "training_seconds": state["seconds"],
            "wall_seconds_last_call": round(wall_seconds, 2), "device": device,
        },
        "data": counts,
        "figures": {"confusion_matrix": cm_split},
    })
    artifacts.write_json(out / "config.json", config)   # last: its presence means complete outputs
