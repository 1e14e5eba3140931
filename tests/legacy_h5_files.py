"""Keras 2 ``save_weights`` .h5 files written for the tests: the library only reads them
(:mod:`ensemble_fer.models.legacy_h5`), and a real published file is 90-500 MB, so the
tests write small ones in the same layout, with the variables in the order the reader takes
them (:func:`~ensemble_fer.models.legacy_h5.legacy_variables`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

import h5py
import keras
import numpy as np

from ensemble_fer.models.legacy_h5 import legacy_variables


def save_legacy_h5_weights(model: keras.Model, path,
                           layer_names: Mapping[str, str] | None = None) -> Path:
    """Write ``model``'s weights as a Keras 2 ``save_weights`` .h5 file.

    Root attributes ``layer_names``, ``backend``, ``keras_version``; one group per layer
    (nested where the name has '/') with attribute ``weight_names`` (``<layer>/<weight>:0``)
    and one dataset per weight. ``layer_names`` maps Keras layer names to the names to write
    (e.g. the published keras-vggface names with '/'); by default the Keras names are written.
    """
    layer_names = dict(layer_names or {})
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        names = [layer_names.get(layer.name, layer.name) for layer in model.layers]
        f.attrs["layer_names"] = np.array([n.encode("utf8") for n in names])
        f.attrs["backend"] = b"tensorflow"
        f.attrs["keras_version"] = keras.__version__.encode("utf8")
        for name, layer in sorted(zip(names, model.layers), key=lambda item: item[0]):
            group = f.require_group(name)
            variables = legacy_variables(layer)
            wnames = [f"{name}/{v.name}:0".encode("utf8") for v in variables]
            group.attrs["weight_names"] = np.array(wnames, dtype="S") if wnames else np.array(
                [], dtype="S1")
            for wname, variable in zip(wnames, variables):
                group.create_dataset(wname.decode("utf8"),
                                     data=np.asarray(variable.numpy()))
    return path
