"""Reading a PyTorch state dict (``.pth``) into numpy arrays without executing pickled code.

A ``.pth`` is a pickle, and a pickle can call any importable function while it loads
(``os.system`` included): a plain ``pickle.load`` or an unguarded ``torch.load`` of a file from
elsewhere runs whatever it says. :func:`read_state_dict` unpickles with an unpickler whose
``find_class`` admits only what a state dict needs, each mapped to a function of this module
(torch is never imported):

* ``collections.OrderedDict`` (the state dict itself, and the empty backward-hooks dict);
* ``torch._utils._rebuild_tensor_v2`` (a tensor: storage, offset, shape, strides);
* ``torch.<Type>Storage`` (the element type of a storage; see :data:`STORAGE_DTYPES`).

Anything else (``os.system``, ``builtins.eval``, ...) stops the read with an
:class:`~ensemble_fer.errors.InputError` before it is called. The storages' bytes are read with
numpy, never unpickled. Both formats ``torch.save`` has written are read:

* the legacy one (torch < 1.6; the EfficientNet-Lite0 file): five pickles in a row (magic number,
  protocol 1001, system info, the object, its storage keys), then each storage as an int64
  element count followed by its raw little-endian bytes;
* the zip one (torch >= 1.6): ``<archive>/data.pkl`` and one ``<archive>/data/<key>`` entry
  per storage.
"""

from __future__ import annotations

import collections
import dataclasses
import io
import pickle
import struct
import zipfile
from pathlib import Path

import numpy as np

from ensemble_fer.errors import InputError

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL = 1001

#: The storage types a state dict may name (``torch.<name>``) and their little-endian dtypes.
STORAGE_DTYPES = {"FloatStorage": "<f4", "DoubleStorage": "<f8", "HalfStorage": "<f2",
                  "LongStorage": "<i8", "IntStorage": "<i4", "ShortStorage": "<i2",
                  "CharStorage": "i1", "ByteStorage": "u1", "BoolStorage": "?"}


class _RefusedGlobal(Exception):
    """The pickle asked for a global outside the allowed few."""


@dataclasses.dataclass(frozen=True)
class _StorageType:
    name: str

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(STORAGE_DTYPES[self.name])


@dataclasses.dataclass
class _Storage:
    """A storage named by the pickle; its elements arrive later (legacy) or from the zip."""

    key: str
    dtype: np.dtype
    numel: int
    data: np.ndarray | None = None
    view_of: "_Storage | None" = None
    view_offset: int = 0

    def elements(self) -> np.ndarray:
        if self.view_of is not None:
            return self.view_of.elements()[self.view_offset:self.view_offset + self.numel]
        if self.data is None:
            raise ValueError(f"storage {self.key!r} has no data")
        return self.data


@dataclasses.dataclass(frozen=True)
class _PendingTensor:
    """``_rebuild_tensor_v2``'s arguments, made into an array once the storages are read."""

    storage: _Storage
    offset: int
    shape: tuple
    strides: tuple

    def array(self) -> np.ndarray:
        elements = self.storage.elements()
        shape, strides = tuple(int(s) for s in self.shape), tuple(int(s) for s in self.strides)
        if len(shape) != len(strides) or any(s < 0 for s in shape + strides) or self.offset < 0:
            raise ValueError(f"a tensor has shape {shape} and strides {strides}")
        if 0 in shape:
            return np.zeros(shape, elements.dtype)
        last = self.offset + sum((n - 1) * st for n, st in zip(shape, strides))
        if last >= len(elements):
            raise ValueError(f"a tensor of shape {shape} reaches element {last} of a storage of {len(elements)}")
        view = np.lib.stride_tricks.as_strided(elements[self.offset:], shape=shape,
                                               strides=tuple(st * elements.itemsize for st in strides),
                                               writeable=False)
        return np.array(view)   # a copy: contiguous, independent of the file's buffer


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None,
                       metadata=None):
    if not isinstance(storage, _Storage):
        raise ValueError("a tensor's storage is not a storage record")
    return _PendingTensor(storage, int(storage_offset), tuple(size), tuple(stride))


class _StateDictUnpickler(pickle.Unpickler):
    """Admits only the state-dict globals; storages come from ``storages`` (key -> _Storage)."""

    def __init__(self, file, storages: dict[str, _Storage]):
        super().__init__(file)
        self.storages = storages

    def find_class(self, module, name):
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return _rebuild_tensor_v2
        if module == "torch" and name in STORAGE_DTYPES:
            return _StorageType(name)
        raise _RefusedGlobal(f"{module}.{name}")

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage"
                and isinstance(pid[1], _StorageType)):
            raise ValueError(f"unexpected persistent id {str(pid)[:80]}")
        storage_type, key, numel = pid[1], str(pid[2]), int(pid[4])   # pid[3]: the device ("cpu"), unused
        view = pid[5] if len(pid) > 5 else None
        root = self.storages.get(key)
        if root is None:
            root = self.storages[key] = _Storage(key, storage_type.dtype, numel)
        if view is None:
            return root
        view_key, view_offset, view_size = view
        return _Storage(str(view_key), storage_type.dtype, int(view_size), view_of=root, view_offset=int(view_offset))


def _unpickle(data: bytes | io.BytesIO, storages: dict[str, _Storage]):
    stream = data if isinstance(data, io.BytesIO) else io.BytesIO(data)
    return _StateDictUnpickler(stream, storages).load()


def _read_legacy(blob: bytes, storages: dict[str, _Storage]):
    stream = io.BytesIO(blob)
    magic = _unpickle(stream, storages)
    if magic != LEGACY_MAGIC:
        raise ValueError("it is neither a zip archive nor a legacy torch.save file (no magic number)")
    protocol = _unpickle(stream, storages)
    if protocol != LEGACY_PROTOCOL:
        raise ValueError(f"legacy protocol {protocol!r}, not {LEGACY_PROTOCOL}")
    sys_info = _unpickle(stream, storages)
    if not isinstance(sys_info, dict) or sys_info.get("little_endian") is not True:
        raise ValueError("it was written on a big-endian machine or has no system info")
    result = _unpickle(stream, storages)
    keys = _unpickle(stream, storages)
    if not isinstance(keys, list):
        raise ValueError("no list of storage keys after the object")
    for key in keys:
        storage = storages.get(str(key))
        if storage is None:
            raise ValueError(f"storage {key!r} is listed but no tensor uses it")
        header = stream.read(8)
        if len(header) != 8:
            raise ValueError(f"the file ends before storage {key!r}")
        (numel,) = struct.unpack("<q", header)
        if numel != storage.numel:
            raise ValueError(f"storage {key!r} holds {numel} elements, the pickle says {storage.numel}")
        nbytes = numel * storage.dtype.itemsize
        raw = stream.read(nbytes)
        if len(raw) != nbytes:
            raise ValueError(f"the file ends inside storage {key!r}")
        storage.data = np.frombuffer(raw, storage.dtype)
    return result


def _read_zip(archive: zipfile.ZipFile, storages: dict[str, _Storage]):
    pickles = [n for n in archive.namelist() if n.endswith("/data.pkl") or n == "data.pkl"]
    if len(pickles) != 1:
        raise ValueError(f"a zip archive with {len(pickles)} data.pkl entries, not 1")
    prefix = pickles[0][:-len("data.pkl")]
    if f"{prefix}byteorder" in archive.namelist():
        order = archive.read(f"{prefix}byteorder").decode(errors="replace").strip()
        if order != "little":
            raise ValueError(f"byte order {order!r}, not little")
    result = _unpickle(archive.read(pickles[0]), storages)
    for key, storage in storages.items():
        try:
            raw = archive.read(f"{prefix}data/{key}")
        except KeyError:
            raise ValueError(f"storage {key!r} is not in the archive") from None
        if len(raw) != storage.numel * storage.dtype.itemsize:
            raise ValueError(f"storage {key!r} has {len(raw)} bytes, not {storage.numel} elements")
        storage.data = np.frombuffer(raw, storage.dtype)
    return result


def read_state_dict(path) -> dict[str, np.ndarray]:
    """The tensors of the state dict in ``path`` (name -> array, in the file's order).

    Raises :class:`InputError` (one line naming the file) for a file that is not a state dict
    of plain tensors, is truncated, or whose pickle asks for any global beyond the allowed
    ones; nothing of the file is executed.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: not found")
    storages: dict[str, _Storage] = {}
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                result = _read_zip(archive, storages)
        else:
            result = _read_legacy(path.read_bytes(), storages)
        if not isinstance(result, dict):
            raise ValueError(f"it holds a {type(result).__name__}, not a state dict")
        out = {}
        for name, value in result.items():
            if not isinstance(name, str) or not isinstance(value, _PendingTensor):
                raise ValueError(f"entry {str(name)[:60]!r} is not a tensor")
            out[name] = value.array()
        return out
    except _RefusedGlobal as exc:
        raise InputError(f"{path}: refused: its pickle asks for {exc}, which a state dict of tensors never "
                         f"needs (only collections.OrderedDict, torch._utils._rebuild_tensor_v2 and "
                         f"torch.*Storage are admitted; nothing was executed)") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, KeyError, IndexError, AttributeError,
            struct.error, zipfile.BadZipFile) as exc:
        raise InputError(f"{path}: not a readable PyTorch state dict ({type(exc).__name__}: "
                         f"{str(exc).splitlines()[0] if str(exc) else 'no detail'})") from None
