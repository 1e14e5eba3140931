"""Input scaling of the blocks, as lists of serialisable layers (no ``Lambda``).

A block's ``preprocessing(prefix)`` returns fresh layers that take float32 pixels in [0, 255]
(already resized and, for 3-channel blocks, gray -> RGB) to what the block was trained on. They
sit in front of the block inside the saved ``.keras`` file, which therefore loads with
``safe_mode=True``. The modes are those of ``keras.applications.imagenet_utils.preprocess_input``
("tf", "caffe") and of EfficientNetV2's own ``include_preprocessing`` layers.
"""

from __future__ import annotations

import keras
from keras import layers

# ImageNet statistics, as keras.applications uses them.
CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)
TORCH_MEAN_RGB = (0.485, 0.456, 0.406)
TORCH_STD_RGB = (0.229, 0.224, 0.225)


# The registered name ("ensemble_fer>ReverseChannels") is what saved models refer to: keep the
# package and class name whatever module the class lives in.
@keras.saving.register_keras_serializable(package="ensemble_fer")
class ReverseChannels(layers.Layer):
    """Reverse the channel axis (RGB -> BGR, and back)."""

    def call(self, inputs):
        return keras.ops.flip(inputs, axis=-1)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return super().get_config()


def symmetric_preprocessing(prefix: str) -> list[layers.Layer]:
    """[0, 255] -> [-1, 1]: keras.applications "tf" mode (Inception, ResNetV2); also used by the
    compact blocks."""
    return [layers.Rescaling(scale=1.0 / 127.5, offset=-1.0, name=f"{prefix}_rescale")]


def subtract_bgr_mean(prefix: str, mean_bgr) -> list[layers.Layer]:
    """RGB -> BGR, then subtract per-channel means given in BGR order (Caffe-trained nets)."""
    return [
        ReverseChannels(name=f"{prefix}_rgb_to_bgr"),
        layers.Rescaling(scale=1.0, offset=[-m for m in mean_bgr], name=f"{prefix}_subtract_mean"),
    ]


def caffe_preprocessing(prefix: str) -> list[layers.Layer]:
    """keras.applications "caffe" mode (VGG16): RGB -> BGR, subtract the ImageNet BGR means."""
    return subtract_bgr_mean(prefix, CAFFE_MEAN_BGR)


def torch_preprocessing(prefix: str) -> list[layers.Layer]:
    """[0, 255] -> [0, 1], then the ImageNet per-channel standardisation: the layers
    EfficientNetV2-B* put in front of themselves with ``include_preprocessing=True``."""
    return [
        layers.Rescaling(scale=1.0 / 255, name=f"{prefix}_rescale"),
        layers.Normalization(mean=list(TORCH_MEAN_RGB), variance=[s ** 2 for s in TORCH_STD_RGB],
                             axis=-1, name=f"{prefix}_normalize"),
    ]
