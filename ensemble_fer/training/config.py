"""The training configuration of a variant: one frozen dataclass, saved with the run and read back.

:class:`TrainConfig` holds everything that makes the model (network, data, schedule, seed).
Each field carries its default, its check and its help text; from them come

* the validation (``TrainConfig(...)`` refuses a bad value with one ``InputError`` line naming
  the field, what is allowed and what it received, and normalises the others: ints, floats,
  ``weights="none"`` -> None, the block's default ``image_size`` ...),
* the CLI of ``pipelines.train_variant`` (flag, help, metavar of each field: see
  :data:`CLI_KEYS`),
* the grid search (a combination is ``dataclasses.replace(config, **params)``),
* the ``args`` of a variant's ``config.json`` and ``.run/state.json`` (:meth:`TrainConfig.to_json`,
  plus the :data:`RUN_ARGS` of the run) and reading them back (:meth:`TrainConfig.from_json`),
  which is also what ``resume`` compares.

Adding an option is one field here and its use where training reads it. A field added after
runs were saved gets ``missing=<value those runs were made with>``, so that old runs still read.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np

from ensemble_fer.errors import InputError
from ensemble_fer.labels import get_label_set
from ensemble_fer.models import networks
from ensemble_fer.models.blocks import get_block_spec, list_blocks
from ensemble_fer.models.registry import MAX_INPUT_SIZE
from ensemble_fer.features.augment import AugmentConfig

PRECISIONS = ("auto", "float32", "mixed_float16", "mixed_bfloat16")
CLASS_WEIGHTS = ("none", "balanced")
SCRATCH_OPTIMIZERS = ("adam", "sgd")
LR_SCHEDULES = ("plateau", "cosine")

MAX_EPOCHS = 100_000
MAX_BATCH_SIZE = 4096
"""Rows per training batch: beyond it a batch of crops no longer fits a GPU's memory anyway."""
MAX_SEED = 2**32 - 1
"""Largest seed: numpy's and Keras's generators take seeds in [0, 2**32 - 1]."""

RUN_ARGS = {"max_minutes": True, "features": True, "feature_store": False, "out": True, "progress": True,
            "precision_policy": False, "teacher_sha256": False}
"""Entries of a saved ``args`` that describe the run rather than the model (written by
``train.train``), each with whether ``resume`` accepts a change of it: the time budget, where
the files are and how much is printed may change; the feature store's hashes, the numeric
precision actually used and the teacher's fingerprint may not."""

CLI_KEYS = ("help", "flag", "metavar", "parse", "cli", "nested")
"""Metadata of a field that make its command-line option (``pipelines.train_variant``):
``help``; ``flag`` (default ``--name-with-dashes``); ``metavar``; ``parse``, the argparse
``type`` (default: the type of the default value); ``cli=False`` for a field without an option;
``nested``, a dataclass whose fields' options stand for this field (``augment_config``:
:class:`~ensemble_fer.features.augment.AugmentConfig`). A bool field is a switch (``--x`` when
off by default, ``--x/--no-x`` when on); a field whose check is :class:`OneOf` gets its choices."""


# ------------------------------------------------------------------------------------------
# checks: each takes (name, value, config being built) and returns the normalised value
# ------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Int:
    """An int >= ``minimum`` (and <= ``maximum``)."""

    minimum: int
    maximum: int | None = None
    note: str = ""

    @property
    def allowed(self) -> str:
        """The range, as help texts and messages state it."""
        return f">= {self.minimum}" if self.maximum is None else f"in [{self.minimum}, {self.maximum}]"

    def __call__(self, name, value, config=None) -> int:
        if (isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < self.minimum
                or (self.maximum is not None and value > self.maximum)):
            raise InputError(f"{name} must be an int {self.allowed}{self.note}; received {value!r}")
        return int(value)


@dataclass(frozen=True)
class Number:
    """A finite number in an interval (``low_open`` / ``high_open``: bound excluded); None too
    when ``optional``."""

    low: float
    high: float
    low_open: bool = False
    high_open: bool = True
    optional: bool = False

    @property
    def allowed(self) -> str:
        """The range, as help texts and messages state it."""
        return f"in {'(' if self.low_open else '['}{self.low}, {self.high}{')' if self.high_open else ']'}"

    def __call__(self, name, value, config=None) -> float | None:
        if value is None and self.optional:
            return None
        ok = isinstance(value, (int, float, np.number)) and not isinstance(value, bool) and math.isfinite(value)
        if ok:
            ok = ((value > self.low if self.low_open else value >= self.low)
                  and (value < self.high if self.high_open else value <= self.high))
        if not ok:
            raise InputError(f"{name} must be a number {self.allowed}; received {value!r}")
        return float(value)


@dataclass(frozen=True)
class OneOf:
    """One of ``choices``; None stands for ``none`` when given."""

    choices: tuple
    none: str | None = None

    def __call__(self, name, value, config=None):
        if value is None and self.none is not None:
            return self.none
        if value not in self.choices:
            raise InputError(f"{name} must be one of {self.choices}{' or None' if self.none else ''}; "
                             f"received {value!r}")
        return value


def _flag(name, value, config=None) -> bool:
    return bool(value)


def _block(name, value, config):
    if value is not None and value not in list_blocks():
        raise InputError(f"block must be one of {list_blocks()} or None; received {value!r}")
    if value is None and not config.bovw:
        raise InputError("block: a variant needs an image block, the BOVW input or both; received "
                         "block=None with bovw=False (pass a block or bovw=True / --bovw)")
    return value


def _labels(name, value, config):
    get_label_set(value)   # raises InputError naming the label set
    return value


def _weights(name, value, config):
    if value is not None and not isinstance(value, (str, os.PathLike)):
        raise InputError(f"weights must be 'default', None, 'none', a named weight set or a file path; "
                         f"received {value!r}")
    return None if value is None or str(value).lower() == "none" else str(value)


def _image_size(name, value, config):
    if config.block is None:
        if value is not None:
            raise InputError(f"image_size: only meaningful with an image block; received {value!r}")
        return None
    return get_block_spec(config.block).check_size(value, name)


def _image_size_text(text: str) -> int:
    """``--image-size`` as parsed: a whole number up to MAX_INPUT_SIZE (the block's minimum is
    checked with the block, in the config)."""
    import argparse

    try:
        value = int(text)
    except ValueError:
        value = None
    if value is None or not 1 <= value <= MAX_INPUT_SIZE:
        raise argparse.ArgumentTypeError(f"must be an int in [1, {MAX_INPUT_SIZE}] (pixels); got {text!r}")
    return value


def _finetune_from(name, value, config):
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise InputError(f"finetune_from must be None or the name of a layer of the block; received {value!r}")
    pretrained = config.block is not None and config.weights is not None and (
        config.weights != "default" or get_block_spec(config.block).default_weights is not None)
    if not pretrained:
        raise InputError(f"finetune_from: only for a pretrained block (the layers before it stay frozen); "
                         f"received {value!r} with block={config.block!r}, weights={config.weights!r}")
    if config.aux_targets is not None:
        raise InputError("finetune_from: cached fine-tuning has no auxiliary targets; leave out --aux-targets")
    return value


def _augment_config(name, value, config):
    if not config.augment:
        return None   # no augmentation: nothing to configure
    if value is None:
        return AugmentConfig()
    if isinstance(value, Mapping):   # read back from JSON
        known = {f.name for f in fields(AugmentConfig)}
        if set(value) - known:
            raise InputError(f"augment_config: unknown keys {sorted(set(value) - known)}; allowed: {sorted(known)}")
        return AugmentConfig(**value)
    if not isinstance(value, AugmentConfig):
        raise InputError(f"augment_config must be an AugmentConfig or None; received {value!r}")
    return value


def _bovw_units(name, value, config):
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) or any(
            isinstance(u, bool) or not isinstance(u, (int, np.integer)) or u < 1 for u in value):
        raise InputError(f"bovw_units must be a sequence of ints >= 1 (the dense layers of the BOVW branch); "
                         f"received {value!r}")
    return tuple(int(u) for u in value)


def _aux_targets(name, value, config):
    if value is None:
        return None
    if not isinstance(value, (str, os.PathLike)) or not str(value):
        raise InputError(f"aux_targets must be None or the path of a CSV file; received {value!r}")
    return str(Path(value).resolve())


def _teacher(name, value, config):
    if value is None:
        return None
    if not isinstance(value, (str, os.PathLike)) or not str(value):
        raise InputError(f"teacher must be None or the path of a trained model (an ensemble.json, a release "
                         f"or variant folder); received {value!r}")
    return str(Path(value).resolve())


def _teacher_views(name, value, config):
    from ensemble_fer.training.distill import VIEW_COUNTS

    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value not in VIEW_COUNTS:
        raise InputError(f"teacher_views must be one of {VIEW_COUNTS} (counts of views closed under mirroring); "
                         f"received {value!r}")
    return int(value)


def _units(text: str) -> list[int]:
    """``--bovw-units 1024,256``; the error is argparse's (raised as ArgumentTypeError)."""
    import argparse

    try:
        units = [int(u) for u in text.split(",")]
    except ValueError:
        units = []
    if not units or min(units) < 1:
        raise argparse.ArgumentTypeError(f"expected comma-separated layer sizes >= 1 such as 1024,256; got {text!r}")
    return units


def _field(default, check, help=None, *, missing=dataclasses.MISSING, resumable=False, **cli):
    metadata = {"check": check, "help": help, "resumable": resumable, **cli}
    if missing is not dataclasses.MISSING:
        metadata["missing"] = missing
    return field(default=default, metadata=metadata)


MAX_MINUTES = Number(0.0, math.inf, low_open=True, optional=True)
"""The check of a time budget (``max_minutes``, a run option rather than a field)."""


# ------------------------------------------------------------------------------------------
# the configuration
# ------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class TrainConfig:
    """Everything that makes a variant's model. Each field's help text is its ``--option``'s;
    the schedule the fields drive is described in :mod:`ensemble_fer.training.schedule`.
    Notes on the fields whose option says little or that have none:

    * ``block``: :func:`ensemble_fer.models.blocks.list_blocks`, or None for the BOVW-only
      network (then ``bovw`` must be True). ``weights``: "default" (pretrained where the block
      has weights, e.g. ``resnet50``), None / "none", a named weight set or a file; pretrained
      weights bring the frozen phase.
    * ``class_weight="balanced"``: loss weights ``n / (k * count)`` per class.
    * ``augment_config``: the ranges of the augmentation (None: ``AugmentConfig()``; always
      None without ``augment``).
    * ``weight_decay``: decoupled (AdamW-style, each step ``w -= lr * weight_decay * w``); with
      SGD momentum 0.9 it matches an L2 term of ``weight_decay / 10`` in frameworks that add the
      decay to the gradient.
    * ``lr_patience``, ``lr_factor``, ``min_lr``: ReduceLROnPlateau (``lr_schedule="plateau"``).
    * ``dropout``, ``bovw_units``, ``dense_units``: the head (:func:`ensemble_fer.models.networks.build_network`).
    * ``seed``: initialisation, dropout, data order and augmentation; the same configuration on
      the same machine gives the same model.
    * ``precision``: the saved ``model.keras`` is float32 whatever the training precision.
    * ``aux_targets``: a CSV of per-image 0/1 targets (:mod:`ensemble_fer.training.aux_targets`):
      a second, sigmoid output ``aux``; ``val_loss`` is then the weighted sum of both losses.
    * ``teacher``, ``distill_weight``: knowledge distillation (:mod:`ensemble_fer.training.distill`);
      the teacher's fingerprint is a run argument, so a resume with another teacher is refused.
    """

    block: str | None = _field(None, _block, "image block; 'none' with --bovw for the BOVW-only network")
    bovw: bool = _field(False, _flag, "add the BOVW (landmarks + HOG) input")
    labels: str = _field("fer7", _labels,
                         "label set: fer7, valence3 or a comma-separated subset such as happy,sad,neutral")
    weights: str | None = _field(
        "default", _weights, "block weights: default (pretrained where the block has them), none, or a file path")
    image_size: int | None = _field(None, _image_size, "side the 48 px crops are resized to (default: the block's; "
                                    f"at most {MAX_INPUT_SIZE})", parse=_image_size_text)
    epochs_frozen: int = _field(
        5, Int(0), "epochs with the pretrained block frozen (Adam); skipped without pretrained weights")
    epochs: int = _field(50, Int(1, MAX_EPOCHS), "most epochs of the fine-tuning / from-scratch phase", resumable=True)
    batch_size: int = _field(64, Int(1, MAX_BATCH_SIZE))
    lr: float = _field(1e-3, Number(0.0, 10.0, low_open=True, high_open=False),
                       "learning rate of fine-tuning (SGD Nesterov) or of training from scratch")
    frozen_lr: float = _field(1e-3, Number(0.0, 10.0, low_open=True, high_open=False),
                              "Adam learning rate of the frozen phase")
    scratch_optimizer: str = _field("adam", OneOf(SCRATCH_OPTIMIZERS),
                                    "optimiser when there are no pretrained weights (default adam)")
    class_weight: str = _field("none", OneOf(CLASS_WEIGHTS, none="none"))
    label_smoothing: float = _field(0.0, Number(0.0, 1.0))
    augment: bool = _field(True, _flag,
                           "random affine augmentation of training images with their landmarks (default on)")
    augment_config: AugmentConfig | None = _field(None, _augment_config, nested=AugmentConfig)
    mixup: float = _field(0.0, Number(0.0, math.inf),
                          "blend each training row with another (images, BOVW and labels alike) by a "
                          "Beta(ALPHA, ALPHA) weight; 0 (default) is off, 0.2 is usual", metavar="ALPHA",
                          missing=0.0)
    weight_decay: float = _field(0.0, Number(0.0, 1.0),
                                 "decoupled weight decay (w -= lr * wd * w each step); default 0", missing=0.0)
    patience: int = _field(10, Int(1), "early-stopping patience in epochs (val_loss)")
    lr_schedule: str = _field("plateau", OneOf(LR_SCHEDULES),
                              "plateau: drop the rate when val_loss stalls (the paper's); cosine: decay it to ~0 "
                              "over --epochs (best for a fixed time budget) and keep the last epoch when the "
                              "schedule runs to its end", missing="plateau")
    lr_patience: int = _field(4, Int(1), "epochs without val_loss gain before the rate drops")
    lr_factor: float = _field(0.5, Number(0.0, 1.0, low_open=True), "factor of each learning-rate drop")
    min_lr: float = _field(1e-6, Number(0.0, 10.0, high_open=False), cli=False)
    dropout: float = _field(0.5, Number(0.0, 1.0))
    bovw_units: tuple[int, ...] = _field(
        networks.BOVW_UNITS, _bovw_units,
        f"dense layer sizes of the BOVW branch (default {','.join(map(str, networks.BOVW_UNITS))})",
        metavar="N,N", parse=_units)
    dense_units: int = _field(networks.DENSE_UNITS, Int(0), cli=False)
    seed: int = _field(0, Int(0, MAX_SEED, note=" (2**32 - 1)"))
    precision: str = _field("auto", OneOf(PRECISIONS),
                            "auto (default): mixed_float16 on a GPU; on the CPU mixed_bfloat16 where it has "
                            "native bfloat16 (avx512_bf16 / amx_bf16), else float32")
    aux_targets: str | None = _field(None, _aux_targets,
                                     "per-image 0/1 targets (image,<target>,...; e.g. action units): adds a "
                                     "multi-label sigmoid output 'aux' beside the emotion softmax",
                                     metavar="CSV", parse=Path, missing=None)
    aux_loss_weight: float = _field(1.0, Number(0.0, math.inf, low_open=True),
                                    "weight of the auxiliary binary cross-entropy (the emotion loss has 1; "
                                    "default 1)", missing=1.0)
    teacher: str | None = _field(None, _teacher,
                                 "knowledge distillation: a trained model (ensemble.json, release or variant "
                                 "folder) whose probabilities on the training crops join the labels as soft "
                                 "targets", metavar="MODEL", parse=Path, missing=None)
    distill_weight: float = _field(0.7, Number(0.0, 1.0, high_open=False),
                                   "share of the teacher's probabilities in each training target "
                                   "(1 - it for the one-hot label); only with --teacher", missing=0.7)
    teacher_views: int = _field(1, _teacher_views,
                                "fixed views of each training crop the teacher predicts: 1 (default) the crop as "
                                "stored; 2, 6, 8 or 10 adds its mirror, small rotations and zooms, and each "
                                "epoch a row is drawn one view, augmented from there, with that view's target",
                                metavar="K", missing=1)
    distill_temperature: float = _field(1.0, Number(0.0, 100.0, low_open=True, high_open=False),
                                        "temperature T of the teacher's soft targets (p ** (1/T), "
                                        "renormalised; default 1)", metavar="T", missing=1.0)

    finetune_from: str | None = _field(
        None, _finetune_from,
        "fine-tune the pretrained block from this layer on (e.g. conv_dw_12): the layers before it stay frozen and "
        "their output is computed once per crop and cached view (default: the whole block, no cache)",
        metavar="LAYER", missing=None)
    cached_views: int = _field(
        2, Int(1, 10), "fixed views of each training crop cached for the frozen phase (and --finetune-from): "
        "1 the crop, 2 and its mirror, up to 10 with small rotations and zooms (default 2)", missing=2)

    def __post_init__(self):
        # In field order: a check may read the fields before it (image_size reads block).
        for f in fields(self):
            object.__setattr__(self, f.name, f.metadata["check"](f.name, getattr(self, f.name), self))
        if self.teacher is None and (self.teacher_views != 1 or self.distill_temperature != 1.0):
            raise InputError(f"teacher_views ({self.teacher_views}) and distill_temperature "
                             f"({self.distill_temperature}) need a teacher (--teacher)")
        if self.teacher_views > 1 and self.cached_views > self.teacher_views:
            # A cached phase draws among cached_views views; each needs the teacher's target.
            raise InputError(f"cached_views ({self.cached_views}) must be <= teacher_views ({self.teacher_views}): "
                             f"each cached view takes the teacher's target of the same view")

    def to_json(self) -> dict:
        """The fields as JSON values (the ``args`` of ``config.json`` without the run's)."""
        out = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if dataclasses.is_dataclass(value):
                value = dataclasses.asdict(value)
            elif isinstance(value, tuple):
                value = list(value)
            out[f.name] = value
        return out

    @classmethod
    def from_arguments(cls, **kwargs) -> TrainConfig:
        """The configuration of ``train_variant`` keyword arguments, checked without training:
        fields not given take their defaults; ``InputError`` names an unknown argument (with
        the allowed ones) or the first bad value."""
        allowed = [f.name for f in fields(cls)]
        unknown = sorted(set(kwargs) - set(allowed))
        if unknown:
            raise InputError(f"{unknown[0]}: not an argument of train_variant; allowed: {sorted(allowed)}")
        return cls(**kwargs)

    @classmethod
    def from_json(cls, saved: Mapping, where: str = "args") -> TrainConfig:
        """Read back saved ``args`` (``config.json`` or ``.run/state.json``).

        :data:`RUN_ARGS` entries are the run's and are left out; a field missing from a run
        saved before it existed takes its ``missing`` value; any other missing or unknown key
        is refused (``InputError`` naming ``where``)."""
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(saved) - names - set(RUN_ARGS))
        if unknown:
            raise InputError(f"{where}: unknown training arguments {unknown}; saved by a newer version?")
        values = {}
        for f in fields(cls):
            if f.name in saved:
                values[f.name] = saved[f.name]
            elif "missing" in f.metadata:
                values[f.name] = f.metadata["missing"]
            else:
                raise InputError(f"{where}: no {f.name!r}; not the arguments of a training run")
        return cls(**values)


FIELDS = tuple(f.name for f in fields(TrainConfig))


def resumable(name: str) -> bool:
    """Whether ``resume`` accepts a change of saved ``args[name]``."""
    if name in RUN_ARGS:
        return RUN_ARGS[name]
    return TrainConfig.__dataclass_fields__[name].metadata["resumable"]
