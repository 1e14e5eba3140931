"""The folder of one trained variant (``models/<variant>/``): the one place that names its
files, reads and writes them, and says what a folder holds.

::

    folder = VariantDir("models/cnn5")
    folder.is_trained()             # config.json, written last by training: the outputs are complete
    config = folder.read_config()   # checked for the keys inference and ensembling need
    splits = folder.read_predictions()      # {"val": {"ids", "y", "proba", "face_found"}, "test": ...}
    model = folder.load_model()     # Keras safe mode, no optimizer
    find_variants("models/")        # every variant folder below, the rule fit_ensemble and compare share

Files (docs/ARCHITECTURE.md, "Trained variant"): ``model.keras``, ``config.json``,
``predictions.npz``, ``metrics.json``, ``history.csv``, ``curves.png``,
``confusion_matrix.png``, and ``.run/`` (``state.json`` and the checkpoints ``resume``
needs). Every write is atomic (:mod:`ensemble_fer.artifacts`).
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ensemble_fer import artifacts
from ensemble_fer.errors import InputError, MissingInputError

MODEL = "model.keras"
CONFIG = "config.json"
PREDICTIONS = "predictions.npz"
METRICS = "metrics.json"
HISTORY = "history.csv"
CURVES = "curves.png"
CONFUSION_MATRIX = "confusion_matrix.png"
OUTPUT_FILES = (MODEL, CONFIG, HISTORY, CURVES, PREDICTIONS, METRICS, CONFUSION_MATRIX)
RUN_DIR = ".run"
STATE = "state.json"
EXPORT_FILE = "export.json"
"""The marker of an export's format folder (:mod:`ensemble_fer.inference.export`)."""

REQUIRED_CONFIG = ("variant", "block", "bovw", "labels", "feature_store")
PREDICTION_KEYS = ("ids", "y", "proba", "face_found")
"""The arrays of one split in ``predictions.npz``, stored as ``<split>_<key>``."""
AUX_KEYS = ("aux_proba", "aux_y")
"""The arrays a variant with auxiliary targets adds per split."""
SPLITS = ("val", "test")

TRAIN_HINT = "train one with `python -m pipelines.train_variant`"

# What hparam_search calls a run folder (see :meth:`VariantDir.status`).
FINISHED, INCOMPLETE, RESUMABLE, STALE, NEW = "finished", "incomplete", "resumable", "stale", "new"


def _say_nothing(*args, **kwargs):
    pass


@dataclass(frozen=True)
class VariantDir:
    """A trained variant's folder. ``path`` may also name its ``model.keras`` or ``config.json``."""

    path: Path

    def __post_init__(self):
        path = Path(self.path)
        if path.name in (MODEL, CONFIG) and not path.is_dir():
            path = path.parent
        object.__setattr__(self, "path", path)

    # ------------------------------------------------------------------ names

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def model_path(self) -> Path:
        return self.path / MODEL

    @property
    def config_path(self) -> Path:
        return self.path / CONFIG

    @property
    def predictions_path(self) -> Path:
        return self.path / PREDICTIONS

    @property
    def metrics_path(self) -> Path:
        return self.path / METRICS

    @property
    def history_path(self) -> Path:
        return self.path / HISTORY

    @property
    def curves_path(self) -> Path:
        return self.path / CURVES

    @property
    def confusion_matrix_path(self) -> Path:
        return self.path / CONFUSION_MATRIX

    @property
    def run_dir(self) -> Path:
        return self.path / RUN_DIR

    @property
    def state_path(self) -> Path:
        return self.run_dir / STATE

    # ------------------------------------------------------------------ what it holds

    def is_trained(self) -> bool:
        """A variant to score, compare and ensemble: training writes ``config.json`` last, so its
        presence means the other outputs are complete. A run stopped by its time budget has it
        too (``status()`` then says ``incomplete``). A file of it that has gone missing since
        is refused by the reader that needs it, naming the file."""
        return self.config_path.is_file()

    def unfinished(self) -> bool:
        """Traces of a run that has not written its outputs: a checkpoint or a model, no config."""
        return not self.config_path.is_file() and (self.run_dir.exists() or self.model_path.exists())

    def status(self) -> str:
        """``finished`` (outputs of a complete run); ``incomplete`` (outputs of a run cut short
        by its time budget, checkpoint kept); ``resumable`` (a checkpoint, no outputs yet);
        ``stale`` (leftovers to replace: a checkpoint marked complete without outputs, outputs
        without a checkpoint that are not complete, or other files); ``new`` (nothing)."""
        if self.config_path.is_file():
            if artifacts.read_json(self.config_path).get("training", {}).get("complete"):
                return FINISHED
            return INCOMPLETE if self.state_path.is_file() else STALE
        if self.state_path.is_file():
            # A state marked complete whose outputs were never written: resuming would return
            # at once without writing them, so the run starts over.
            return STALE if self.read_state().get("complete") else RESUMABLE
        if self.path.is_dir() and any(self.path.iterdir()):
            return STALE
        return NEW

    # ------------------------------------------------------------------ config

    def read_config(self) -> dict:
        """``config.json``, checked for the keys inference and ensembling need."""
        if not self.config_path.is_file():
            raise MissingInputError(f"{self.path}: not a trained variant (no {CONFIG}); {TRAIN_HINT}")
        config = artifacts.read_json(self.config_path)
        if not isinstance(config, dict):
            raise InputError(f"{self.config_path}: not a variant's config (a JSON {type(config).__name__}, "
                             f"not an object)")
        missing = [key for key in REQUIRED_CONFIG if key not in config]
        store = config.get("feature_store")
        if not missing and (not isinstance(store, dict) or "extractor" not in store or "config_hash" not in store):
            missing = ["feature_store.extractor/config_hash"]
        if missing:
            raise InputError(f"{self.config_path}: missing {missing}; not a variant written by "
                             f"pipelines.train_variant")
        from ensemble_fer.features.bovw import ExtractorConfig
        from ensemble_fer.labels import label_set_from_json

        label_set_from_json(config["labels"], where=self.config_path)     # types checked before any use
        ExtractorConfig.from_json(store["extractor"], self.config_path)
        return config

    def write_config(self, config: dict) -> None:
        """Written last by training: its presence means the other outputs are complete."""
        artifacts.write_json(self.config_path, config)

    def read_state(self) -> dict:
        return artifacts.read_json(self.state_path)

    def write_state(self, state: dict) -> None:
        artifacts.write_json(self.state_path, state)

    def read_metrics(self) -> dict:
        return artifacts.read_json(self.metrics_path)

    def write_metrics(self, scores: dict) -> None:
        artifacts.write_json(self.metrics_path, scores)

    # ------------------------------------------------------------------ predictions

    def write_predictions(self, splits: dict[str, dict[str, np.ndarray]]) -> None:
        """``predictions.npz`` from ``{split: {"ids", "y", "proba", "face_found"[, "aux_proba", "aux_y"]}}``."""
        arrays = {}
        for split, rows in splits.items():
            if split not in SPLITS:
                raise ValueError(f"predictions: split must be one of {SPLITS}; got {split!r}")
            unknown = set(rows) - set(PREDICTION_KEYS) - set(AUX_KEYS)
            if unknown or set(PREDICTION_KEYS) - set(rows):
                raise ValueError(f"predictions[{split!r}] must hold {PREDICTION_KEYS} (and optionally {AUX_KEYS}); "
                                 f"got {sorted(rows)}")
            arrays.update({f"{split}_{key}": value for key, value in rows.items()})
        artifacts.save_npz(self.predictions_path, **arrays)

    def read_predictions(self, n_classes: int | None = None, say=_say_nothing) -> dict[str, dict[str, np.ndarray]]:
        """The saved probabilities per split, checked: ``{"val": {"ids" str, "y" int64, "proba"
        float64, "face_found" bool[, "aux_proba", "aux_y"]}, "test": ...}``.

        Probabilities must be finite rows summing to 1 over ``n_classes`` columns (the config's
        classes when None). An empty test split is left out (said through ``say``); an empty or
        missing val split is refused (ensembles are fitted on val)."""
        if n_classes is None:
            n_classes = len(self.read_config()["labels"]["classes"])
        path = self.predictions_path
        if not path.is_file():
            if is_export(self.path):
                # An export (models/fast is one) is made from a trained variant: it has no
                # predictions of its own, and retraining it is not the remedy.
                raise MissingInputError(f"{self.path}: an exported model (export.json), not a training output: it "
                                        f"has no saved predictions to fit on; fit the variant it was exported from, "
                                        f"or leave it out")
            raise MissingInputError(f"{path}: file not found; the variant's probabilities are missing "
                                    f"(retrain it, or leave it out with --variants)")
        arrays = artifacts.load_npz(path)
        splits = {}
        for split in SPLITS:
            keys = [f"{split}_{key}" for key in PREDICTION_KEYS]
            present = [key for key in keys if key in arrays]
            if not present:
                continue
            if len(present) != len(keys):
                raise InputError(f"{path}: has {present} but lacks {sorted(set(keys) - set(present))}")
            ids, y, proba, face = (arrays[key] for key in keys)
            n = len(ids)
            if proba.ndim != 2 or proba.shape != (n, n_classes) or y.shape != (n,) or face.shape != (n,):
                raise InputError(f"{path}: {split} arrays disagree: {n} ids, y {y.shape}, proba {proba.shape}, "
                                 f"face_found {face.shape} ({CONFIG} lists {n_classes} classes)")
            if n == 0:
                if split == "val":
                    raise InputError(f"{path}: the val split is empty (0 rows); the ensemble is fitted on val")
                say(f"warning: {path}: the test split is empty; reporting without test")
                continue
            _check_probabilities(path, split, ids, proba)
            if y.min() < 0 or y.max() >= n_classes:
                raise InputError(f"{path}: {split}_y holds class indices outside 0..{n_classes - 1}")
            rows = {"ids": ids.astype(str), "y": y.astype(np.int64), "proba": proba.astype(np.float64),
                    "face_found": face.astype(bool)}
            rows.update({key: arrays[f"{split}_{key}"] for key in AUX_KEYS if f"{split}_{key}" in arrays})
            splits[split] = rows
        if "val" not in splits:
            raise InputError(f"{path}: has no val_ predictions; the ensemble is fitted on val")
        return splits

    # ------------------------------------------------------------------ model

    def check_model(self) -> None:
        """Refuse a ``model.keras`` that is not a Keras archive (truncated, or another kind of
        file) before Keras reads it: Keras would report such a file as "File not found"."""
        path = self.model_path
        if not path.is_file():
            raise MissingInputError(f"{path}: file not found")
        try:
            with zipfile.ZipFile(path) as archive:
                names = set(archive.namelist())
        except (zipfile.BadZipFile, OSError) as exc:
            raise InputError(f"{path}: not a valid Keras model (not a .keras zip archive: {exc}); the file is "
                             f"truncated or of another kind: retrain the variant or restore the file") from None
        if "config.json" not in names or not names & {"model.weights.h5", "model.weights.npz"}:
            raise InputError(f"{path}: not a valid Keras model (the archive lacks config.json or the weights; it "
                             f"holds {sorted(names)[:5]}); retrain the variant or restore the file")

    def load_model(self):
        """The Keras model, loaded in safe mode (no code from the file runs) and without an
        optimizer. A file Keras cannot rebuild is an :class:`InputError` naming it."""
        import keras

        from ensemble_fer.models import blocks  # noqa: F401  registers the custom preprocessing layers

        if not self.config_path.is_file():
            raise MissingInputError(f"{self.path}: not a trained variant (no {CONFIG}); {TRAIN_HINT}")
        self.check_model()
        import tensorflow as tf

        try:
            return keras.models.load_model(self.model_path, compile=False, safe_mode=True)
        except (tf.errors.ResourceExhaustedError, MemoryError) as exc:
            # e.g. a crafted Dense(units=1e9): the file asks for more memory than there is
            raise InputError(f"{self.model_path}: not loadable: its network needs more memory than this machine "
                             f"has ({type(exc).__name__}); retrain the variant or restore the file") from None
        except (ValueError, TypeError, KeyError, OSError) as exc:
            # A zip with the right names but content Keras cannot rebuild (crafted, or
            # corrupted inside): a problem with the file, not with this code.
            raise InputError(f"{self.model_path}: not a valid Keras model ({type(exc).__name__}: "
                             f"{str(exc).splitlines()[0] if str(exc) else ''}); retrain the variant or "
                             f"restore the file") from None


def input_names(config: dict) -> tuple[str, ...]:
    """The model inputs a variant of this ``config.json`` takes, by name: ``image`` with an image
    block, ``bovw`` with the BOVW branch."""
    return (("image",) if config["block"] is not None else ()) + (("bovw",) if config["bovw"] else ())


def export_marker(path) -> Path:
    """The ``export.json`` that would mark ``path`` (a format folder or a file in it) as an export."""
    path = Path(path)
    return (path if path.is_dir() else path.parent) / EXPORT_FILE


def is_export(path) -> bool:
    """Whether ``path`` (a folder or a file in it) is an export (``pipelines.export``'s marker
    file is there): exports are written above this module (:mod:`ensemble_fer.inference.export`),
    but a variant folder must tell itself apart from one."""
    return export_marker(path).is_file()


def export_origin(path) -> tuple[dict, Path | None, str]:
    """What the export marker at ``path`` says of where the export came from: ``(marker, source,
    note)``. ``marker`` is ``{}`` when there is none; ``source`` the Keras model it was exported
    from as recorded (``None`` if not recorded); ``note`` says so for a message: ``" (recorded as
    X)"``, with ``", which is not here"`` where that path is missing (a shipped export records the
    build machine's path), or ``""``."""
    marker_path = export_marker(path)
    marker = artifacts.read_json(marker_path) if marker_path.is_file() else {}
    marker = marker if isinstance(marker, dict) else {}
    source = Path(str(marker["source"])) if marker.get("source") else None
    if source is None:
        return marker, None, ""
    return marker, source, f" (recorded as {source}{'' if source.exists() else ', which is not here'})"


def load_variant(path) -> tuple:
    """``(keras model, config dict)`` of the variant folder ``path`` (or its ``model.keras``)."""
    folder = VariantDir(path)
    model = folder.load_model()
    return model, folder.read_config()


def _check_probabilities(path: Path, split: str, ids, proba) -> None:
    finite = np.isfinite(proba).all(axis=1)
    if not finite.all():
        row = int(np.flatnonzero(~finite)[0])
        raise InputError(f"{path}: {split}_proba holds NaN or inf ({int((~finite).sum())} rows, first row "
                         f"{row}, id {ids[row]}); retrain the variant or leave it out")
    sums = proba.sum(axis=1)
    if proba.min() < -1e-6 or proba.max() > 1 + 1e-6 or np.abs(sums - 1).max() > 1e-3:
        row = int(np.argmax(np.abs(sums - 1)))
        raise InputError(f"{path}: {split}_proba is not probabilities (values in [{proba.min():.3g}, "
                         f"{proba.max():.3g}], row {row} sums to {sums[row]:.4g})")


def find_variants(root, say=_say_nothing) -> list[Path]:
    """Every variant folder (:meth:`VariantDir.is_trained`) under ``root``, itself included,
    searched recursively (so the runs of a hyperparameter search count) and sorted by path;
    hidden folders (``.run/`` checkpoints), sub-folders holding their own ``ensemble.json``
    (a shipped model such as ``models/release``) and exports (``export.json``: ``models/fast``,
    a network converted to TFLite, with no predictions to fit on) are skipped, linked folders
    followed once. Folders
    of unfinished runs are mentioned through ``say``. The one rule of ``pipelines.fit_ensemble``
    and ``pipelines.compare``.

    Raises :class:`MissingInputError` when ``root`` is missing or holds no variant."""
    root = Path(root)
    if not root.is_dir():
        raise MissingInputError(f"{root}: no such folder of trained variants")
    found, seen = [], set()

    def visit(folder: Path) -> None:
        real = folder.resolve()
        if real in seen:
            return
        seen.add(real)
        variant = VariantDir(folder)
        if variant.is_trained():
            found.append(folder)
        elif variant.unfinished():
            say(f"note: {folder} skipped: no {CONFIG} (training unfinished or interrupted)")
        for child in sorted(folder.iterdir()):
            if not child.is_dir() or child.name.startswith("."):
                continue
            if (child / "ensemble.json").is_file():
                # A folder with its own ensemble (models/release) is a packaged model of its own:
                # its members are not candidates of the ensemble fitted here.
                say(f"note: {child} skipped: it holds its own ensemble.json")
                continue
            if is_export(child):
                say(f"note: {child} skipped: an exported model (export.json), not a training output")
                continue
            visit(child)

    visit(root)
    if not found:
        raise MissingInputError(f"{root}: holds no trained variant (no folder with {CONFIG}, searched "
                                f"recursively); {TRAIN_HINT}")
    return sorted(found)


def config_fingerprint(folder) -> str:
    """The hash of a variant's ``config.json`` (written last by training, so a retrained
    variant gets a new one): what the demo records to notice a member that changed."""
    return artifacts.sha256_file(VariantDir(folder).config_path)[:16]
