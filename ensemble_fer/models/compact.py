"""The compact blocks, trained from scratch at the native 48x48 grayscale on a CPU: ``cnn5``,
``complex_cnn``, ``se_resnet``, ``vgg_fast``, ``vgg_wide``, ``vgg_dw``; :func:`conv_stack` builds
the VGG-style ones.

Every layer is named explicitly with the block name as prefix, so names do not depend on what
was built before in the session.
"""

from __future__ import annotations

from typing import Sequence

from keras import layers

from ensemble_fer.models.preprocessing import symmetric_preprocessing
from ensemble_fer.models.registry import register_block


def _conv_bn_relu(x, filters, name, kernel=3, strides=1):
    x = layers.Conv2D(filters, kernel, strides=strides, padding="same", use_bias=False,
                      kernel_initializer="he_normal", name=f"{name}_conv")(x)
    x = layers.BatchNormalization(name=f"{name}_bn")(x)
    return layers.Activation("relu", name=f"{name}_relu")(x)


def _separable_bn_relu(x, filters, name):
    x = layers.SeparableConv2D(filters, 3, padding="same", use_bias=False, depthwise_initializer="he_normal",
                               pointwise_initializer="he_normal", name=f"{name}_conv")(x)
    x = layers.BatchNormalization(name=f"{name}_bn")(x)
    return layers.Activation("relu", name=f"{name}_relu")(x)


def conv_stack(x, prefix: str, stages: Sequence[tuple[int, int, bool, float]], separable: bool = False):
    """Generic VGG-style builder: per stage ``(filters, n_convs, pool, dropout)``.

    Each conv is 3x3 'same', no bias, + BatchNorm + ReLU; then 2x2 max pooling if ``pool``,
    then ``Dropout(dropout)`` if > 0. Layers are named ``{prefix}_s{stage}_c{conv}_{conv|bn|relu}``,
    ``{prefix}_s{stage}_pool``, ``{prefix}_s{stage}_drop``. ``separable``: the convs after the
    first stage are depthwise-separable (the first sees the 1-channel image, where a depthwise
    3x3 would be a single filter).
    """
    for s, (filters, n_convs, pool, dropout) in enumerate(stages, start=1):
        conv = _separable_bn_relu if separable and s > 1 else _conv_bn_relu
        for c in range(1, n_convs + 1):
            x = conv(x, filters, f"{prefix}_s{s}_c{c}")
        if pool:
            x = layers.MaxPooling2D(2, name=f"{prefix}_s{s}_pool")(x)
        if dropout:
            x = layers.Dropout(dropout, name=f"{prefix}_s{s}_drop")(x)
    return x


@register_block(
    "cnn5", default_size=48, min_size=32, channels=1,
    description="five-layer FER2013 baseline: conv32-conv32-pool-drop-conv64-conv64-pool-drop "
                "(+ the network's dense layer); 66k params, 54M MACs, 12x12x64 output at 48 px",
    preprocessing=symmetric_preprocessing)
def cnn5(inputs, name):
    """The five-layer baseline: four 3x3 convs (32, 32 | 64, 64) with BatchNorm + ReLU, a 2x2
    max pool and Dropout(0.25) after each pair; the fifth layer is the network's dense
    classifier on the pooled 64 features. Output 12x12x64 at 48 px. 65,568 params, 54M MACs."""
    return conv_stack(inputs, name, [(32, 2, True, 0.25), (64, 2, True, 0.25)])


@register_block(
    "complex_cnn", default_size=48, min_size=32, channels=1,
    description="5 conv blocks (32, 64, 128, 256, 256; two 3x3 conv + BN each, pool + dropout "
                "0.25): 2.36M params, 128M MACs, 3x3x256 output at 48 px; the report's two dense "
                "layers are the network's head",
    preprocessing=symmetric_preprocessing)
def complex_cnn(inputs, name):
    """Five conv blocks of two 3x3 convs + BatchNorm + ReLU (32, 64, 128, 256, 256 filters),
    2x2 max pooling after blocks 1-4 (48 -> 3) and Dropout(0.25) after every block. The report's
    two dense layers are *not* here: they are the network's dense head after global pooling.
    Output 3x3x256 at 48 px; 2,356,256 params, 128M MACs."""
    return conv_stack(inputs, name, [(32, 2, True, 0.25), (64, 2, True, 0.25),
                                     (128, 2, True, 0.25), (256, 2, True, 0.25),
                                     (256, 2, False, 0.25)])


def _se_basic_block(x, filters, strides, name, ratio=8):
    """Basic residual block (two 3x3 conv + BN) with squeeze-and-excitation before the add."""
    shortcut = x
    y = _conv_bn_relu(x, filters, f"{name}_1", strides=strides)
    y = layers.Conv2D(filters, 3, padding="same", use_bias=False,
                      kernel_initializer="he_normal", name=f"{name}_2_conv")(y)
    y = layers.BatchNormalization(name=f"{name}_2_bn")(y)
    se = layers.GlobalAveragePooling2D(keepdims=True, name=f"{name}_se_squeeze")(y)
    se = layers.Dense(max(filters // ratio, 4), activation="relu", name=f"{name}_se_reduce")(se)
    se = layers.Dense(filters, activation="sigmoid", name=f"{name}_se_expand")(se)
    y = layers.Multiply(name=f"{name}_se_scale")([y, se])
    if strides != 1 or x.shape[-1] != filters:
        shortcut = layers.Conv2D(filters, 1, strides=strides, use_bias=False,
                                 kernel_initializer="he_normal", name=f"{name}_proj_conv")(x)
        shortcut = layers.BatchNormalization(name=f"{name}_proj_bn")(shortcut)
    y = layers.Add(name=f"{name}_add")([y, shortcut])
    return layers.Activation("relu", name=f"{name}_out")(y)


@register_block(
    "se_resnet", default_size=48, min_size=32, channels=1,
    description="SE-ResNet: 3x3 stem (32) + 3 stages x 2 basic SE blocks (64, 128, 256; "
                "stride 2 each, SE ratio 8): 2.81M params, 227M MACs, 6x6x256 output at 48 px",
    preprocessing=symmetric_preprocessing)
def se_resnet(inputs, name):
    """A small SE-ResNet for 48 px faces: 3x3 stem conv (32) at full resolution, then three
    stages of two basic residual blocks with squeeze-and-excitation (ratio 8), 64/128/256
    filters, the first block of each stage strided (48 -> 24 -> 12 -> 6) with a 1x1 projection
    shortcut. Output 6x6x256 at 48 px; 2,805,904 params, 227M MACs."""
    x = _conv_bn_relu(inputs, 32, f"{name}_stem")
    for s, filters in enumerate((64, 128, 256), start=1):
        for b in range(1, 3):
            x = _se_basic_block(x, filters, 2 if b == 1 else 1, f"{name}_s{s}_b{b}")
    return x


@register_block(
    "vgg_fast", default_size=48, min_size=32, channels=1,
    description="CPU-lean VGG: one 3x3 conv (32) at 48 px, then conv pairs of 64 / 128 / 256 at "
                "24 / 12 / 6 px, BN everywhere: 1.17M params, 96M MACs, 6x6x256 output",
    preprocessing=symmetric_preprocessing)
def vgg_fast(inputs, name):
    """VGG-style block aimed at FER2013 accuracy per CPU-minute on a 2-core machine.

    Layout (3x3 'same' convs, no bias, BatchNorm + ReLU each)::

        48x48x1  conv 32            -> pool -> 24x24
        24x24    conv 64,  conv 64  -> pool -> 12x12
        12x12    conv 128, conv 128 -> pool -> 6x6   -> Dropout(0.1)
        6x6      conv 256, conv 256                  -> output 6x6x256 (receptive field 66 px)

    1,165,216 parameters (1,163,360 trainable); 96.2M multiply-adds (0.19 GFLOPs) forward per
    48x48 image, ~0.58 GFLOPs forward+backward (convs and dense only).

    Why: the VGG nets that reach ~73% on FER2013 from scratch (Khaireddin & Chen 2021;
    Pramerdorfer & Kampel 2016) run two 64-channel convs at the full 48x48 resolution, which
    alone costs ~170M MACs per image (and the most memory traffic in the backward pass). Here
    the full-resolution stage is a single 32-filter conv on the 1-channel input (0.7M MACs),
    and each later stage doubles the width as it halves the side, so every stage costs the
    same ~32M MACs: depth (7 convs, receptive field larger than the face) is kept where it is
    cheap. Plain 3x3 convs rather than depthwise-separable ones: a separable version of this
    layout has 8x fewer MACs but trained only ~3x faster here (TensorFlow's CPU depthwise
    kernels are memory-bound), and full convs learn more per epoch. BatchNorm on every conv allows a high learning rate; regularisation is left to the
    augmentation and to the network's dropout head (only a light Dropout(0.1) here), because
    heavy dropout slows convergence per epoch, which is what a CPU budget pays for.
    """
    return conv_stack(inputs, name, _vgg_fast_stages(32, 64, 128, 256))


def _vgg_fast_stages(*widths):
    """vgg_fast's layout at the given widths: one conv at full resolution, then three conv pairs,
    pooling after all stages but the last, Dropout(0.1) after the third."""
    return [(widths[0], 1, True, 0.0), (widths[1], 2, True, 0.0), (widths[2], 2, True, 0.1),
            (widths[3], 2, False, 0.0)]


@register_block(
    "vgg_wide", default_size=48, min_size=32, channels=1,
    description="vgg_fast at 1.5x the widths: conv 48 at 48 px, then conv pairs of 96 / 192 / "
                "384 at 24 / 12 / 6 px: 2.62M params, 216M MACs, 6x6x384 output",
    preprocessing=symmetric_preprocessing)
def vgg_wide(inputs, name):
    """:func:`vgg_fast`'s layout with every stage 1.5x as wide (48, 96, 192, 384 filters).

    2,618,736 parameters; 216.0M multiply-adds forward per 48x48 image (2.25x vgg_fast's; 150M
    at 40 px). Why this width: vgg_fast ends a 60-epoch run ~5 points over-fitted on augmented
    batches yet under the published nets' accuracy, and the issue's budget of ~3 CPU-hours per
    member fits ~40 epochs of 2.25x the cost at 40 px on two cores; the published 64-128-256-512
    trunk (4x the cost) would fit ~25.
    """
    return conv_stack(inputs, name, _vgg_fast_stages(48, 96, 192, 384))


@register_block(
    "vgg_dw", default_size=48, min_size=32, channels=1,
    description="vgg_fast's layout, depthwise-separable after the stem, at twice the widths: conv 32 "
                "at 48 px, then separable pairs of 128 / 256 / 512 at 24 / 12 / 6 px: 0.53M params, "
                "42.3M MACs, 6x6x512 output",
    preprocessing=symmetric_preprocessing)
def vgg_dw(inputs, name):
    """A student shaped for int8 inference: :func:`vgg_fast`'s stages, each conv after the stem a
    depthwise-separable one (3x3 depthwise, 1x1 pointwise, BatchNorm + ReLU), at twice the widths
    (32 | 128, 128 | 256, 256 | 512, 512).

    531,392 parameters; 42.3M multiply-adds forward per 48x48 image (vgg_fast: 96.2M; 29.4M at
    40 px, vgg_fast 66.8M). Why: the fast model's budget is crops per second as int8 TFLite, where XNNPACK's
    depthwise and 1x1 kernels are quick; twice the channels at under half the multiply-adds is
    the trade a wider student can make inside that budget (``benchmarks/bench_student_shapes.py``
    measures it). Training is slower per multiply-add than vgg_fast (TensorFlow's CPU depthwise
    kernels are memory-bound), which is the price paid once.
    """
    return conv_stack(inputs, name, _vgg_fast_stages(32, 128, 256, 512), separable=True)
