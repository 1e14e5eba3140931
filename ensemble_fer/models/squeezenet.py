"""SqueezeNet 1.1 on ImageNet (block ``squeezenet11``), ported from DeepCognition/keras-squeezenet
(commit a73d4339, ``squeezenet_weights_tf_dim_ordering_tf_kernels_notop.h5``, a Keras 1 file
converted from the Caffe SqueezeNet v1.1 of the original authors).

The architecture of that repository's ``squeezenet.py``: conv1 3x3/2 'valid' (64) + ReLU,
max-pool 3x3/2 'valid', fire2-3, pool, fire4-5, pool, fire6-9; a fire module is a 1x1 'squeeze'
conv + ReLU feeding a 1x1 and a 3x3 'same' 'expand' conv (+ ReLU each), concatenated 1x1 first.
No batch norms. Output: fire9's 512-channel map (7x7 at 128 px; 13x13 at 224); the classifier
(conv10) is not in the file. 0.72M parameters.

Preprocessing as the repository feeds it (it imports ``keras.applications.imagenet_utils.
preprocess_input``, "caffe" mode, as its Caffe origin was trained): RGB -> BGR, subtract the
ImageNet BGR means (103.939, 116.779, 123.68), no scaling. The port adds one exact rewrite, as
``faceres_mobilenet`` does: the input is divided by 128 after the mean and conv1's kernel
multiplied by 128 (a power of two: the same numbers up to float rounding of the sums), so the
stem sees values of about +-1 instead of +-128 and its gradients are of the size of the others'
(the README of ``shared/weights`` measured SGD wrecking an unscaled +-128 stem in ten steps).

The check (``reference``) computes the original network independently of the block: the
``.h5`` read again by h5py under its own layer names, and the ops Keras 1's TensorFlow backend
ran for each layer (``tf.nn.conv2d``, ``bias_add``, ``relu``, ``max_pool2d``, ``concat``) on
the unscaled caffe-preprocessed input; no Keras layer, no name mapping, no kernel scaling.
"""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
from keras import layers

from ensemble_fer.errors import InputError
from ensemble_fer.models.preprocessing import CAFFE_MEAN_BGR, ReverseChannels
from ensemble_fer.models.registry import register_block
from ensemble_fer.models.weights import ConvertedWeights, published_files

INPUT_SCALE = 128.0
"""Inputs are divided by this after the mean (and conv1's kernel multiplied by it)."""

#: (fire module number, squeeze filters, expand filters per branch), max-pools after fire3 and fire5.
FIRE_MODULES = ((2, 16, 64), (3, 16, 64), (4, 32, 128), (5, 32, 128), (6, 48, 192), (7, 48, 192),
                (8, 64, 256), (9, 64, 256))
POOL_AFTER = {3: "pool3", 5: "pool5"}
FIRE_CONVS = ("squeeze1x1", "expand1x1", "expand3x3")

SOURCE_FOLDER = "squeezenet11_imagenet"
SOURCE_FILE = "squeezenet_weights_tf_dim_ordering_tf_kernels_notop.h5"
SOURCE_FILES = {SOURCE_FILE: "17154246284f555591549ac2c83e127abfbf4307dc4b0060fdaa2931d0fa38da"}


def original_layers() -> list[str]:
    """The names of the file's layers with weights, in order (``conv1``, ``fire2/squeeze1x1``, ...)."""
    return ["conv1"] + [f"fire{n}/{conv}" for n, _, _ in FIRE_MODULES for conv in FIRE_CONVS]


def block_layer(original: str) -> str:
    """The block's name for an original layer: ``fire2/squeeze1x1`` -> ``fire2_squeeze1x1``."""
    return original.replace("/", "_")


def squeezenet_preprocessing(prefix: str) -> list[layers.Layer]:
    """RGB -> BGR, subtract the ImageNet BGR means, divide by :data:`INPUT_SCALE`."""
    return [ReverseChannels(name=f"{prefix}_rgb_to_bgr"),
            layers.Rescaling(scale=1.0 / INPUT_SCALE, offset=[-m / INPUT_SCALE for m in CAFFE_MEAN_BGR],
                             name=f"{prefix}_subtract_mean")]


def read_keras1_weights(path: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Original layer name -> (kernel (kh, kw, in, out), bias) from the Keras 1 ``.h5``, in the
    order of each layer's ``weight_names``."""
    out = {}
    with h5py.File(path, "r") as f:
        names = [n.decode() if isinstance(n, bytes) else str(n) for n in f.attrs.get("layer_names", [])]
        for name in original_layers():
            if name not in names:
                raise InputError(f"{path}: no layer {name!r}: not the SqueezeNet 1.1 file")
            group = f[name]
            weight_names = [w.decode() if isinstance(w, bytes) else str(w) for w in group.attrs["weight_names"]]
            if len(weight_names) != 2:
                raise InputError(f"{path}: layer {name!r} has {len(weight_names)} weights, not a kernel and a bias")
            kernel, bias = (np.asarray(group[w], dtype=np.float32) for w in weight_names)
            if kernel.ndim != 4 or bias.shape != kernel.shape[-1:]:
                raise InputError(f"{path}: layer {name!r} has weights of shapes {kernel.shape} and {bias.shape}")
            out[name] = (kernel, bias)
    return out


def convert(source: Path) -> dict[str, np.ndarray]:
    """The block's weights (``<layer>/<index>``): the file's kernels and biases, conv1 times 128."""
    original = read_keras1_weights(published_files(source, SOURCE_FOLDER, SOURCE_FILES)[SOURCE_FILE])
    out = {}
    for name, (kernel, bias) in original.items():
        if name == "conv1":
            kernel = kernel * np.float32(INPUT_SCALE)   # exact: a power of two
        out[f"{block_layer(name)}/0"], out[f"{block_layer(name)}/1"] = kernel, bias
    return {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in out.items()}


def reference(source: Path, rgb: np.ndarray) -> np.ndarray:
    """The original network's pooled 512-d features of float RGB images in [0, 255], computed with
    the TensorFlow ops Keras 1 ran, from the ``.h5`` as published."""
    import tensorflow as tf

    original = read_keras1_weights(published_files(source, SOURCE_FOLDER, SOURCE_FILES)[SOURCE_FILE])
    bgr = rgb[..., ::-1].astype(np.float32) - np.asarray(CAFFE_MEAN_BGR, np.float32)   # preprocess_input, caffe

    def conv(x, name, stride=1, padding="VALID"):
        kernel, bias = original[name]
        return tf.nn.relu(tf.nn.bias_add(tf.nn.conv2d(x, kernel, strides=stride, padding=padding), bias))

    def pool(x):
        return tf.nn.max_pool2d(x, ksize=3, strides=2, padding="VALID")

    x = pool(conv(tf.constant(bgr), "conv1", stride=2))
    for n, _, _ in FIRE_MODULES:
        squeezed = conv(x, f"fire{n}/squeeze1x1")
        x = tf.concat([conv(squeezed, f"fire{n}/expand1x1"), conv(squeezed, f"fire{n}/expand3x3", padding="SAME")],
                      axis=3)
        if n in POOL_AFTER:
            x = pool(x)
    return tf.reduce_mean(x, axis=(1, 2)).numpy().astype(np.float64)


IMAGENET_SQUEEZENET11_WEIGHTS = ConvertedWeights(
    name="imagenet",
    fname="squeezenet11_imagenet.npz",
    origin="GitHub DeepCognition/keras-squeezenet at a73d4339, squeezenet_weights_tf_dim_ordering_tf_kernels_"
           "notop.h5 (Keras 1; converted from the Caffe SqueezeNet v1.1 of forresti/SqueezeNet)",
    file_hash="51eef08d0152d3455e90bc3d6e7ed13d22a08d4405844fc126deef6424ff1418",
    cache_subdir="pretrained",
    description="ImageNet SqueezeNet 1.1 without its classifier (0.72M parameters), ported from Keras 1",
    convert_command="python -m pipelines.convert_weights squeezenet11",
    convert=convert, reference=reference, source_folder=SOURCE_FOLDER,
    trained_on="ImageNet-1k (ILSVRC 2012 classification)",
    licence="MIT (DeepCognition/keras-squeezenet); the Caffe SqueezeNet weights are BSD-2-Clause",
)


@register_block(
    "squeezenet11", default_size=128, min_size=48, channels=3,
    description="ImageNet SqueezeNet 1.1 (DeepCognition keras-squeezenet, from Caffe): 0.72M params, stem input "
                "scaled by 1/128, output the fire9 512-channel map (7x7 at 128 px)",
    preprocessing=squeezenet_preprocessing, default_weights="imagenet",
    weights_files=(IMAGENET_SQUEEZENET11_WEIGHTS,), pretrained=True)
def squeezenet11(inputs, name):
    x = layers.Conv2D(64, 3, strides=2, padding="valid", name="conv1")(inputs)
    x = layers.ReLU(name="relu_conv1")(x)
    x = layers.MaxPooling2D(3, strides=2, padding="valid", name="pool1")(x)
    for n, squeeze, expand in FIRE_MODULES:
        s = layers.ReLU(name=f"fire{n}_relu_squeeze1x1")(layers.Conv2D(squeeze, 1, name=f"fire{n}_squeeze1x1")(x))
        left = layers.ReLU(name=f"fire{n}_relu_expand1x1")(layers.Conv2D(expand, 1, name=f"fire{n}_expand1x1")(s))
        right = layers.Conv2D(expand, 3, padding="same", name=f"fire{n}_expand3x3")(s)
        right = layers.ReLU(name=f"fire{n}_relu_expand3x3")(right)
        x = layers.Concatenate(axis=-1, name=f"fire{n}_concat")([left, right])
        if n in POOL_AFTER:
            x = layers.MaxPooling2D(3, strides=2, padding="valid", name=POOL_AFTER[n])(x)
    return x
