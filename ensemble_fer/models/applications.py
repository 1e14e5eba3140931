"""ImageNet backbones from ``keras.applications``: ``inception_resnet_v2`` and the transfer models
of the capstone report, ``vgg16``, ``resnet50v2``, ``efficientnetv2b2``.

Thin entries: the architecture is keras' (``include_top=False``, no pooling, so the output is
the last 4-D map); each entry adds the ``notop`` ImageNet file keras.applications downloads
(same URL, hash and cache file, fetched through :mod:`ensemble_fer.models.weights`) and the
model's own input scaling as layers in front of it. keras' legacy ``.h5`` files are loaded in
topological order, as keras.applications does. Layer names are those keras gives in a fresh
session (``create_block`` resets Keras' automatic names while it builds).

Default size 96 px (the 48 px crop upsampled twice) for the three transfer models: their five
stride-2 stages leave a 3x3 map there, as ``inception_resnet_v2`` has at its 139 px default;
32 px (keras' minimum, a 1x1 map) is the smallest accepted.
"""

from __future__ import annotations

import keras

from ensemble_fer.models.preprocessing import (caffe_preprocessing, symmetric_preprocessing,
                                               torch_preprocessing)
from ensemble_fer.models.registry import register_block
from ensemble_fer.models.weights import WeightsFile

KERAS_APPLICATIONS_URL = "https://storage.googleapis.com/tensorflow/keras-applications/"


IMAGENET_INCEPTION_RESNET_V2_WEIGHTS = WeightsFile(
    name="imagenet",
    fname="inception_resnet_v2_weights_tf_dim_ordering_tf_kernels_notop.h5",
    origin=(KERAS_APPLICATIONS_URL + "inception_resnet_v2/"
            "inception_resnet_v2_weights_tf_dim_ordering_tf_kernels_notop.h5"),
    file_hash="d19885ff4a710c122648d3b5c3b684e4",   # md5, as in keras.applications
    cache_subdir="models",                           # the file keras.applications caches
    description="ImageNet InceptionResNetV2 without top (keras.applications)",
)


@register_block(
    "inception_resnet_v2", default_size=139, min_size=75, channels=3,
    description="keras.applications.InceptionResNetV2(include_top=False): 54.3M params, "
                "output the last 1536-channel map (3x3 at 139 px)",
    preprocessing=symmetric_preprocessing, default_weights="imagenet",
    weights_files=(IMAGENET_INCEPTION_RESNET_V2_WEIGHTS,), pretrained=True,
    legacy_h5_by_name=False)   # keras loads its own file in topological order
def inception_resnet_v2(inputs, name):
    app = keras.applications.InceptionResNetV2(include_top=False, weights=None,
                                               input_tensor=inputs)
    return app.output


IMAGENET_VGG16_WEIGHTS = WeightsFile(
    name="imagenet",
    fname="vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5",
    origin=KERAS_APPLICATIONS_URL + "vgg16/vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5",
    file_hash="6d6bbae143d832006294945121d1f1fc",   # md5, as in keras.applications
    description="ImageNet VGG16 without top (keras.applications)",
)


@register_block(
    "vgg16", default_size=96, min_size=32, channels=3,
    description="keras.applications.VGG16(include_top=False): 14.7M params, output the "
                "'block5_pool' map (3x3x512 at 96 px)",
    preprocessing=caffe_preprocessing, default_weights="imagenet",
    weights_files=(IMAGENET_VGG16_WEIGHTS,), pretrained=True, legacy_h5_by_name=False)
def vgg16(inputs, name):
    return keras.applications.VGG16(include_top=False, weights=None, input_tensor=inputs).output


IMAGENET_RESNET50V2_WEIGHTS = WeightsFile(
    name="imagenet",
    fname="resnet50v2_weights_tf_dim_ordering_tf_kernels_notop.h5",
    origin=(KERAS_APPLICATIONS_URL + "resnet/"
            "resnet50v2_weights_tf_dim_ordering_tf_kernels_notop.h5"),
    file_hash="fac2f116257151a9d068a22e544a4917",   # md5, as in keras.applications
    description="ImageNet ResNet50V2 without top (keras.applications)",
)


@register_block(
    "resnet50v2", default_size=96, min_size=32, channels=3,
    description="keras.applications.ResNet50V2(include_top=False): 23.6M params, output the "
                "'post_relu' map (3x3x2048 at 96 px)",
    preprocessing=symmetric_preprocessing, default_weights="imagenet",
    weights_files=(IMAGENET_RESNET50V2_WEIGHTS,), pretrained=True, legacy_h5_by_name=False)
def resnet50v2(inputs, name):
    return keras.applications.ResNet50V2(include_top=False, weights=None,
                                         input_tensor=inputs).output


IMAGENET_EFFICIENTNETV2B2_WEIGHTS = WeightsFile(
    name="imagenet",
    fname="efficientnetv2-b2_notop.h5",
    origin=KERAS_APPLICATIONS_URL + "efficientnet_v2/efficientnetv2-b2_notop.h5",
    file_hash="1dfe2e7a5d45b6632553a8961ea609eb",   # md5, as in keras.applications
    description="ImageNet EfficientNetV2-B2 without top (keras.applications)",
)


@register_block(
    "efficientnetv2b2", default_size=96, min_size=32, channels=3,
    description="keras.applications.EfficientNetV2B2(include_top=False): 8.8M params, output "
                "the 'top_activation' map (3x3x1408 at 96 px)",
    preprocessing=torch_preprocessing, default_weights="imagenet",
    weights_files=(IMAGENET_EFFICIENTNETV2B2_WEIGHTS,), pretrained=True,
    legacy_h5_by_name=False)
def efficientnetv2b2(inputs, name):
    # Its scaling layers are the spec's preprocessing (outside the block, like every block's).
    return keras.applications.EfficientNetV2B2(include_top=False, weights=None,
                                               input_tensor=inputs,
                                               include_preprocessing=False).output
