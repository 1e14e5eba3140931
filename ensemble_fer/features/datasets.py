"""Dataset readers: the FER2013 challenge CSV, the FER2013 folder release, any class-folder set.

Each reader turns a dataset into :class:`ImageRecord` lists per split (``train``, ``val``,
``test``) with canonical label codes (see :mod:`ensemble_fer.labels`). Images are decoded by
:func:`load_image`, which always returns a 48x48 uint8 grayscale face crop.

Every problem with the input is a :class:`DatasetError` whose message starts with the file
(and row) it is about, so that a CLI can print it as one line. A folder or file that cannot be
read is such an error, never a silent omission; only files that are not images by their
suffix (``Thumbs.db``, ``README.txt``) are left out, and counted in ``Dataset.skipped_files``.
"""

from __future__ import annotations

import csv
import hashlib
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ensemble_fer import labels as L
from ensemble_fer.errors import DatasetError, InputError, MissingDatasetError
from ensemble_fer.features.image_io import read_image_file, to_gray

IMAGE_SIZE = 48
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".bmp", ".tif", ".tiff", ".gif", ".webp", ".pgm",
                  ".ppm", ".pbm", ".pnm"}
"""Files in class folders with another suffix (``Thumbs.db``, ``README.txt``, ``.csv``) are not
images: they are skipped and counted, not decoded."""
FORMATS = ("auto", "fer2013-csv", "fer2013-folders", "folders")
SPLITS = ("train", "val", "test")

# FER2013 challenge "Usage" column -> our split names.
_CSV_USAGE = {"training": "train", "publictest": "val", "privatetest": "test"}
# Folder names that hold a split in the folder layouts.
_SPLIT_FOLDERS = {"train": "train", "training": "train", "val": "val", "valid": "val",
                  "validation": "val", "publictest": "val", "test": "test", "privatetest": "test"}
# In the FER2013 folder release test/ mixes PublicTest_* (our val) and PrivateTest_* (our test).
_FER_PREFIX = re.compile(r"^(Training|PublicTest|PrivateTest)_", re.IGNORECASE)


@dataclass(frozen=True)
class ImageRecord:
    """One labelled image: a file, or a row of pixels from a CSV."""

    id: str
    label: int
    split: str
    path: Path | None = None
    pixels: np.ndarray | None = field(default=None, compare=False, repr=False)


@dataclass
class Dataset:
    name: str
    root: Path
    format: str
    splits: dict[str, list[ImageRecord]]
    ignored_labels: dict[str, int] = field(default_factory=dict)
    """Label folders left out with ``ignore_unknown_labels``, with their file counts."""
    skipped_files: list[str] = field(default_factory=list)
    """Files inside class folders that are not images by their suffix, relative to ``root``."""
    aliased_labels: dict[str, str] = field(default_factory=dict)
    """Label folders named by an alias (``joy``), with the emotion they are read as (``happy``)."""

    def counts(self) -> dict[str, dict[str, int]]:
        out = {}
        for split, records in self.splits.items():
            codes = np.bincount([r.label for r in records], minlength=len(L.ALL_CODES))
            out[split] = {name: int(codes[code]) for name, code in L.ALL_CODES.items() if codes[code]}
        return out


def open_dataset(path, format: str = "auto", ignore_unknown_labels: bool = False) -> Dataset:
    """Read a dataset's index (labels, splits, where each image is) without decoding images."""
    path = Path(path)
    if format not in FORMATS:
        raise InputError(f"format must be one of {FORMATS}; got {format!r}")
    if not path.exists():
        raise MissingDatasetError(f"{path}: no such file or folder")
    if format == "auto":
        format = detect_format(path)
    if format == "fer2013-csv":
        dataset = _read_csv(path)
    else:
        dataset = _read_folders(path, format, ignore_unknown_labels)
    if not any(dataset.splits.values()):
        raise DatasetError(f"{path}: the dataset holds no images")
    return dataset


def detect_format(path: Path) -> str:
    """``fer2013-csv`` for a CSV file, ``fer2013-folders`` when files are named like the FER2013
    release (``Training_*``, ``PublicTest_*``), else ``folders``."""
    if path.is_file():
        if path.suffix.lower() == ".csv":
            return "fer2013-csv"
        raise DatasetError(f"{path}: a file must be a FER2013-style .csv; give a folder for images")
    for child in list_folder(path):
        if child.is_dir() and child.name.lower() in _SPLIT_FOLDERS:
            for sub in list_folder(child):
                if sub.is_dir() and any(_FER_PREFIX.match(f.name) for f in list_folder(sub)):
                    return "fer2013-folders"
    return "folders"


def list_folder(folder: Path) -> list[Path]:
    """The entries of ``folder``, sorted; DatasetError when it cannot be listed.

    ``Path.iterdir`` raises a bare PermissionError (a traceback), and ``Path.rglob`` silently
    skips a folder it cannot list, which dropped a whole class without a word: every folder
    of a dataset is listed here instead.
    """
    try:
        with os.scandir(folder) as entries:
            return sorted(Path(entry.path) for entry in entries)
    except FileNotFoundError:
        raise DatasetError(f"{folder}: folder not found (removed while reading the dataset?)") from None
    except NotADirectoryError:
        raise DatasetError(f"{folder}: expected a folder, found a file") from None
    except OSError as exc:
        raise DatasetError(f"{folder}: cannot list this folder ({exc.strerror}); check its permissions") from None


def _files_under(folder: Path) -> list[Path]:
    """Every non-hidden file below ``folder`` (recursively, sorted); unreadable folders raise."""
    files = []
    for entry in list_folder(folder):
        if entry.name.startswith("."):
            continue
        if entry.is_dir():
            files.extend(_files_under(entry))
        else:
            files.append(entry)
    return files


def record_fingerprint(records) -> str:
    """A hex digest that changes when any record's label, id or content changes.

    Files are keyed on id, label, size and modification time (``st_mtime_ns``): replacing
    every picture of a folder under the same names changes it, without reading the images.
    CSV rows are keyed on their pixels (already in memory). Caches of anything computed from
    the records (features, predictions) should key on this rather than on names and labels.
    """
    digest = hashlib.sha256()
    for record in records:
        if record.pixels is not None:
            content = hashlib.sha256(np.ascontiguousarray(record.pixels).tobytes()).hexdigest()
        else:
            try:
                st = os.stat(record.path)
            except OSError as exc:
                raise DatasetError(f"{record.path}: cannot be read ({exc.strerror})") from None
            content = f"{st.st_size}:{st.st_mtime_ns}"
        digest.update(f"{record.split}\t{record.id}\t{record.label}\t{content}\n".encode())
    return digest.hexdigest()


# --------------------------------------------------------------------------- CSV
def _read_csv(path: Path) -> Dataset:
    splits: dict[str, list[ImageRecord]] = {}
    try:
        with open(path, "rb") as raw:
            head = raw.read(4096)
    except OSError as exc:
        raise DatasetError(f"{path}: cannot be opened ({exc.strerror})") from None
    if head.startswith((b"\xff\xfe", b"\xfe\xff")) or b"\x00" in head:
        # UTF-16/32 (Excel's "Unicode text", PowerShell's default), with or without a BOM:
        # decoded as UTF-8 it would read as columns no one can see are wrong.
        kind = "UTF-16 or UTF-32 (it starts with that byte-order mark)" if head.startswith(
            (b"\xff\xfe", b"\xfe\xff")) else "UTF-16 or UTF-32, or binary (it holds NUL bytes)"
        raise DatasetError(f"{path}: the CSV is encoded as {kind}; save it as UTF-8 (or ASCII) text")
    # utf-8-sig: a UTF-8 byte-order mark (Excel's "CSV UTF-8") is accepted and dropped; read
    # as plain UTF-8 it glues itself to the first column's name.
    with open(path, newline="", encoding="utf-8-sig") as handle:
        try:
            return _read_csv_rows(path, handle, splits)
        except UnicodeDecodeError as exc:
            raise DatasetError(f"{path}: not UTF-8 text (found byte 0x{exc.object[exc.start]:02x}, {exc.reason}); "
                               f"save the CSV as UTF-8") from None


def _read_csv_rows(path: Path, handle, splits: dict) -> Dataset:
    reader = csv.DictReader(handle)
    columns = [c.strip() for c in (reader.fieldnames or [])]
    missing = [c for c in ("emotion", "pixels") if c not in columns]
    if missing:
        raise DatasetError(f"{path}: missing column(s) {missing}; expected emotion,pixels[,Usage], "
                           f"found {columns}")
    reader.fieldnames = columns
    has_usage = "Usage" in columns
    for line, row in enumerate(reader, start=2):
        where = f"{path}:{line}"
        try:
            code = int(row["emotion"])
        except (TypeError, ValueError):
            raise DatasetError(f"{where}: emotion {row['emotion']!r} is not an integer code") from None
        if not 0 <= code < len(L.EMOTIONS):
            raise DatasetError(f"{where}: emotion code {code} is not one of 0..{len(L.EMOTIONS) - 1}")
        pixels = _parse_pixels(row["pixels"], where)
        split = "train"
        if has_usage:
            usage = (row["Usage"] or "").strip()
            split = _CSV_USAGE.get(usage.lower())
            if split is None:
                raise DatasetError(f"{where}: Usage {usage!r} is not Training, PublicTest or PrivateTest")
        splits.setdefault(split, []).append(
            ImageRecord(id=f"row{line - 2}", label=code, split=split, pixels=pixels))
    return Dataset(name=path.stem, root=path, format="fer2013-csv", splits=splits)


def _parse_pixels(text, where: str) -> np.ndarray:
    parts = (text or "").split()
    if len(parts) != IMAGE_SIZE * IMAGE_SIZE:
        raise DatasetError(f"{where}: pixels holds {len(parts)} values, expected {IMAGE_SIZE * IMAGE_SIZE}")
    try:
        values = np.array([int(p) for p in parts], dtype=np.int64)
    except ValueError:
        raise DatasetError(f"{where}: pixels holds a value that is not an integer") from None
    if values.min() < 0 or values.max() > 255:
        raise DatasetError(f"{where}: pixel values must be in 0..255, found {values.min()}..{values.max()}")
    return values.astype(np.uint8)


# --------------------------------------------------------------------------- folders
def _read_folders(path: Path, format: str, ignore_unknown: bool) -> Dataset:
    if not path.is_dir():
        raise DatasetError(f"{path}: expected a folder for format {format}")
    split_dirs = {c: _SPLIT_FOLDERS[c.name.lower()] for c in list_folder(path)
                  if c.is_dir() and c.name.lower() in _SPLIT_FOLDERS}
    if format == "fer2013-folders" and not split_dirs:
        raise DatasetError(f"{path}: a FER2013 folder release needs train/ and test/ (or val/) folders")
    dataset = Dataset(name=path.name, root=path, format=format, splits={})
    if split_dirs:
        for folder, split in split_dirs.items():
            _read_class_folders(folder, split, dataset, ignore_unknown)
    else:
        # A bare class-folder set (e.g. CK+): everything is training data; the feature store
        # holds out a stratified validation split.
        _read_class_folders(path, "train", dataset, ignore_unknown)
    return dataset


def _read_class_folders(folder: Path, split: str, dataset: Dataset, ignore_unknown: bool) -> None:
    class_dirs = [c for c in list_folder(folder) if c.is_dir() and not c.name.startswith(".")]
    if not class_dirs:
        raise DatasetError(f"{folder}: no class folders (expected one folder per emotion)")
    for class_dir in class_dirs:
        try:
            code = L.code_for_name(class_dir.name)
            canonical = {c: name for name, c in L.ALL_CODES.items()}[code]
            if class_dir.name.strip().lower() != canonical:
                dataset.aliased_labels[class_dir.name] = canonical
        except KeyError:
            if not ignore_unknown:
                raise DatasetError(
                    f"{class_dir}: unknown label folder {class_dir.name!r}; known: {sorted(L.ALL_CODES)} "
                    f"and aliases (pass --ignore-unknown-labels to leave it out)") from None
            dataset.ignored_labels[name_text(class_dir.relative_to(dataset.root))] = len(_files_under(class_dir))
            continue
        for file in _files_under(class_dir):
            if file.suffix.lower() not in IMAGE_SUFFIXES:
                dataset.skipped_files.append(name_text(file.relative_to(dataset.root)))
                continue
            file_split = split
            if dataset.format == "fer2013-folders":
                match = _FER_PREFIX.match(file.name)
                if match:
                    file_split = _CSV_USAGE[match.group(1).lower()]
            dataset.splits.setdefault(file_split, []).append(ImageRecord(
                id=name_text(file.relative_to(dataset.root)), label=code, split=file_split, path=file))


# --------------------------------------------------------------------------- images
def load_image(record: ImageRecord, crop_faces: bool = False) -> np.ndarray:
    """The record's image as 48x48 uint8 grayscale.

    CSV rows are reshaped. Files are decoded (any format OpenCV/Pillow reads); a file that is
    not 48x48 is cropped to its largest detected face when ``crop_faces`` (class-folder sets
    such as CK+ hold whole frames; :mod:`ensemble_fer.features.faces` finds and crops it as
    prediction does) and otherwise, or when no face is found, centre-cropped to a square and
    resized.
    """
    if record.pixels is not None:
        return record.pixels.reshape(IMAGE_SIZE, IMAGE_SIZE)
    gray = to_gray(read_image_file(record.path))
    if crop_faces:
        from ensemble_fer.features import faces  # dlib: loaded only for a set that needs face crops

        found = faces.picture_faces(gray, detector="hog")
        if found:
            return faces.crop_face(gray, found[0][0])
    return gray if gray.shape == (IMAGE_SIZE, IMAGE_SIZE) else _centre_square(gray)


def name_text(path) -> str:
    """A file name as text that can be written anywhere (CSV, JSON, arrays, a terminal): bytes
    of the name that are not UTF-8 (a Latin-1 ``caf\\xe9.jpg``) are escaped as ``\\xe9``
    instead of failing every write with UnicodeEncodeError. Valid names are unchanged."""
    return os.fspath(path).encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def _centre_square(gray: np.ndarray) -> np.ndarray:
    import cv2

    h, w = gray.shape
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    square = gray[top:top + side, left:left + side]
    return cv2.resize(square, (IMAGE_SIZE, IMAGE_SIZE), interpolation=cv2.INTER_AREA)
