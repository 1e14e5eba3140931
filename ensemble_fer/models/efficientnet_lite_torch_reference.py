"""The check of the ``efficientnet_lite0`` port: the original PyTorch network, run by PyTorch.

This file is a script for a throwaway environment used only for the check, never imported by
the project (which has no torch)::

    python3 -m venv /tmp/torchenv
    /tmp/torchenv/bin/pip install torch==2.13.0 numpy efficientnet-lite-pytorch==0.1.0
    ENSEMBLE_FER_TORCH_PYTHON=/tmp/torchenv/bin/python python -m pipelines.convert_weights efficientnet_lite0

:func:`ensemble_fer.models.efficientnet_lite.reference` runs it as
``$ENSEMBLE_FER_TORCH_PYTHON this_file.pth inputs.npy outputs.npy``. The network is the
package's own model code (``efficientnet_lite_pytorch``, by the authors of the weights file),
the state dict is read by ``torch.load(weights_only=True)`` (no pickled code runs), inputs are
float RGB in [0, 255] (N, H, W, 3), normalised as the TensorFlow EfficientNet-Lite checkpoints
the file was converted from were trained, ``(x - 127) / 128``; the output is the pooled
1280-d ``extract_features`` map (mean over height and width), float32 (N, 1280).
"""

from __future__ import annotations

import sys

MEAN_RGB = 127.0
STDDEV_RGB = 128.0


def main(argv) -> int:
    import numpy as np
    import torch
    from efficientnet_lite_pytorch import EfficientNet

    weights, inputs, outputs = argv
    rgb = np.load(inputs).astype(np.float32)
    # 'same' padding like TensorFlow's, computed for this input side (the package pads statically)
    model = EfficientNet.from_name("efficientnet-lite0", image_size=int(rgb.shape[1]))
    model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True), strict=True)
    model.eval()
    x = torch.from_numpy(((rgb - MEAN_RGB) / STDDEV_RGB).transpose(0, 3, 1, 2).copy())
    with torch.no_grad():
        pooled = model.extract_features(x).mean(dim=(2, 3))
    np.save(outputs, pooled.numpy().astype(np.float32))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
