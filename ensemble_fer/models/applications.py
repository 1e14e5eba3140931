"""ImageNet backbones from ``keras.applications``: ``inception_resnet_v2``.

Thin entries: the architecture is keras' (``include_top=False``, no pooling, so the output is
the last 4-D map); each entry adds the ``notop`` ImageNet file keras.applications downloads
(same URL, hash and cache file, fetched through :mod:`ensemble_fer.models.weights`) and the
model's own input scaling as layers in front of it. keras' legacy ``.h5`` files are loaded in
topological order, as keras.applications does. Layer names are those keras gives in a fresh
session (``create_block`` resets Keras' automatic names while it builds).
"""

from __future__ import annotations

import keras

from ensemble_fer.models.preprocessing import symmetric_preprocessing
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

