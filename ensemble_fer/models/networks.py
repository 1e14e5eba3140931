"""The two-input Keras network of a variant: an image branch, a BOVW branch, a softmax head.

::

    image  uint8 (48, 48, 1)                         bovw  float32 (2728,)
      -> float32 -> [Resizing to the block size]       -> Normalization (train-split mean/var)
      -> [gray -> RGB] -> block preprocessing          -> Dense(1024) relu -> Dropout
      -> block -> GlobalAveragePooling2D               -> Dense(256) relu -> Dropout
                      \\                                 /
                       Concatenate -> Dense(dense_units) relu -> Dropout -> Dense(n_classes)
                       -> softmax (float32, also under mixed precision)

Either branch may be left out: ``block=None, bovw=True`` is the BOVW-only network;
``block="cnn5", bovw=False`` the image-only one. All preprocessing lives inside the model
(no ``Lambda`` layer anywhere), so a saved ``.keras`` file loads with
``keras.models.load_model(path)`` in safe mode and takes the raw feature-store arrays.

Layer names are fixed (``image``, ``bovw``, ``image_to_float``, ``image_resize``,
``gray_to_rgb``, ``image_pool``, ``bovw_norm``, ``bovw_dense1``, ``bovw_drop1``, ...,
``head_dense``, ``head_drop``, ``logits``, ``probabilities``, and with auxiliary targets
``aux_logits``, ``aux``) and the block is one nested
model named after the block, so training code can find it with ``model.get_layer(block)``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

import keras
from keras import layers

from ensemble_fer.models import blocks
from ensemble_fer.features.bovw import BOVW_SIZE, IMAGE_SIZE
from ensemble_fer.errors import InputError

IMAGE_INPUT = "image"
BOVW_INPUT = "bovw"
BOVW_NORM_LAYER = "bovw_norm"
"""The BOVW input's standardisation (train-split mean and variance), the branch's first layer."""
PROBABILITIES_OUTPUT = "probabilities"
AUX_OUTPUT = "aux"

BOVW_UNITS = (1024, 256)
"""Dense layers of the BOVW branch (the EmoNet BOVW sub-network)."""

DENSE_UNITS = 256
"""Units of the dense layer after the concatenation (0: straight to the classifier)."""

MIN_VARIANCE = 1e-4
"""Floor of the per-feature variance of the BOVW ``Normalization``. HOG cells that are
(almost) constant on the training split would otherwise be divided by ~0 and turn a small
difference on an unseen image into a huge activation."""


def variant_name(block: str | None, bovw: bool) -> str:
    """The name of a variant: ``"resnet50+bovw"``, ``"cnn5"`` or ``"bovw"``."""
    if block is None:
        if not bovw:
            raise InputError("block: a network needs an image block, BOVW input or both; "
                             "received block=None with bovw=False")
        return "bovw"
    return f"{block}+bovw" if bovw else str(block)


def bovw_statistics(data) -> tuple[np.ndarray, np.ndarray]:
    """Per-feature mean and variance (floored at :data:`MIN_VARIANCE`) of BOVW rows.

    Pass the *training* rows only: statistics of validation or test rows would leak them
    into the model.
    """
    data = np.asarray(data)
    if data.ndim != 2 or data.shape[1] != BOVW_SIZE or len(data) == 0:
        raise InputError(f"bovw_adapt_data must have shape (n >= 1, {BOVW_SIZE}); "
                         f"received shape {data.shape}")
    data = data.astype(np.float64)   # float64 sums: 28k rows of float32 would lose digits
    mean = data.mean(axis=0)
    var = np.maximum(data.var(axis=0), MIN_VARIANCE)
    return mean.astype(np.float32), var.astype(np.float32)


def build_network(block: str | None, bovw: bool, n_classes: int, *, weights="default",
                  image_size: int | None = None, bovw_mean=None, bovw_var=None,
                  bovw_adapt_data=None, dropout: float = 0.5,
                  bovw_units: Sequence[int] = BOVW_UNITS, dense_units: int = DENSE_UNITS,
                  n_aux: int = 0, name: str | None = None) -> keras.Model:
    """Build the network of one variant.

    Parameters
    ----------
    block : str or None
        An image block from :func:`ensemble_fer.models.blocks.list_blocks`, or ``None`` for no
        image branch.
    bovw : bool
        Whether the network has the BOVW branch (input ``bovw``, float32 (2728,)).
    n_classes : int
        Number of classes of the softmax (at least 2).
    weights : "default", None, "none", a named weight set or a file path
        Weights of the block, passed to :func:`ensemble_fer.models.blocks.create_block`.
    image_size : int, optional
        Side the 48x48 crops are resized to before the block; default the block's
        ``default_size``. Must be at least the block's ``min_size``.
    bovw_mean, bovw_var : array (2728,), optional
        Statistics of the BOVW ``Normalization`` layer, or
    bovw_adapt_data : array (n, 2728), optional
        training rows to compute them from (see :func:`bovw_statistics`). With none of the
        three, the layer holds mean 0 / variance 1 until weights are loaded into it.
    dropout : float
        Dropout rate after every dense layer, in [0, 1).
    bovw_units : sequence of int
        Dense layers of the BOVW branch.
    dense_units : int
        Dense layer after the concatenation; 0 for none.
    n_aux : int
        Auxiliary 0/1 targets (e.g. action units, :mod:`ensemble_fer.training.aux_targets`). With 0
        (the default) the model has one output, the class probabilities. With ``n_aux > 0``
        its outputs are a dict: ``probabilities`` and ``aux`` (sigmoid, float32, (n_aux,)),
        a ``Dense(n_aux)`` (``aux_logits``) beside ``logits`` on the same shared features.
    name : str, optional
        Model name; default the variant name with ``+`` written ``_``.
    """
    variant = variant_name(block, bovw)
    bovw_units = _check_head_arguments(n_classes, dropout, dense_units, n_aux, bovw_units)

    inputs, features = [], []
    if block is not None:
        image_input, image_features = _image_branch(block, weights, image_size)
        inputs.append(image_input)
        features.append(image_features)
    elif image_size is not None:
        raise InputError(f"image_size: only meaningful with an image block; received "
                         f"image_size={image_size!r} with block=None")
    if bovw:
        mean, var = _resolve_bovw_stats(bovw_mean, bovw_var, bovw_adapt_data)
        bovw_input, bovw_features = _bovw_branch(mean, var, bovw_units, dropout)
        inputs.append(bovw_input)
        features.append(bovw_features)

    outputs = _head(features, n_classes, dropout, dense_units, n_aux)
    # Inputs as a dict, also for one input: callers always feed {"image": ..., "bovw": ...}
    # by name, and Keras matches a dict against a dict without structure warnings.
    inputs = {tensor.name: tensor for tensor in inputs}
    return keras.Model(inputs, outputs, name=name or variant.replace("+", "_"))


def _check_head_arguments(n_classes, dropout, dense_units, n_aux, bovw_units) -> tuple[int, ...]:
    """The numbers of :func:`build_network`, checked (``InputError`` naming the argument);
    ``bovw_units`` as a tuple."""
    if isinstance(n_classes, bool) or not isinstance(n_classes, (int, np.integer)) or n_classes < 2:
        raise InputError(f"n_classes must be an int >= 2; received {n_classes!r}")
    if not 0.0 <= float(dropout) < 1.0:
        raise InputError(f"dropout must be in [0, 1); received {dropout!r}")
    if isinstance(dense_units, bool) or not isinstance(dense_units, (int, np.integer)) or dense_units < 0:
        raise InputError(f"dense_units must be an int >= 0; received {dense_units!r}")
    if isinstance(n_aux, bool) or not isinstance(n_aux, (int, np.integer)) or n_aux < 0:
        raise InputError(f"n_aux must be an int >= 0; received {n_aux!r}")
    bovw_units = tuple(bovw_units)
    if any(isinstance(u, bool) or not isinstance(u, (int, np.integer)) or u < 1 for u in bovw_units):
        raise InputError(f"bovw_units must be positive ints; received {bovw_units!r}")
    return bovw_units


def _head(features: list, n_classes: int, dropout: float, dense_units: int, n_aux: int):
    """The head on the branches' features: concatenation, the optional dense layer, the
    softmax (and the ``aux`` sigmoid output with ``n_aux``)."""
    x = features[0] if len(features) == 1 else layers.Concatenate(name="concat")(features)
    if dense_units:
        x = layers.Dense(dense_units, activation="relu", name="head_dense")(x)
        if dropout:
            x = layers.Dropout(dropout, name="head_drop")(x)
    shared = x
    x = layers.Dense(int(n_classes), name="logits")(shared)
    # Softmax in float32: under mixed_float16 the logits are float16, whose softmax and log
    # in the loss lose precision (the Keras mixed-precision guide's advice).
    outputs = layers.Activation("softmax", dtype="float32", name="probabilities")(x)
    if n_aux:
        aux = layers.Dense(int(n_aux), name="aux_logits")(shared)
        aux = layers.Activation("sigmoid", dtype="float32", name=AUX_OUTPUT)(aux)
        outputs = {PROBABILITIES_OUTPUT: outputs, AUX_OUTPUT: aux}
    return outputs


def _image_branch(block: str, weights, image_size):
    spec = blocks.get_block_spec(block)
    # Built first: it checks the weights and image_size (the one check, create_block's) and may
    # fail (offline) before anything else.
    net = blocks.create_block(block, weights=weights, image_size=image_size)
    size = int(net.input_shape[1])      # the side create_block built it for (None: the default)

    image = keras.Input(shape=(IMAGE_SIZE, IMAGE_SIZE, 1), dtype="uint8", name=IMAGE_INPUT)
    # Rescaling by 1 is the serialisable cast: uint8 -> float32 pixels in [0, 255].
    x = layers.Rescaling(1.0, dtype="float32", name="image_to_float")(image)
    if size != IMAGE_SIZE:
        x = layers.Resizing(size, size, interpolation="bilinear", dtype="float32",
                            name="image_resize")(x)
    if spec.channels == 3:
        x = layers.Concatenate(axis=-1, name="gray_to_rgb")([x, x, x])
    for layer in spec.preprocessing():
        x = layer(x)
    x = net(x)
    if len(x.shape) == 4:
        x = layers.GlobalAveragePooling2D(name="image_pool")(x)
    return image, x


def _resolve_bovw_stats(mean, var, adapt_data):
    if adapt_data is not None:
        if mean is not None or var is not None:
            raise InputError("bovw_adapt_data: give either bovw_adapt_data or bovw_mean/bovw_var, "
                             "not both")
        return bovw_statistics(adapt_data)
    if (mean is None) != (var is None):
        raise InputError("bovw_mean and bovw_var must be given together; received only "
                         + ("bovw_mean" if var is None else "bovw_var"))
    if mean is None:
        return np.zeros(BOVW_SIZE, np.float32), np.ones(BOVW_SIZE, np.float32)
    mean = np.asarray(mean, dtype=np.float32)
    var = np.asarray(var, dtype=np.float32)
    for label, value in (("bovw_mean", mean), ("bovw_var", var)):
        if value.shape != (BOVW_SIZE,) or not np.all(np.isfinite(value)):
            raise InputError(f"{label} must be {BOVW_SIZE} finite values; received shape {value.shape}")
    if (var <= 0).any():
        raise InputError("bovw_var must be positive; received a variance <= 0")
    return mean, var


def _bovw_branch(mean, var, units, dropout):
    features = keras.Input(shape=(BOVW_SIZE,), dtype="float32", name=BOVW_INPUT)
    # Statistics passed as constants (not adapt()) so they are part of the layer config and
    # the saved model needs no dataset to rebuild. float32: landmark coordinates up to 48
    # and HOG values near 0 both keep their digits under a float16 policy.
    x = layers.Normalization(mean=mean, variance=var, dtype="float32", name=BOVW_NORM_LAYER)(features)
    for i, n in enumerate(units, start=1):
        x = layers.Dense(n, activation="relu", name=f"bovw_dense{i}")(x)
        if dropout:
            x = layers.Dropout(dropout, name=f"bovw_drop{i}")(x)
    return features, x


def apply_head(model: keras.Model, image_features=None, bovw_features=None):
    """The part of ``model`` after the pooled block, its own layers applied to new tensors
    (``image_features``: pooled block outputs; ``bovw_features``: raw BOVW rows): the class
    probabilities, as :func:`build_network` wires them. Used to train on cached block outputs;
    the same weights, so the same numbers as the whole network."""
    def layer(name):
        try:
            return model.get_layer(name)
        except ValueError:
            return None

    parts = [] if image_features is None else [image_features]
    if bovw_features is not None:
        x = model.get_layer(BOVW_NORM_LAYER)(bovw_features)
        i = 1
        while layer(f"bovw_dense{i}") is not None:
            x = layer(f"bovw_dense{i}")(x)
            if layer(f"bovw_drop{i}") is not None:
                x = layer(f"bovw_drop{i}")(x)
            i += 1
        parts.append(x)
    x = parts[0] if len(parts) == 1 else model.get_layer("concat")(parts)
    for name in ("head_dense", "head_drop"):
        if layer(name) is not None:
            x = layer(name)(x)
    return model.get_layer(PROBABILITIES_OUTPUT)(model.get_layer("logits")(x))


def get_block(model: keras.Model, block: str) -> keras.Model:
    """The nested block model of a network built by :func:`build_network`."""
    try:
        return model.get_layer(block)
    except ValueError:
        raise InputError(f"block: the model {model.name!r} has no block named {block!r}") from None
