"""Keras 2 ``.h5`` weight files, read and written with h5py.

Published Keras 2 files (keras-vggface, the keras.applications ImageNet files) hold one group per
layer with weights: root attributes ``layer_names`` (possibly chunked as ``layer_names0``, ...,
or under ``model_weights`` for a whole-model ``save``), each group an attribute
``weight_names`` (``<layer>/<weight>:0``) and one dataset per weight. Keras 3 forbids ``/`` in
layer names, so a published name such as ``conv1/7x7_s2/bn`` is ``conv1_7x7_s2_bn`` here
(:func:`keras_layer_name`).
"""

from __future__ import annotations

import dataclasses
import logging
import warnings
from pathlib import Path
from typing import Sequence

import h5py
import numpy as np

import keras

from ensemble_fer.errors import InputError

log = logging.getLogger(__name__)


@dataclasses.dataclass
class WeightsReport:
    """What a legacy .h5 load matched: model layer names, and what stayed unmatched."""

    path: str
    matched: list[str]
    unmatched_file_layers: list[str]
    unmatched_model_layers: list[str]

    def summary(self) -> str:
        return (f"{self.path}: loaded {len(self.matched)} layers; "
                f"{len(self.unmatched_model_layers)} model layers with weights not in the file"
                f"{_examples(self.unmatched_model_layers)}; "
                f"{len(self.unmatched_file_layers)} file layers not in the model"
                f"{_examples(self.unmatched_file_layers)}")


def _examples(names: Sequence[str], n: int = 5) -> str:
    if not names:
        return ""
    return " (" + ", ".join(names[:n]) + (", ..." if len(names) > n else "") + ")"


def keras_layer_name(published: str) -> str:
    """The Keras 3 layer name for a layer name of a published Keras 2 file ('/' -> '_')."""
    return published.replace("/", "_")


def is_legacy_h5(path) -> bool:
    """Whether an HDF5 file has the Keras 2 layout (rather than a Keras 3 ``.weights.h5``)."""
    with h5py.File(path, "r") as f:
        return "layer_names" in f.attrs or "model_weights" in f or "layer_names0" in f.attrs


def _attr_list(group, name: str) -> list[str]:
    """A string-list attribute, possibly chunked as name0, name1, ... (as Keras writes it)."""
    if name in group.attrs:
        values = list(group.attrs[name])
    else:
        values, i = [], 0
        while f"{name}{i}" in group.attrs:
            values.extend(group.attrs[f"{name}{i}"])
            i += 1
    return [v.decode("utf8") if isinstance(v, bytes) else str(v) for v in values]


def legacy_variables(layer) -> list:
    """A layer's variables in the order of a Keras 2 file's ``weight_names``: trainable first."""
    return list(layer.trainable_weights) + list(layer.non_trainable_weights)


def _short(weight_name: str) -> str:
    """'conv1/7x7_s2/bn/gamma:0' -> 'gamma'."""
    return weight_name.rsplit("/", 1)[-1].split(":", 1)[0]


def _assign_layer(layer, file_layer: str, names: list[str], values: list[np.ndarray]) -> None:
    variables = legacy_variables(layer)
    if len(variables) != len(values):
        raise InputError(f"layer {layer.name!r} has {len(variables)} weights but the file's "
                         f"layer {file_layer!r} has {len(values)} ({names})")
    by_short = {_short(n): v for n, v in zip(names, values)}
    if len(by_short) == len(values) and set(by_short) == {v.name for v in variables}:
        ordered = [by_short[v.name] for v in variables]   # match by weight name
    else:
        ordered = values                                   # else the legacy order
    for variable, value in zip(variables, ordered):
        if tuple(variable.shape) != tuple(value.shape):
            raise InputError(f"layer {layer.name!r}: weight {variable.name!r} has shape "
                             f"{tuple(variable.shape)} but the file's layer {file_layer!r} "
                             f"gives shape {tuple(value.shape)}")
    for variable, value in zip(variables, ordered):
        variable.assign(value.astype(variable.dtype, copy=False))


def load_legacy_h5_weights(model: keras.Model, path, by_name: bool = True) -> WeightsReport:
    """Load a Keras 2 ``.h5`` weight file (``save_weights`` or whole-model ``save``) with h5py.

    ``by_name``: each file layer goes to the model layer named ``keras_layer_name(file_name)``;
    layers present on one side only are reported (and a warning given when model layers stay
    unloaded). Otherwise the layers with weights are matched in topological order, which needs
    equal counts. Raises ``InputError`` when nothing matches or shapes differ.
    """
    path = Path(path)
    model_layers = [layer for layer in model.layers if legacy_variables(layer)]
    with h5py.File(path, "r") as f:
        group = f
        if "layer_names" not in f.attrs and "layer_names0" not in f.attrs and "model_weights" in f:
            group = f["model_weights"]
        file_layers = []
        for lname in _attr_list(group, "layer_names"):
            wnames = _attr_list(group[lname], "weight_names") if lname in group else []
            if wnames:
                file_layers.append((lname, wnames,
                                    [np.asarray(group[lname][w]) for w in wnames]))
    if not file_layers:
        raise InputError(f"weights: {str(path)!r} is not a legacy Keras weight file with "
                         "weights (no 'layer_names' / 'weight_names' attributes found)")

    matched, unmatched_file = [], []
    if by_name:
        index = {layer.name: layer for layer in model_layers}
        for lname, wnames, values in file_layers:
            layer = index.get(keras_layer_name(lname))
            if layer is None:
                unmatched_file.append(lname)
                continue
            _assign_layer(layer, lname, wnames, values)
            matched.append(layer.name)
    else:
        if len(file_layers) != len(model_layers):
            raise InputError(f"weights: {str(path)!r} has {len(file_layers)} layers with "
                             f"weights but block {model.name!r} has {len(model_layers)}; "
                             "topological loading needs the same architecture")
        for (lname, wnames, values), layer in zip(file_layers, model_layers):
            _assign_layer(layer, lname, wnames, values)
            matched.append(layer.name)
    done = set(matched)
    report = WeightsReport(str(path), matched, unmatched_file,
                           [layer.name for layer in model_layers if layer.name not in done])
    if not matched:
        raise InputError(f"weights: no layer of {str(path)!r} matches a layer of block "
                         f"{model.name!r} by name; file layers{_examples(unmatched_file)}, "
                         f"block layers{_examples(report.unmatched_model_layers)}")
    log.info("%s", report.summary())
    if report.unmatched_model_layers:
        warnings.warn(report.summary(), stacklevel=2)
    return report
