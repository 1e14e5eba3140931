"""The VGGFace2 ResNet-50 (block ``resnet50``), exactly as keras-vggface (rcmalli) publishes it.

Layer names are the published keras-vggface names with '/' written '_' (Keras 3 forbids '/'),
so the published Keras 2 file loads by layer name (:mod:`ensemble_fer.models.legacy_h5`).
"""

from __future__ import annotations

from keras import layers

from ensemble_fer.models.legacy_h5 import keras_layer_name
from ensemble_fer.models.preprocessing import subtract_bgr_mean
from ensemble_fer.models.registry import register_block
from ensemble_fer.models.weights import WeightsFile

# keras_vggface.utils.preprocess_input(version=2): x[..., ::-1] (RGB -> BGR), then
# x[..., 0] -= 91.4953 (B), x[..., 1] -= 103.8827 (G), x[..., 2] -= 131.0912 (R).
VGGFACE2_MEAN_BGR = (91.4953, 103.8827, 131.0912)


def vggface2_preprocessing(prefix: str) -> list[layers.Layer]:
    """keras-vggface "version 2" preprocessing: RGB -> BGR, subtract the VGGFace2 BGR means."""
    return subtract_bgr_mean(prefix, VGGFACE2_MEAN_BGR)


RESNET50_STAGES = ((2, 3, (64, 64, 256)), (3, 4, (128, 128, 512)),
                   (4, 6, (256, 256, 1024)), (5, 3, (512, 512, 2048)))


def _vggface_resnet50_published_names() -> tuple[str, ...]:
    names = ["conv1/7x7_s2", "conv1/7x7_s2/bn"]
    for stage, blocks, _ in RESNET50_STAGES:
        for block in range(1, blocks + 1):
            kinds = ["1x1_reduce", "3x3", "1x1_increase"] + (["1x1_proj"] if block == 1 else [])
            for kind in kinds:
                names += [f"conv{stage}_{block}_{kind}", f"conv{stage}_{block}_{kind}/bn"]
    return tuple(names)


#: The names, in the published file, of the 106 layers with weights (53 conv + 53 batch norm).
VGGFACE_RESNET50_LAYER_NAMES = _vggface_resnet50_published_names()

VGGFACE2_RESNET50_WEIGHTS = WeightsFile(
    name="vggface2",
    fname="rcmalli_vggface_tf_notop_resnet50.h5",
    origin="https://github.com/rcmalli/keras-vggface/releases/download/v2.0/"
           "rcmalli_vggface_tf_notop_resnet50.h5",
    # The sha256 of this file is not published (keras-vggface downloads it without a hash)
    # and it could not be fetched here to compute one, so the cache is not hash-checked.
    file_hash=None,
    cache_subdir="models",
    also_look_in=("models/vggface",),   # where keras-vggface itself caches it
    description="VGGFace2 (8631 identities) ResNet-50 without top, keras-vggface v2.0",
)


def _vggface_conv_bn(x, filters, kernel, name, strides=1, padding="valid", relu=True):
    """Conv (no bias) + BatchNormalization (Keras defaults: eps 1e-3, momentum 0.99) [+ relu]."""
    x = layers.Conv2D(filters, kernel, strides=strides, padding=padding, use_bias=False,
                      name=keras_layer_name(name))(x)
    x = layers.BatchNormalization(axis=-1, name=keras_layer_name(f"{name}/bn"))(x)
    if relu:
        x = layers.Activation("relu", name=keras_layer_name(f"{name}/relu"))(x)
    return x


def _vggface_bottleneck(x, filters, stage, block, strides):
    """keras-vggface ``resnet_conv_block`` (block 1: projection, stride on 1x1_reduce and proj)
    or ``resnet_identity_block`` (later blocks)."""
    f1, f2, f3 = filters
    base = f"conv{stage}_{block}"
    shortcut = x
    y = _vggface_conv_bn(x, f1, 1, f"{base}_1x1_reduce", strides=strides)
    y = _vggface_conv_bn(y, f2, 3, f"{base}_3x3", padding="same")
    y = _vggface_conv_bn(y, f3, 1, f"{base}_1x1_increase", relu=False)
    if block == 1:
        shortcut = _vggface_conv_bn(x, f3, 1, f"{base}_1x1_proj", strides=strides, relu=False)
    y = layers.Add(name=f"{base}_add")([y, shortcut])
    return layers.Activation("relu", name=f"{base}_relu")(y)


@register_block(
    "resnet50", default_size=197, min_size=197, channels=3,
    description="VGGFace2 ResNet-50 (keras-vggface RESNET50, include_top=False): 23.6M params, "
                "output the 'avg_pool' map (1x1x2048 at 197-223 px)",
    preprocessing=vggface2_preprocessing, default_weights="vggface2",
    weights_files=(VGGFACE2_RESNET50_WEIGHTS,), pretrained=True, legacy_h5_by_name=True)
def vggface_resnet50(inputs, name):
    """keras-vggface ``RESNET50(include_top=False)`` layer for layer, published names with '/'
    -> '_'. Stem 7x7/2 'same' conv + BN + relu + 3x3/2 'valid' max pool; stages 2-5 of
    [3, 4, 6, 3] bottlenecks; ``AveragePooling2D((7, 7), name='avg_pool')`` last, which is why
    the input must be >= 197 px (197 -> 99 -> 49 -> 25 -> 13 -> 7)."""
    x = _vggface_conv_bn(inputs, 64, 7, "conv1/7x7_s2", strides=2, padding="same")
    x = layers.MaxPooling2D((3, 3), strides=(2, 2), name="pool1_3x3_s2")(x)
    for stage, blocks, filters in RESNET50_STAGES:
        for block in range(1, blocks + 1):
            strides = (1 if stage == 2 else 2) if block == 1 else 1
            x = _vggface_bottleneck(x, filters, stage, block, strides)
    return layers.AveragePooling2D((7, 7), name="avg_pool")(x)
