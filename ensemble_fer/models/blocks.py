"""Image blocks: find them (:func:`list_blocks`, :func:`get_block_spec`) and build them
(:func:`create_block`, the factory).

A *block* is the image branch of the two-input network; ``networks.py`` feeds it like this::

    uint8 (48, 48, 1) -> float32 -> resize to (size, size) -> gray to RGB if spec.channels == 3
        -> *spec.preprocessing() -> block = create_block(name, weights, size)
        -> GlobalAveragePooling2D (every block outputs a 4-D feature map)

Where things are: the registry and :class:`BlockSpec` in :mod:`~ensemble_fer.models.registry`;
``weights=`` and the downloads in :mod:`~ensemble_fer.models.weights`; Keras 2 ``.h5`` files in
:mod:`~ensemble_fer.models.legacy_h5`; the input scaling layers in
:mod:`~ensemble_fer.models.preprocessing`; the architectures, one family per module, in
:mod:`~ensemble_fer.models.vggface` (``resnet50``), :mod:`~ensemble_fer.models.applications`
(``inception_resnet_v2``, ``vgg16``, ``resnet50v2``, ``efficientnetv2b2``), the trunks ported from
other frameworks :mod:`~ensemble_fer.models.faceres` (``faceres_mobilenet``),
:mod:`~ensemble_fer.models.efficientnet_lite` (``efficientnet_lite0``) and
:mod:`~ensemble_fer.models.squeezenet` (``squeezenet11``), and
:mod:`~ensemble_fer.models.compact` (``cnn5``, ``complex_cnn``, ``se_resnet``, ``vgg_fast``).
"""

from __future__ import annotations

import contextlib
import os

import keras

from ensemble_fer.errors import InputError
# The architecture family modules, imported here and nowhere else in the library: each registers
# its blocks (and its custom Keras layers) when imported, so whoever lists or builds blocks
# through this module sees them all.
# In FAMILIES order, so that this is also the order they register in (the offline note of weights.py).
from ensemble_fer.models import vggface, applications, faceres, efficientnet_lite, squeezenet, compact  # noqa: F401,I001
from ensemble_fer.models.registry import BlockSpec, registered_blocks
from ensemble_fer.models.weights import (WeightsFile, check_weights_file, load_weights_file,
                                         resolve_weights)

FAMILIES = ("vggface", "applications", "faceres", "efficientnet_lite", "squeezenet", "compact")
"""The family modules in the order :func:`list_blocks` gives their blocks."""


def list_blocks() -> list[str]:
    """Names of the registered blocks: family by family in :data:`FAMILIES` order (then blocks
    registered elsewhere), each family's in registration order, whichever was imported first."""
    table = registered_blocks()

    def family(name: str) -> int:
        module = table[name].builder.__module__.rpartition(".")[2]
        return FAMILIES.index(module) if module in FAMILIES else len(FAMILIES)

    return sorted(table, key=family)


def get_block_spec(name: str) -> BlockSpec:
    try:
        return registered_blocks()[name]
    except (KeyError, TypeError):
        raise InputError(f"name: unknown block; valid blocks are {list_blocks()}; "
                         f"received {name!r}") from None


def create_block(name: str, weights: str | os.PathLike | None = "default",
                 image_size: int | None = None) -> keras.Model:
    """Build block ``name`` for inputs ``(image_size, image_size, spec.channels)``.

    ``weights``: ``"default"`` (the spec's default), ``None``/``"none"`` (random init), one of
    ``spec.allowed_weights``, or the path of an existing weight file. ``image_size`` defaults to
    ``spec.default_size`` and must be at least ``spec.min_size``. ``weights`` is checked first,
    then ``image_size``, then named weights are fetched, all before the model is built.

    Returns a ``keras.Model`` named ``name``, input float32 already preprocessed by
    ``spec.preprocessing()`` (outside the block, so the network can resize and go gray -> RGB
    before it), output the last 4-D feature map, never pooled. Call it as a layer
    (``block(x)``): it stays a nested model whose layer names live in their own namespace.
    """
    spec = get_block_spec(name)
    source = resolve_weights(spec, weights)     # None, a WeightsFile to fetch, or a user's file
    size = spec.check_size(image_size)
    if isinstance(source, WeightsFile):
        source = check_weights_file(source.fetch(spec.name))

    with _fresh_auto_names():
        inputs = keras.Input(shape=spec.input_shape(size), dtype="float32",
                             name=f"{spec.name}_input")
        model = keras.Model(inputs, spec.builder(inputs, spec.name), name=spec.name)

    if source is not None:
        load_weights_file(model, source, by_name=spec.legacy_h5_by_name)
    return model


@contextlib.contextmanager
def _fresh_auto_names():
    """Give auto-named layers the names of a fresh Keras session, whatever was built before.

    Only layers we do not name ourselves (inside keras.applications models) are concerned: with
    fresh names, a keras.applications block has the same layer names in every process. Uses
    Keras' private uid table; if that moves, names are merely less predictable.
    """
    try:
        from keras.src.backend.common import global_state
    except ImportError:  # pragma: no cover - depends on the Keras version
        yield
        return
    saved = global_state.get_global_attribute("object_name_uids")
    global_state.set_global_attribute("object_name_uids", None)
    try:
        yield
    finally:
        global_state.set_global_attribute("object_name_uids", saved)
