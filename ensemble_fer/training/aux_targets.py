"""Auxiliary per-image 0/1 targets (e.g. FACS action units) for a multi-task variant.

The targets are a CSV beside the images::

    image,AU1,AU2,AU4,...
    train/happy/Training_123.jpg,0,1,0,...

``image`` is the feature store's ``ids`` (the file path relative to the dataset root, or
``row<N>`` for CSV datasets); every other column is one target whose cells are ``0`` or ``1``.

Rules (every violation is a one-line ``InputError``, a ``ValueError``, that names the file):

* the ``image`` column and at least one target column are required; target names are
  non-empty and unique;
* every cell of a target column is ``0`` or ``1`` (``0.0`` / ``1.0`` are read as 0 / 1);
* an image listed twice, or an image that is in no split of the feature store, is an error
  (the first few are listed): a misspelt or stale id would otherwise silently drop targets;
* every store row a variant *uses* (the training rows kept by the extraction filter, every
  validation / test row inside the label set) must have a row in the CSV -- missing rows are
  an error, not left out of the auxiliary loss, so that the auxiliary metrics always cover
  the same rows as the emotion metrics. Store rows the variant does not use need no targets.

Public API::

    read_aux_targets(path) -> AuxTargets           (names, ids, values)
    AuxTargets.align(ids, split) -> float32 (n, k)  (rows in the order of ``ids``)
    aux_metrics(y_true, proba, names) -> dict       (per-target and averaged P/R/F1 at 0.5)
"""

from __future__ import annotations

import csv
import dataclasses
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from ensemble_fer.errors import InputError, MissingInputError

IMAGE_COLUMN = "image"
SHOWN = 5
"""How many offending ids an error message lists."""


@dataclasses.dataclass(frozen=True)
class AuxTargets:
    """The targets of one CSV: ``values[i, j]`` is target ``names[j]`` of image ``ids[i]``."""

    path: Path
    names: tuple[str, ...]
    ids: tuple[str, ...]
    values: np.ndarray      # uint8 (n, k)

    def __post_init__(self):
        object.__setattr__(self, "_index", {image: i for i, image in enumerate(self.ids)})

    def check_ids(self, store_ids: Iterable[str], store_path) -> None:
        """Refuse CSV rows whose image is in no split of the store."""
        known = set(map(str, store_ids))
        unknown = [image for image in self.ids if image not in known]
        if unknown:
            raise InputError(f"{self.path}: {len(unknown)} image(s) are not in the feature store {store_path} "
                             f"(e.g. {_few(unknown)}); ids are paths relative to the dataset root, or "
                             f"row<N> for CSV datasets")

    def align(self, ids, split: str) -> np.ndarray:
        """float32 (n, k) targets of the store rows ``ids``, in their order."""
        rows = [self._index.get(str(image), -1) for image in ids]
        missing = [str(image) for image, row in zip(ids, rows) if row < 0]
        if missing:
            raise InputError(f"{self.path}: {len(missing)} {split} row(s) of the feature store have no targets "
                             f"(e.g. {_few(missing)}); every row the variant trains or is evaluated on needs "
                             f"one")
        return self.values[np.asarray(rows, dtype=np.int64)].astype(np.float32).reshape(len(rows), len(self.names))

    def attach(self, store, splits: dict) -> AuxTargets:
        """Check the CSV against every split of ``store`` and give each of ``splits``
        (``data.SplitData``) its target rows; returns self."""
        self.check_ids(np.concatenate([store.load(split)["ids"] for split in store.splits]), store.path)
        for name, split in splits.items():
            split.aux = self.align(split.ids, name)
        return self

    def describe(self) -> dict:
        from ensemble_fer import artifacts

        return {"path": str(self.path), "sha256": artifacts.sha256_file(self.path), "targets": list(self.names),
                "rows": len(self.ids)}


def read_aux_targets(path) -> AuxTargets:
    """Read and validate an auxiliary-target CSV (see the module docstring)."""
    path = Path(path)
    if not path.is_file():
        raise MissingInputError(f"{path}: aux targets file not found")
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            rows = list(csv.reader(handle))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise InputError(f"{path}: cannot read the aux targets CSV ({exc})") from None
    rows = [row for row in rows if any(cell.strip() for cell in row)]
    if not rows:
        raise InputError(f"{path}: empty file; expected a header '{IMAGE_COLUMN},<target>,...' and one row per image")
    header = [cell.strip() for cell in rows[0]]
    if IMAGE_COLUMN not in header:
        raise InputError(f"{path}: no {IMAGE_COLUMN!r} column; the header must be '{IMAGE_COLUMN},<target>,...'; "
                         f"received {header[:6]}")
    if header.count(IMAGE_COLUMN) > 1:
        raise InputError(f"{path}: the {IMAGE_COLUMN!r} column appears more than once")
    image_col = header.index(IMAGE_COLUMN)
    target_cols = [i for i in range(len(header)) if i != image_col]
    names = [header[i] for i in target_cols]
    if not names:
        raise InputError(f"{path}: no target columns; the header must be '{IMAGE_COLUMN},<target>,...'")
    if any(not name for name in names):
        raise InputError(f"{path}: a target column has an empty name (column {header.index('') + 1})")
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise InputError(f"{path}: target names must be unique; {duplicates} appear more than once")
    if len(rows) == 1:
        raise InputError(f"{path}: no rows after the header")

    ids, values = [], np.zeros((len(rows) - 1, len(names)), dtype=np.uint8)
    for r, row in enumerate(rows[1:]):
        line = r + 2
        if len(row) != len(header):
            raise InputError(f"{path}: line {line} has {len(row)} cells, the header {len(header)}")
        image = row[image_col].strip()
        if not image:
            raise InputError(f"{path}: line {line} has an empty {IMAGE_COLUMN!r} cell")
        ids.append(image)
        for j, col in enumerate(target_cols):
            cell = row[col].strip()
            if cell in ("0", "1", "0.0", "1.0"):
                values[r, j] = int(float(cell))
            else:
                raise InputError(f"{path}: line {line}, target {header[col]!r}: values must be 0 or 1; "
                                 f"received {cell!r}")
    seen, repeated = set(), []
    for image in ids:
        if image in seen:
            repeated.append(image)
        seen.add(image)
    if repeated:
        raise InputError(f"{path}: {len(repeated)} image(s) are listed more than once (e.g. {_few(repeated)})")
    return AuxTargets(path=path, names=tuple(names), ids=tuple(ids), values=values)


def _few(items: list[str]) -> str:
    shown = ", ".join(repr(i) for i in items[:SHOWN])
    return shown + (", ..." if len(items) > SHOWN else "")


THRESHOLD = 0.5


def aux_metrics(y_true, proba, names, threshold: float = THRESHOLD) -> dict:
    """Per-target precision, recall, F1 and support (positives) of thresholded probabilities,
    plus their ``macro`` and ``weighted`` (by support) averages (sklearn, ``zero_division=0``)."""
    from sklearn.metrics import precision_recall_fscore_support

    y_true = np.asarray(y_true).astype(np.int64)
    pred = (np.asarray(proba) >= threshold).astype(np.int64)
    p, r, f, support = precision_recall_fscore_support(y_true, pred, average=None, zero_division=0,
                                                       labels=list(range(len(names))))
    report = {"threshold": float(threshold), "n": int(len(y_true)), "targets": {}}
    for j, name in enumerate(names):
        report["targets"][name] = {"precision": float(p[j]), "recall": float(r[j]), "f1": float(f[j]),
                                   "support": int(support[j]), "predicted": int(pred[:, j].sum())}
    for average in ("macro", "weighted"):
        ap, ar, af, _ = precision_recall_fscore_support(y_true, pred, average=average, zero_division=0)
        report[average] = {"precision": float(ap), "recall": float(ar), "f1": float(af)}
    return report
