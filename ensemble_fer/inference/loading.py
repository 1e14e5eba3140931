"""Loading any trained model as a :class:`~ensemble_fer.inference.predictor.Predictor`: a
variant, an ensemble, or one format's folder of an export.

Above both :mod:`ensemble_fer.inference.predictor` (Keras models) and
:mod:`ensemble_fer.inference.export` (TFLite / ONNX, which predicts through the same
``Predictor``), so that neither imports the other to dispatch.
"""

from __future__ import annotations

from pathlib import Path

from ensemble_fer.errors import MissingInputError
from ensemble_fer.inference.predictor import Predictor, load_keras_predictor
from ensemble_fer.models.variant_dir import is_export


def load_predictor(path) -> Predictor:
    """A :class:`Predictor` from a variant folder (or its ``config.json`` / ``model.keras``),
    an ``ensemble.json``, a folder holding ``ensemble.json``, or one format's folder of an
    export (:mod:`ensemble_fer.inference.export`). Nothing is loaded into Keras yet; every
    file and the members' agreement are checked now."""
    path = Path(path)
    if not path.exists():
        raise MissingInputError(f"{path}: no such file or folder")
    if is_export(path):
        from ensemble_fer.inference import export   # TFLite / ONNX: only for an export

        return export.load_export(path)     # predicts through the same Predictor
    return load_keras_predictor(path)
