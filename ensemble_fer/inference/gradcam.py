"""Grad-CAM (Selvaraju et al. 2017) for the image branch of a variant's network.

Which feature map
-----------------
The map explained is the last 4-D feature map of the image branch: the output of the conv
block, found as the *input of the layer named* ``image_pool`` -- the
``GlobalAveragePooling2D`` that :mod:`ensemble_fer.models.networks` puts right after the block
(the block itself is a nested ``keras.Model`` whose output is, by the contract of
:mod:`ensemble_fer.models.blocks`, its last 4-D map, never pooled). Taking the pooling layer's
input gives that tensor *in the outer model's graph*, so one sub-model
``inputs -> (feature map, logits)`` computes both in one pass. For a network that does not
follow this naming, the input of the first global-pooling or ``Flatten`` layer that receives
a 4-D tensor is used. A network without either (the BOVW-only variant) has no image branch
and :func:`grad_cam` raises :class:`~ensemble_fer.errors.InputError`, as for every bad argument.

What is computed
----------------
The score of the class is the network's pre-softmax logit (layer ``logits``; the
probability when there is no such layer). Its gradient with respect to the feature map
(``tf.GradientTape``), averaged over the map's height and width, weights the map's
channels; the weighted sum is passed through a ReLU, upsampled bilinearly to the 48x48
crop and divided by its maximum, so the result lies in [0, 1] (all zeros when no location
speaks for the class).
"""

from __future__ import annotations

import weakref

import numpy as np

from ensemble_fer.errors import InputError
from ensemble_fer.features.bovw import BOVW_SIZE, IMAGE_SIZE

IMAGE_INPUT = "image"
BOVW_INPUT = "bovw"
POOL_LAYER = "image_pool"
LOGITS_LAYER = "logits"

_SUBMODELS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def has_image_branch(model) -> bool:
    """Whether ``model`` takes an ``image`` input (BOVW-only networks do not)."""
    return IMAGE_INPUT in input_names(model)


def feature_map_tensor(model):
    """The symbolic tensor Grad-CAM explains: the last 4-D map of the image branch."""
    if not has_image_branch(model):
        raise InputError(f"model {model.name!r} has no image branch (inputs: {sorted(input_names(model))}); "
                         "Grad-CAM needs a variant with an image block")
    try:
        return model.get_layer(POOL_LAYER).input
    except ValueError:
        pass
    import keras

    pooling = (keras.layers.GlobalAveragePooling2D, keras.layers.GlobalMaxPooling2D, keras.layers.Flatten)
    for layer in model.layers:
        if isinstance(layer, pooling) and len(layer.input.shape) == 4:
            return layer.input
    raise InputError(f"model {model.name!r}: no 4-D feature map found before a pooling layer "
                     f"(expected a layer named {POOL_LAYER!r})")


def grad_cam(model, image_crop: np.ndarray, bovw_vector: np.ndarray | None, class_index: int) -> np.ndarray:
    """Grad-CAM map of ``class_index`` for one 48x48 uint8 face crop: float32 (48, 48) in [0, 1].

    ``model`` is a variant's Keras network (inputs ``image`` and, for two-input variants,
    ``bovw``). ``bovw_vector`` is the crop's 2728-d BOVW vector (see
    :func:`ensemble_fer.features.bovw.analyse_crops`), required when the model has a ``bovw`` input
    and ``None`` otherwise.
    """
    import tensorflow as tf

    crop = np.asarray(image_crop)
    if crop.ndim == 3 and crop.shape[2] == 1:
        crop = crop[..., 0]
    if crop.shape != (IMAGE_SIZE, IMAGE_SIZE) or crop.dtype != np.uint8:
        raise InputError(f"image_crop must be a 48x48 uint8 grayscale crop; got {crop.dtype} {crop.shape}")
    sub = _submodel(model)
    names = input_names(model)
    inputs = {IMAGE_INPUT: crop[None, :, :, None]}
    if BOVW_INPUT in names:
        if bovw_vector is None:
            raise InputError(f"model {model.name!r} has a bovw input: pass the crop's BOVW vector")
        vector = np.asarray(bovw_vector, dtype=np.float32).reshape(-1)
        if vector.shape != (BOVW_SIZE,):
            raise InputError(f"bovw_vector must hold {BOVW_SIZE} values; got shape {vector.shape}")
        inputs[BOVW_INPUT] = vector[None]
    elif bovw_vector is not None:
        raise InputError(f"model {model.name!r} has no bovw input; pass bovw_vector=None")
    n_classes = int(sub.outputs[1].shape[-1])
    if not 0 <= int(class_index) < n_classes:
        raise InputError(f"class_index must be in 0..{n_classes - 1}; got {class_index}")

    with tf.GradientTape() as tape:
        feature_map, scores = sub(inputs, training=False)
        feature_map = tf.cast(feature_map, tf.float32)
        score = tf.cast(scores, tf.float32)[:, int(class_index)]
    gradients = tape.gradient(score, feature_map)
    if gradients is None:
        raise ValueError(f"model {model.name!r}: the class score does not depend on the image feature map")
    weights = tf.reduce_mean(gradients, axis=(1, 2))                      # (1, channels)
    cam = tf.nn.relu(tf.reduce_sum(feature_map * weights[:, None, None, :], axis=-1))[0].numpy()

    import cv2

    cam = cv2.resize(cam.astype(np.float32), (IMAGE_SIZE, IMAGE_SIZE), interpolation=cv2.INTER_LINEAR)
    cam = np.maximum(cam, 0.0)
    peak = float(cam.max())
    return (cam / peak if peak > 0 else np.zeros_like(cam)).astype(np.float32)


def _submodel(model):
    """``inputs -> (feature map, class scores)``, built once per model."""
    sub = _SUBMODELS.get(model)
    if sub is None:
        import keras

        try:
            scores = model.get_layer(LOGITS_LAYER).output
        except ValueError:
            scores = model.output
        sub = keras.Model(model.input, [feature_map_tensor(model), scores], name=f"{model.name}_gradcam")
        _SUBMODELS[model] = sub
    return sub


def input_names(model) -> set[str]:
    inputs = model.input
    if isinstance(inputs, dict):
        return set(inputs)
    if not isinstance(inputs, (list, tuple)):
        inputs = [inputs]
    return {t.name for t in inputs}
