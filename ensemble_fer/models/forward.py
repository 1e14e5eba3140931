"""One trained variant's Keras model run on raw feature-store rows, in batches: what training
(its saved predictions), the predictor, Grad-CAM and the comparison's timing all call.

::

    model, config = load_variant("models/cnn5")        # ensemble_fer.models.variant_dir
    proba = predict_proba(model, config, images=crops, bovw=rows)      # (n, n_classes)
    aux = predict_aux_proba(model, config, images=crops)               # (n, n_aux targets)
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ensemble_fer.errors import InputError
from ensemble_fer.features.bovw import BOVW_SIZE, IMAGE_SIZE
from ensemble_fer.models import networks


def model_inputs(block, bovw, images, bovw_rows) -> dict[str, np.ndarray]:
    """The named inputs of a network with image block ``block`` (None: none) and/or ``bovw``."""
    inputs = {}
    if block is not None:
        inputs[networks.IMAGE_INPUT] = images[..., None] if images.ndim == 3 else images
    if bovw:
        inputs[networks.BOVW_INPUT] = bovw_rows
    return inputs


def predict_proba(model, config: dict, images=None, bovw=None, batch_size: int = 256) -> np.ndarray:
    """Class probabilities of a variant for raw feature-store rows, in batches.

    ``images``: uint8 (n, 48, 48) or (n, 48, 48, 1), needed when the variant has a block;
    ``bovw``: float32 (n, 2728), needed when it has the BOVW input. An input the variant
    does not use is ignored. Returns float32 (n, n_classes) in the order of
    ``config["labels"]["classes"]`` -- also for a variant with auxiliary targets, whose
    second output :func:`predict_aux_proba` gives.
    """
    return predict_outputs(model, config, images, bovw, batch_size)[networks.PROBABILITIES_OUTPUT]


def check_proba(proba: np.ndarray, config: dict, folder) -> np.ndarray:
    """``proba`` of the variant in ``folder``, refused (``InputError`` naming its files) when its
    shape does not match the classes its ``config.json`` lists or it holds NaN or inf."""
    from ensemble_fer.models.variant_dir import CONFIG, MODEL

    n_classes = len(config["labels"]["classes"])
    if proba.ndim != 2 or proba.shape[1] != n_classes:
        raise InputError(f"{Path(folder) / MODEL}: outputs shape {proba.shape[1:]} but "
                         f"{CONFIG} lists {n_classes} classes")
    if not np.all(np.isfinite(proba)):
        raise InputError(f"{Path(folder) / MODEL}: predicted NaN or inf probabilities")
    return proba


def predict_aux_proba(model, config: dict, images=None, bovw=None, batch_size: int = 256) -> np.ndarray:
    """Probabilities of the auxiliary targets (float32 (n, k), in the order of
    ``config["aux"]["targets"]``) of a variant trained with ``aux_targets``."""
    if not config.get("aux"):
        raise InputError(f"aux: variant {config['variant']!r} has no auxiliary targets (trained without "
                         f"--aux-targets)")
    return predict_outputs(model, config, images, bovw, batch_size)[networks.AUX_OUTPUT]


def predict_outputs(model, config: dict, images, bovw, batch_size: int = 256) -> dict[str, np.ndarray]:
    """Every output of the model by name (``probabilities``, and ``aux`` when it has one)."""
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
    x = model_inputs(block, use_bovw, images, bovw)
    # predict_on_batch per slice: model.predict builds a tf.data pipeline on every call, which
    # costs 150-300 ms; for the few faces of one photo that overhead would dominate.
    out = []
    for i in range(0, n, batch_size):
        batch = model.predict_on_batch({k: v[i:i + batch_size] for k, v in x.items()})
        if not isinstance(batch, dict):   # the emotion-only network: one output
            batch = {networks.PROBABILITIES_OUTPUT: batch}
        out.append({k: np.asarray(v, dtype=np.float32) for k, v in batch.items()})
    return {k: np.concatenate([o[k] for o in out]) for k in out[0]}
