"""Loading a trained variant or a fitted ensemble and predicting with it: the one path that
``pipelines.evaluate``, ``pipelines.demo`` and ``pipelines.predict`` share.

::

    predictor = load_predictor("models/ensemble.json")   # or a variant folder such as models/cnn5
    predictor.classes, predictor.members, predictor.weights, predictor.extractor_config
    proba = predictor.predict_proba(crops)                # uint8 (N, 48, 48) -> (N, n_classes)
    proba = predictor.predict_proba(crops, tta=10)        # averaged over 10 test-time views
    proba = predictor.predict_features(images, landmarks, bovw)   # arrays of a feature store

A variant is a predictor with one member of weight 1. An ensemble (``ensemble.json``, written
by ``pipelines.fit_ensemble``) lists its members as folders relative to the JSON file; all
members must share the label set and the extractor config (the features they were trained
on), so that one extraction feeds them all. Member folders must lie inside the ensemble's
folder (a relative path without ``..``), and the SHA-256 of each member's ``config.json`` and
``model.keras`` recorded at the fit is checked when the ensemble is loaded and again just before
the model is: a member that was retrained or swapped is refused, since its weight was learnt for
the old model. Ensemble files without those hashes (format version 1) are refused with a request
to rerun ``pipelines.fit_ensemble``.

Models load lazily (on the first prediction), in Keras safe mode and without an optimizer,
through :func:`ensemble_fer.training.train.load_variant`.

Prediction: features are extracted once per image (:func:`ensemble_fer.features.bovw.analyse_crops`
with the model's extractor config); each member gets the inputs its model names (``image``
and/or ``bovw``) in batches; with ``tta=n`` each member's probabilities are averaged over
``n`` deterministic views (:func:`ensemble_fer.training.augment.tta_views`: identity, mirror, then
small rotations and zooms; landmarks moved with the image, HOG recomputed); the ensemble's
probabilities are the members' averaged with the learnt weights
(:class:`ensemble_fer.ensemble.weighted.WeightedEnsemble`).
"""

from __future__ import annotations

import os
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ensemble_fer import artifacts

from ensemble_fer.features import bovw
from ensemble_fer.ensemble.weighted import WeightedEnsemble
from ensemble_fer.errors import InputError, MissingInputError
from ensemble_fer.labels import LabelSet, label_set_from_json

ENSEMBLE_FORMAT = "ensemble_fer.ensemble"
ENSEMBLE_VERSION = 2
"""2: members carry ``config_sha256`` and ``model_sha256`` (full SHA-256), checked at load."""
MAX_TTA = 10
"""Most test-time views (the length of ``augment.TTA_VIEWS``)."""

CHUNK = 512
"""Images analysed and predicted together: bounds the memory of ``tta`` views."""

_REQUIRED_CONFIG = ("variant", "block", "bovw", "labels", "feature_store")


def config_fingerprint(folder) -> str:
    """The hash of a variant's ``config.json`` (written last by training, so a retrained
    variant gets a new one): an ensemble records it to notice a member that changed."""
    return artifacts.sha256_file(Path(folder) / "config.json")[:16]


MEMBER_FILES = {"config_sha256": "config.json", "model_sha256": "model.keras"}
"""What an ensemble records of each member: the SHA-256 of the files that decide its predictions."""


def member_hashes(folder) -> dict[str, str]:
    """``{"config_sha256": ..., "model_sha256": ...}`` of a variant folder's two files."""
    folder = Path(folder)
    hashes = {}
    for key, name in MEMBER_FILES.items():
        if not (folder / name).is_file():
            raise MissingInputError(f"{folder / name}: file not found; an ensemble member needs its "
                                    f"config.json and model.keras")
        hashes[key] = artifacts.sha256_file(folder / name)
    return hashes


def check_keras_file(path) -> None:
    """Refuse a ``model.keras`` that is not a Keras archive (truncated, or another kind of file)
    before Keras reads it: Keras would report such a file as "File not found"."""
    path = Path(path)
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


@dataclass
class Member:
    """One trained variant of a predictor; its Keras model is loaded on first use."""

    name: str
    folder: Path
    config: dict
    hashes: dict | None = None
    """What the ensemble recorded (see :data:`MEMBER_FILES`); None for a variant loaded alone."""
    source: Path | None = None
    _model: object = field(default=None, repr=False)

    @property
    def inputs(self) -> tuple[str, ...]:
        """The model inputs this variant takes, by name."""
        return (("image",) if self.config["block"] is not None else ()) + (("bovw",) if self.config["bovw"] else ())

    @property
    def model(self):
        if self._model is None:
            from ensemble_fer.training import train as training
            if self.hashes is not None:
                # again now: the files may have been replaced since the ensemble was loaded
                check_member_hashes(self.folder, self.hashes, self.source)
            path = self.folder / "model.keras"
            check_keras_file(path)
            try:
                self._model, _ = training.load_variant(self.folder)
            except (ValueError, TypeError, KeyError, OSError) as exc:
                # A zip with the right names but content Keras cannot rebuild (crafted, or
                # corrupted inside): a problem with the file, not with this code.
                raise InputError(f"{path}: not a valid Keras model ({type(exc).__name__}: "
                                 f"{str(exc).splitlines()[0] if str(exc) else ''}); retrain the variant or "
                                 f"restore the file") from None
        return self._model

    def predict(self, images, bovw_rows, batch_size: int) -> np.ndarray:
        from ensemble_fer.training import train as training
        proba = training.predict_proba(self.model, self.config, images=images, bovw=bovw_rows,
                                       batch_size=batch_size)
        n_classes = len(self.config["labels"]["classes"])
        if proba.ndim != 2 or proba.shape[1] != n_classes:
            raise InputError(f"{self.folder / 'model.keras'}: outputs shape {proba.shape[1:]} but "
                             f"config.json lists {n_classes} classes")
        if not np.all(np.isfinite(proba)):
            raise InputError(f"{self.folder / 'model.keras'}: predicted NaN or inf probabilities")
        return proba


class Predictor:
    """A trained variant or a weighted ensemble of variants, ready to predict.

    Attributes: ``classes`` (tuple of names, the columns of every probability array),
    ``label_set``, ``extractor_config`` (:class:`ensemble_fer.features.bovw.ExtractorConfig` shared by
    every member), ``members`` (names), ``member_folders``, ``weights`` (ndarray summing to 1),
    ``kind`` (``"variant"`` or ``"ensemble"``), ``source`` (the path it was loaded from),
    ``feature_store`` (what the members were trained on) and ``info`` (the ensemble JSON, or
    the variant's config).
    """

    def __init__(self, source: Path, kind: str, members: list[Member], weights, label_set: LabelSet,
                 extractor_config: bovw.ExtractorConfig, feature_store: dict, info: dict):
        self.source = Path(source)
        self.kind = kind
        self._members = members
        self.weights = np.asarray(weights, dtype=float)
        self.label_set = label_set
        self.extractor_config = extractor_config
        self.feature_store = feature_store
        self.info = info
        self._ensemble = WeightedEnsemble()
        self._ensemble.weights_ = self.weights
        self._ensemble.classes_ = np.arange(label_set.n_classes)
        self._ensemble.n_members_ = len(members)

    @property
    def classes(self) -> tuple[str, ...]:
        return tuple(self.label_set.classes)

    @property
    def members(self) -> tuple[str, ...]:
        return tuple(m.name for m in self._members)

    @property
    def member_folders(self) -> tuple[Path, ...]:
        return tuple(m.folder for m in self._members)

    @property
    def needs_images(self) -> bool:
        return any("image" in m.inputs for m in self._members)

    @property
    def needs_bovw(self) -> bool:
        return any("bovw" in m.inputs for m in self._members)

    def __repr__(self) -> str:
        parts = ", ".join(f"{n}={w:.3f}" for n, w in zip(self.members, self.weights))
        return f"Predictor({self.kind} {self.source}: {parts}; classes {list(self.classes)})"

    def load_models(self) -> None:
        """Load every member's model now rather than at the first prediction."""
        for member in self._members:
            _ = member.model

    def describe(self) -> dict:
        """What a report says about the model."""
        return {"path": str(self.source), "kind": self.kind, "members": list(self.members),
                "member_folders": [str(f) for f in self.member_folders],
                "weights": [float(w) for w in self.weights], "classes": list(self.classes),
                "label_set": self.label_set.name, "extractor": self.extractor_config.to_json(),
                "feature_store": self.feature_store}

    # ------------------------------------------------------------------ prediction

    def analyse(self, images) -> dict[str, np.ndarray]:
        """Faces, landmarks, HOG and BOVW of 48x48 uint8 held-out crops with this model's
        extractor config; ``images`` in the result are the crops as the model sees them."""
        return bovw.analyse_crops(images, self.extractor_config)

    def predict_proba(self, images, tta: int = 0, batch_size: int = 256) -> np.ndarray:
        """Class probabilities (N, n_classes) of 48x48 uint8 crops (N, 48, 48).

        Features are extracted here (once per image); ``tta``: 0 for none, else the number
        of test-time views averaged (1 to 10; 1 is the identity view only).
        """
        images = bovw.check_crops(images)
        check_tta(tta)
        out = np.empty((len(images), len(self.classes)))
        for start in range(0, len(images), CHUNK):
            part = images[start:start + CHUNK]
            features = self.analyse(part)
            out[start:start + CHUNK] = self.predict_features(features["images"], features["landmarks"],
                                                             features["bovw"], tta=tta, batch_size=batch_size)
        return out

    def predict_features(self, images=None, landmarks=None, bovw_rows=None, tta: int = 0,
                         batch_size: int = 256) -> np.ndarray:
        """Class probabilities from already-extracted arrays (a feature store's rows, whose
        ``images`` are already as the model sees them).

        ``images`` uint8 (N, 48, 48) is needed when a member has an image input or when
        ``tta`` > 0; ``landmarks`` (N, 68, 2) when ``tta`` > 0; ``bovw_rows`` (N, 2728) when
        a member has a BOVW input and ``tta`` is 0 (views recompute their own).
        """
        return self.combine(self.member_probas(images, landmarks, bovw_rows, tta=tta, batch_size=batch_size))

    def combine(self, member_probas) -> np.ndarray:
        """The weighted average of member probabilities (n_members, N, n_classes)."""
        member_probas = np.asarray(member_probas, dtype=float)
        if member_probas.shape[1] == 0:
            return np.zeros((0, len(self.classes)))
        return self._ensemble.predict_proba(member_probas)

    def member_probas(self, images=None, landmarks=None, bovw_rows=None, tta: int = 0,
                      batch_size: int = 256) -> np.ndarray:
        """Each member's probabilities, shape (n_members, N, n_classes) (TTA-averaged)."""
        check_tta(tta)
        images, landmarks, bovw_rows, n = self._check_arrays(images, landmarks, bovw_rows, tta)
        out = np.empty((len(self._members), n, len(self.classes)))
        for start in range(0, n, CHUNK):
            rows = slice(start, min(start + CHUNK, n))
            if tta:
                from ensemble_fer.training.augment import tta_views

                views = tta_views(images[rows], landmarks[rows], tta)
                view_images = np.concatenate([np.asarray(v[0], dtype=np.uint8) for v in views])
                view_bovw = np.concatenate([np.asarray(v[2], dtype=np.float32) for v in views])
            else:
                view_images = None if images is None else images[rows]
                view_bovw = None if bovw_rows is None else bovw_rows[rows]
            n_rows = rows.stop - rows.start
            for m, member in enumerate(self._members):
                proba = member.predict(view_images if "image" in member.inputs else None,
                                       view_bovw if "bovw" in member.inputs else None, batch_size)
                # views are stacked view-major: (n_views * n_rows) -> (n_views, n_rows)
                out[m, rows] = proba.reshape(-1, n_rows, len(self.classes)).mean(axis=0)
        return out

    def _check_arrays(self, images, landmarks, bovw_rows, tta):
        # Contract checks, plain ValueError: the pipelines pass arrays they extracted themselves
        # or read from a checked feature store, so a mismatch here is a bug and keeps its traceback.
        sizes = {}
        if images is not None:
            images = bovw.check_crops(images)
            sizes["images"] = len(images)
        if landmarks is not None:
            landmarks = np.asarray(landmarks)
            if landmarks.ndim != 3 or landmarks.shape[1:] != (68, 2):
                raise ValueError(f"landmarks must have shape (N, 68, 2); got {landmarks.shape}")
            sizes["landmarks"] = len(landmarks)
        if bovw_rows is not None:
            bovw_rows = np.asarray(bovw_rows)
            if bovw_rows.ndim != 2 or bovw_rows.shape[1] != bovw.BOVW_SIZE:
                raise ValueError(f"bovw must have shape (N, {bovw.BOVW_SIZE}); got {bovw_rows.shape}")
            sizes["bovw"] = len(bovw_rows)
        if images is None and (self.needs_images or tta):
            why = f"tta={tta} makes views of the images" if tta else \
                f"members {[m.name for m in self._members if 'image' in m.inputs]} take images"
            raise ValueError(f"images: {self.source} needs the 48x48 crops ({why}); got None")
        if landmarks is None and tta:
            raise ValueError(f"landmarks: tta={tta} needs the landmarks, which move with each view; got None")
        if bovw_rows is None and self.needs_bovw and not tta:
            raise ValueError(f"bovw: members {[m.name for m in self._members if 'bovw' in m.inputs]} of "
                             f"{self.source} take BOVW features; got None")
        if len(set(sizes.values())) > 1:
            raise ValueError(f"images, landmarks and bovw must describe the same faces; got row counts {sizes}")
        return images, landmarks, bovw_rows, (next(iter(sizes.values())) if sizes else 0)


def check_tta(tta) -> None:
    if isinstance(tta, bool) or not isinstance(tta, (int, np.integer)) or not 0 <= tta <= MAX_TTA:
        raise InputError(f"tta must be an integer from 0 (none) to {MAX_TTA} views; got {tta!r}")


# ---------------------------------------------------------------------- loading

def load_predictor(path) -> Predictor:
    """A :class:`Predictor` from a variant folder (or its ``config.json`` / ``model.keras``),
    an ``ensemble.json``, or a folder holding ``ensemble.json``. Nothing is loaded into
    Keras yet; every file and the members' agreement are checked now."""
    path = Path(path)
    if not path.exists():
        raise MissingInputError(f"{path}: no such file or folder")
    if path.is_dir():
        if (path / "config.json").is_file():
            return _variant_predictor(path)
        if (path / "ensemble.json").is_file():
            return _ensemble_predictor(path / "ensemble.json")
        raise MissingInputError(f"{path}: neither a trained variant (no config.json) nor a folder with an "
                                f"ensemble.json")
    if path.suffix == ".keras" or path.name == "config.json":
        return _variant_predictor(path.parent)
    if path.suffix != ".json":
        raise InputError(f"{path}: expected a variant folder or an ensemble .json file")
    return _ensemble_predictor(path)


def read_variant_config(folder) -> dict:
    """A variant's ``config.json``, checked for the keys inference and ensembling need."""
    folder = Path(folder)
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise MissingInputError(f"{folder}: not a trained variant (no config.json); train one with "
                                f"`python -m pipelines.train_variant`")
    config = artifacts.read_json(config_path)
    if not isinstance(config, dict):
        raise InputError(f"{config_path}: not a variant's config (a JSON {type(config).__name__}, not an object)")
    missing = [key for key in _REQUIRED_CONFIG if key not in config]
    store = config.get("feature_store")
    if not missing and (not isinstance(store, dict) or "extractor" not in store or "config_hash" not in store):
        missing = ["feature_store.extractor/config_hash"]
    if missing:
        raise InputError(f"{config_path}: missing {missing}; not a variant written by pipelines.train_variant")
    return config


def extractor_of(config: dict, where) -> bovw.ExtractorConfig:
    return bovw.ExtractorConfig.from_json(config["feature_store"]["extractor"], where)


def _label_set(data, where) -> LabelSet:
    try:
        return label_set_from_json(data)
    except (KeyError, TypeError) as exc:
        raise InputError(f"{where}: labels is not a label set ({exc!r})") from None


def _variant_predictor(folder: Path) -> Predictor:
    config = read_variant_config(folder)
    check_keras_file(folder / "model.keras")
    member = Member(name=folder.name, folder=folder, config=config)
    return Predictor(folder, "variant", [member], [1.0], _label_set(config["labels"], folder / "config.json"),
                     extractor_of(config, folder / "config.json"), _store_summary(config["feature_store"]),
                     config)


def _store_summary(store: dict) -> dict:
    return {key: store.get(key) for key in ("path", "dataset", "config_hash", "manifest_hash")}


def member_folder(ensemble_path, entry_path, where: str) -> Path:
    """The folder of an ensemble member, from the ``path`` recorded for it: relative to the
    ensemble's folder and inside it, so that an ensemble file can only name the models that
    ship with it (no ``..``, no absolute path)."""
    if not isinstance(entry_path, str) or not entry_path:
        raise InputError(f"{ensemble_path}: {where}.path must be a non-empty string; got {entry_path!r}")
    normal = os.path.normpath(entry_path)
    if os.path.isabs(entry_path) or normal == ".." or normal.startswith(".." + os.sep) or normal == ".":
        raise InputError(f"{ensemble_path}: {where}.path {entry_path!r} leaves the ensemble's folder; members must "
                         f"be sub-folders of {Path(ensemble_path).parent} (refit with "
                         f"`python -m pipelines.fit_ensemble`)")
    return Path(ensemble_path).parent / normal


def check_member_hashes(folder: Path, recorded: dict, source) -> None:
    """Refuse a member whose config.json or model.keras is not the one the ensemble was fitted with."""
    for key, name in MEMBER_FILES.items():
        file = Path(folder) / name
        if not file.is_file():
            raise MissingInputError(f"{file}: file not found (member of {source})")
        if artifacts.sha256_file(file) != recorded[key]:
            raise InputError(f"{source}: member {folder} changed since the ensemble was fitted (its {name} "
                             f"differs: retrained or replaced?); refit with `python -m pipelines.fit_ensemble`")


def _ensemble_predictor(path: Path) -> Predictor:
    data = artifacts.read_json(path)
    if not isinstance(data, dict) or data.get("format") != ENSEMBLE_FORMAT:
        raise InputError(f"{path}: not an ensemble file (format is not {ENSEMBLE_FORMAT!r}); make one with "
                         f"`python -m pipelines.fit_ensemble`")
    version = data.get("version", 0)
    if not isinstance(version, int) or version > ENSEMBLE_VERSION:
        raise InputError(f"{path}: ensemble format version {version!r} is newer than this code reads "
                         f"({ENSEMBLE_VERSION})")
    missing = [key for key in ("members", "ensemble", "labels", "extractor") if key not in data]
    if missing or not isinstance(data["members"], list) or not data["members"]:
        raise InputError(f"{path}: missing {missing or ['members']}; not a complete ensemble file")
    for i, entry in enumerate(data["members"]):
        if not isinstance(entry, dict) or "path" not in entry:
            raise InputError(f"{path}: members[{i}] must be an object with a path; got {entry!r}")
    unhashed = [entry.get("name", i) for i, entry in enumerate(data["members"])
                if any(not isinstance(entry.get(key), str) or len(entry[key]) != 64
                                                      for key in MEMBER_FILES)]
    if version < ENSEMBLE_VERSION or unhashed:
        raise InputError(f"{path}: written by an older fit_ensemble (format version {version}): it does not record "
                         f"the SHA-256 of its members' config.json and model.keras (members {unhashed}), so a "
                         f"replaced model would go unnoticed; rerun `python -m pipelines.fit_ensemble` to refit it")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fitted = WeightedEnsemble.from_json(data["ensemble"])
    except ValueError as exc:
        raise InputError(f"{path}: ensemble: {exc}") from None
    if fitted.n_members_ != len(data["members"]):
        raise InputError(f"{path}: lists {len(data['members'])} members but {fitted.n_members_} weights")

    label_set = _label_set(data["labels"], path)
    extractor = bovw.ExtractorConfig.from_json(data["extractor"], path)
    members = []
    for i, entry in enumerate(data["members"]):
        folder = member_folder(path, entry.get("path"), f"members[{i}]")
        if not folder.is_dir():
            raise MissingInputError(f"{path}: member {entry.get('name', i)!r} is missing: no folder {folder}")
        config = read_variant_config(folder)
        hashes = {key: entry[key] for key in MEMBER_FILES}
        check_member_hashes(folder, hashes, path)
        check_keras_file(folder / "model.keras")
        if label_set_from_json(config["labels"]) != label_set:
            raise InputError(f"{path}: member {folder} predicts {config['labels']['classes']} but the ensemble "
                             f"{list(label_set.classes)}; members must share the label set")
        member_extractor = extractor_of(config, folder / "config.json")
        if member_extractor != extractor:
            differ = {k: (v, extractor.to_json()[k]) for k, v in member_extractor.to_json().items()
                      if extractor.to_json()[k] != v}
            raise InputError(f"{path}: member {folder} was trained on features of another extractor config "
                             f"(member vs ensemble: {differ}); members must share one")
        if "weight" in entry and abs(float(entry["weight"]) - fitted.weights_[i]) > 1e-9:
            raise InputError(f"{path}: members[{i}].weight {entry['weight']} disagrees with ensemble.weights "
                             f"{fitted.weights_[i]}; edit neither by hand, refit instead")
        members.append(Member(name=str(entry.get("name", folder.name)), folder=folder, config=config,
                              hashes=hashes, source=path))
    names = [m.name for m in members]
    if len(set(names)) != len(names):
        raise InputError(f"{path}: two members share a name ({names})")
    return Predictor(path, "ensemble", members, fitted.weights_, label_set, extractor,
                     data.get("feature_store") or _store_summary(members[0].config["feature_store"]), data)
