"""Dataset readers: the FER2013 challenge CSV, the FER2013 folder release, any class-folder set.

Each reader turns a dataset into :class:`ImageRecord` lists per split (``train``, ``val``,
``test``) with canonical label codes (see :mod:`ensemble_fer.labels`). Images are decoded by
:func:`load_image`, which always returns a 48x48 uint8 grayscale face crop.

Every problem with the input is a :class:`DatasetError` whose message starts with the file
(and row) it is about, so that a CLI can print it as one line.
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import labels as L

IMAGE_SIZE = 48
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".gif", ".webp", ".pgm", ".ppm"}
FORMATS = ("auto", "fer2013-csv", "fer2013-folders", "folders")
SPLITS = ("train", "val", "test")

# FER2013 challenge "Usage" column -> our split names.
_CSV_USAGE = {"training": "train", "publictest": "val", "privatetest": "test"}
# Folder names that hold a split in the folder layouts.
_SPLIT_FOLDERS = {"train": "train", "training": "train", "val": "val", "valid": "val",
                  "validation": "val", "publictest": "val", "test": "test", "privatetest": "test"}
# In the FER2013 folder release test/ mixes PublicTest_* (our val) and PrivateTest_* (our test).
_FER_PREFIX = re.compile(r"^(Training|PublicTest|PrivateTest)_", re.IGNORECASE)


class DatasetError(ValueError):
    """Bad input data; the message names the file (and row) and the problem."""


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
        raise ValueError(f"format must be one of {FORMATS}; got {format!r}")
    if not path.exists():
        raise DatasetError(f"{path}: no such file or folder")
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
    for child in path.iterdir():
        if child.is_dir() and child.name.lower() in _SPLIT_FOLDERS:
            for sub in child.iterdir():
                if sub.is_dir() and any(_FER_PREFIX.match(f.name) for f in sub.iterdir()):
                    return "fer2013-folders"
    return "folders"


# --------------------------------------------------------------------------- CSV
def _read_csv(path: Path) -> Dataset:
    splits: dict[str, list[ImageRecord]] = {}
    try:
        handle = open(path, newline="")
    except OSError as exc:
        raise DatasetError(f"{path}: cannot be opened ({exc.strerror})") from None
    with handle:
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
    split_dirs = {c: _SPLIT_FOLDERS[c.name.lower()] for c in sorted(path.iterdir())
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
    class_dirs = sorted(c for c in folder.iterdir() if c.is_dir())
    if not class_dirs:
        raise DatasetError(f"{folder}: no class folders (expected one folder per emotion)")
    for class_dir in class_dirs:
        try:
            code = L.code_for_name(class_dir.name)
        except KeyError:
            files = [f for f in class_dir.rglob("*") if f.is_file()]
            if not ignore_unknown:
                raise DatasetError(
                    f"{class_dir}: unknown label folder {class_dir.name!r}; known: {sorted(L.ALL_CODES)} "
                    f"and aliases (pass --ignore-unknown-labels to leave it out)") from None
            dataset.ignored_labels[str(class_dir.relative_to(dataset.root))] = len(files)
            continue
        for file in sorted(class_dir.rglob("*")):
            if not file.is_file() or file.name.startswith("."):
                continue
            file_split = split
            if dataset.format == "fer2013-folders":
                match = _FER_PREFIX.match(file.name)
                if match:
                    file_split = _CSV_USAGE[match.group(1).lower()]
            dataset.splits.setdefault(file_split, []).append(ImageRecord(
                id=str(file.relative_to(dataset.root)), label=code, split=file_split, path=file))


# --------------------------------------------------------------------------- images
def load_image(record: ImageRecord, crop_faces: bool = False) -> np.ndarray:
    """The record's image as 48x48 uint8 grayscale.

    CSV rows are reshaped. Files are decoded (any format OpenCV/Pillow reads); a file that is
    not 48x48 is cropped to its largest detected face when ``crop_faces`` (class-folder sets
    such as CK+ hold whole frames) and otherwise, or when no face is found, centre-cropped
    to a square and resized.
    """
    if record.pixels is not None:
        return record.pixels.reshape(IMAGE_SIZE, IMAGE_SIZE)
    image = read_image_file(record.path)
    gray = to_gray(image)
    if gray.shape == (IMAGE_SIZE, IMAGE_SIZE):
        return gray
    if crop_faces:
        from . import faces  # dlib is needed only for whole-frame datasets

        boxes = faces.detect_faces(gray, detector="hog")
        if boxes:
            return faces.crop_face(gray, boxes[0])
    return _centre_square(gray)


def read_image_file(path) -> np.ndarray:
    """Decode an image file to uint8 (H, W) or (H, W, 3|4) in RGB order, upright per its EXIF
    orientation; DatasetError if unreadable."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    path = Path(path)
    try:
        with Image.open(path) as img:
            img.load()
            # Phone photos are stored sideways with an EXIF rotation tag; faces are found upright.
            img = ImageOps.exif_transpose(img)
            if img.mode not in ("L", "RGB", "RGBA"):
                img = img.convert("RGBA" if "A" in img.getbands() else "RGB")
            array = np.asarray(img)
    except FileNotFoundError:
        raise DatasetError(f"{path}: file not found") from None
    except UnidentifiedImageError:
        raise DatasetError(f"{path}: not a readable image (unknown or corrupt format)") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise DatasetError(f"{path}: not a readable image ({exc})") from None
    if array.dtype != np.uint8:
        array = np.clip(array, 0, 255).astype(np.uint8)
    return array


def to_gray(image: np.ndarray) -> np.ndarray:
    """uint8 grayscale from grayscale, RGB or RGBA (alpha composited on black is not done:
    alpha is dropped, as photo tools do for opaque images)."""
    image = np.asarray(image)
    if image.ndim == 2:
        return image.astype(np.uint8, copy=False)
    if image.ndim == 3 and image.shape[2] in (3, 4):
        rgb = image[..., :3].astype(np.float32)
        # ITU-R 601 luma, the weights PIL and OpenCV use for RGB -> L.
        gray = rgb @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
        return np.clip(np.rint(gray), 0, 255).astype(np.uint8)
    if image.ndim == 3 and image.shape[2] == 1:
        return image[..., 0].astype(np.uint8, copy=False)
    raise ValueError(f"image must be (H, W), (H, W, 3) or (H, W, 4); got shape {image.shape}")


def _centre_square(gray: np.ndarray) -> np.ndarray:
    import cv2

    h, w = gray.shape
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    square = gray[top:top + side, left:left + side]
    return cv2.resize(square, (IMAGE_SIZE, IMAGE_SIZE), interpolation=cv2.INTER_AREA)
