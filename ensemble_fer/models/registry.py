"""The registry of image blocks: one :class:`BlockSpec` per name.

A block is a convolutional feature extractor, the image branch of the two-input network. Each
architecture family module registers its blocks with the :func:`register_block` decorator::

    @register_block("cnn5", default_size=48, min_size=32, channels=1, description="...",
                    preprocessing=symmetric_preprocessing)
    def cnn5(inputs, name):          # inputs: (size, size, channels) float32, preprocessed
        return conv_stack(...)       # the last 4-D feature map, never pooled

:func:`ensemble_fer.models.blocks` imports every family module (and so fills this table, and
registers with Keras the custom layers that saved models name), lists the blocks and builds
them. This module imports no family: a family imports :func:`register_block` from here, and a
registry that imported its families back would make each pair a cycle.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

from ensemble_fer.errors import InputError

MAX_INPUT_SIZE = 512
"""Largest side a block's input may be resized to (the crops are 48 px): memory grows with its square."""

Builder = Callable  # builder(inputs: KerasTensor, name: str) -> 4-D KerasTensor


@dataclasses.dataclass(frozen=True)
class BlockSpec:
    """Everything the network and the training script need to know about one block."""

    name: str
    default_size: int
    min_size: int
    channels: int                      # 1 (grayscale) or 3 (RGB)
    description: str
    builder: Builder                   # builder(inputs, name) -> 4-D output tensor
    preprocessing_fn: Callable[[str], list]
    default_weights: str | None = None
    weights_files: tuple = ()          # of ensemble_fer.models.weights.WeightsFile
    pretrained: bool = False           # has a pretrained default worth a frozen phase
    legacy_h5_by_name: bool = True     # legacy Keras 2 .h5 files: by layer name or topological

    def __post_init__(self):
        # A bad registration is a programming error: ValueError, not InputError.
        if self.channels not in (1, 3):
            raise ValueError(f"channels: must be 1 or 3; received {self.channels!r}")
        if not 1 <= self.min_size <= self.default_size:
            raise ValueError(f"min_size: must be in [1, default_size={self.default_size}]; "
                             f"received {self.min_size!r}")
        if self.default_weights is not None and self.default_weights not in self.allowed_weights:
            raise ValueError(f"default_weights: must be None or one of "
                             f"{list(self.allowed_weights)}; received {self.default_weights!r}")

    @property
    def allowed_weights(self) -> tuple[str, ...]:
        return tuple(w.name for w in self.weights_files)

    def weights_file(self, name: str):
        """The :class:`~ensemble_fer.models.weights.WeightsFile` named ``name``."""
        for w in self.weights_files:
            if w.name == name:
                return w
        raise InputError(f"weights: block {self.name!r} has named weights "
                         f"{list(self.allowed_weights)}; received {name!r}")

    def check_size(self, size, argument: str = "image_size") -> int:
        """``size`` (None: the default) checked against ``min_size``; ``argument`` names it."""
        if size is None:
            return self.default_size
        if isinstance(size, bool) or not hasattr(size, "__index__"):
            raise InputError(f"{argument}: must be None or an int >= {self.min_size} for block "
                             f"{self.name!r}; received {size!r}")
        if size < self.min_size:
            raise InputError(f"{argument}: block {self.name!r} needs images of at least "
                             f"{self.min_size} px (default {self.default_size}); received {size}")
        if size > MAX_INPUT_SIZE:
            raise InputError(f"{argument}: must be at most {MAX_INPUT_SIZE} px (the crops are 48 px; larger only "
                             f"multiplies memory and time); received {size}")
        return int(size)

    def input_shape(self, image_size: int | None = None) -> tuple[int, int, int]:
        size = self.default_size if image_size is None else image_size
        return (size, size, self.channels)

    def preprocessing(self) -> list:
        """Fresh preprocessing layers: float32 pixels in [0, 255], shape ``input_shape()``."""
        return list(self.preprocessing_fn(self.name))


_REGISTRY: dict[str, BlockSpec] = {}


def register_block(name: str, *, default_size: int, min_size: int, channels: int,
                   description: str, preprocessing: Callable[[str], list],
                   default_weights: str | None = None,
                   weights_files: Sequence = (), pretrained: bool = False,
                   legacy_h5_by_name: bool = True):
    """Decorator registering ``builder(inputs, name) -> 4-D tensor`` as block ``name``."""
    if name in _REGISTRY:
        raise ValueError(f"name: a block named {name!r} is already registered")

    # Checked here, when the decorator is made, so a bad spec fails before its builder is defined.
    spec = BlockSpec(name=name, default_size=default_size, min_size=min_size, channels=channels,
                     description=description, builder=None, preprocessing_fn=preprocessing,
                     default_weights=default_weights, weights_files=tuple(weights_files),
                     pretrained=pretrained, legacy_h5_by_name=legacy_h5_by_name)

    def decorator(builder: Builder) -> Builder:
        _REGISTRY[name] = dataclasses.replace(spec, builder=builder)
        return builder

    return decorator


def registered_blocks() -> dict[str, BlockSpec]:
    """Every block registered so far, by name, in registration order (a copy): the table that
    :func:`ensemble_fer.models.blocks.list_blocks` reads once the families are imported."""
    return dict(_REGISTRY)
