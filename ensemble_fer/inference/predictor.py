"""Loading a trained variant or a fitted ensemble and predicting with it: the one path that
``pipelines.evaluate``, ``pipelines.demo`` and ``pipelines.predict`` share.

::

    predictor = load_predictor("models/ensemble.json")   # inference.loading; or a variant folder (models/cnn5)
    predictor.classes, predictor.members, predictor.weights, predictor.extractor_config
    proba = predictor.predict_proba(crops)                # uint8 (N, 48, 48) -> (N, n_classes)
    proba = predictor.predict_proba(crops, tta=10)        # averaged over 10 test-time views (0: none)
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
through :meth:`ensemble_fer.models.variant_dir.VariantDir.load_model`.

Prediction: features are extracted once per image (:func:`ensemble_fer.features.bovw.analyse_crops`
with the model's extractor config); each member gets the inputs its model names (``image``
and/or ``bovw``) in batches; with ``tta=n`` each member's probabilities are averaged over
``n`` deterministic views (:func:`ensemble_fer.features.augment.tta_views`: identity, mirror, then
small rotations and zooms; landmarks moved with the image and HOG recomputed when a member takes
BOVW features, the images alone otherwise). ``tta=None`` (the default everywhere) takes the
model's own: the views its ensemble weights were fitted on (``ensemble.json``'s ``tta``), 0 for
a variant. The ensemble's
probabilities are the members' averaged with the learnt weights
(:class:`ensemble_fer.ensemble.weighted.WeightedEnsemble`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ensemble_fer import artifacts
from ensemble_fer.ensemble.ensemble_file import (ENSEMBLE_FILE, check_member_hashes, feature_store_summary,
                                                 read_ensemble)
from ensemble_fer.ensemble.weighted import WeightedEnsemble
from ensemble_fer.errors import InputError, MissingInputError
from ensemble_fer.features import bovw
from ensemble_fer.labels import LabelSet, label_set_from_json
from ensemble_fer.models.variant_dir import CONFIG, MODEL, VariantDir, input_names
from ensemble_fer.features.augment import VIEW_CHUNK, check_tta, predict_views

NETWORK_FILES = (MODEL, "model.tflite", "model.onnx")
"""The files a member's network may be in: Keras, or an export's (:mod:`ensemble_fer.inference.export`)."""


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
        return input_names(self.config)

    @property
    def model(self):
        if self._model is None:
            if self.hashes is not None:
                # again now: the files may have been replaced since the ensemble was loaded
                check_member_hashes(self.folder, self.hashes, self.source)
            self._model = VariantDir(self.folder).load_model()
        return self._model

    def predict(self, images, bovw_rows, batch_size: int) -> np.ndarray:
        from ensemble_fer.models import forward   # Keras: imported only once a model runs

        proba = forward.predict_proba(self.model, self.config, images=images, bovw=bovw_rows, batch_size=batch_size)
        return forward.check_proba(proba, self.config, self.folder)


class Predictor:
    """A trained variant or a weighted ensemble of variants, ready to predict.

    Attributes: ``classes`` (tuple of names, the columns of every probability array),
    ``label_set``, ``extractor_config`` (:class:`ensemble_fer.features.bovw.ExtractorConfig` shared by
    every member), ``members`` (names), ``member_folders``, ``weights`` (ndarray summing to 1),
    ``kind`` (``"variant"`` or ``"ensemble"``), ``source`` (the path it was loaded from),
    ``default_tta`` (the test-time views a ``tta=None`` call averages: see the module docstring),
    ``feature_store`` (what the members were trained on) and ``info`` (the ensemble JSON, or
    the variant's config).
    """

    def __init__(self, source: Path, kind: str, members: list[Member], weights, label_set: LabelSet,
                 extractor_config: bovw.ExtractorConfig, feature_store: dict, info: dict, default_tta: int = 0):
        self.source = Path(source)
        self.default_tta = check_tta(default_tta, where=f"{source}: tta")
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

    def fingerprint(self) -> str:
        """SHA-256 over what decides this model's predictions: every member's config and network
        file, the weights and the extractor config. Two loads of the same files give the same
        value; a retrained or swapped member, or another model, gives another."""
        files = {}
        for member in self._members:
            for name in (CONFIG, *NETWORK_FILES):
                if (member.folder / name).is_file():
                    files[f"{member.name}/{name}"] = artifacts.sha256_file(member.folder / name)
        return artifacts.sha256_json({"files": files, "weights": [float(w) for w in self.weights],
                                      "classes": list(self.classes), "extractor": self.extractor_config.to_json()})

    def describe(self) -> dict:
        """What a report says about the model."""
        return {"path": str(self.source), "kind": self.kind, "members": list(self.members),
                "member_folders": [str(f) for f in self.member_folders],
                "weights": [float(w) for w in self.weights], "classes": list(self.classes),
                "label_set": self.label_set.name, "extractor": self.extractor_config.to_json(),
                "default_tta": self.default_tta,
                "feature_store": self.feature_store}

    # ------------------------------------------------------------------ prediction

    def analyse(self, images) -> dict[str, np.ndarray]:
        """Faces, landmarks, HOG and BOVW of 48x48 uint8 held-out crops with this model's
        extractor config; ``images`` in the result are the crops as the model sees them."""
        return bovw.analyse_crops(images, self.extractor_config)

    def resolve_tta(self, tta) -> int:
        """The test-time views a call averages: ``tta``, checked, or the model's own for None."""
        return self.default_tta if tta is None else check_tta(tta)

    def predict_proba(self, images, tta: int | None = None, batch_size: int = 256) -> np.ndarray:
        """Class probabilities (N, n_classes) of 48x48 uint8 crops (N, 48, 48).

        Features are extracted here (once per image); ``tta``: None for the model's own
        (:attr:`default_tta`), 0 for none, else the number of test-time views averaged (1 to
        10; 1 is the identity view only).
        """
        images = bovw.check_crops(images)
        tta = self.resolve_tta(tta)
        if not self.needs_bovw:
            # Image-only members read the crops alone (and their views): no landmarks or HOG.
            return self.predict_features(images=images, tta=tta, batch_size=batch_size).astype(np.float64)
        out = np.empty((len(images), len(self.classes)))
        # analysed in the chunks predict_views makes its views of: the landmarks and HOG of
        # every crop are not held at once
        for start in range(0, len(images), VIEW_CHUNK):
            part = images[start:start + VIEW_CHUNK]
            features = self.analyse(part)
            out[start:start + VIEW_CHUNK] = self.predict_features(features["images"], features["landmarks"],
                                                                  features["bovw"], tta=tta, batch_size=batch_size)
        return out

    def predict_features(self, images=None, landmarks=None, bovw_rows=None, tta: int | None = None,
                         batch_size: int = 256) -> np.ndarray:
        """Class probabilities from already-extracted arrays (a feature store's rows, whose
        ``images`` are already as the model sees them).

        ``images`` uint8 (N, 48, 48) is needed when a member has an image input or when
        ``tta`` > 0; ``landmarks`` (N, 68, 2) when ``tta`` > 0 and a member has a BOVW input;
        ``bovw_rows`` (N, 2728) when a member has a BOVW input and ``tta`` is 0 (views
        recompute their own). ``tta`` as in :meth:`predict_proba`.
        """
        return self.combine(self.member_probas(images, landmarks, bovw_rows, tta=tta, batch_size=batch_size))

    def combine(self, member_probas) -> np.ndarray:
        """The weighted average of member probabilities (n_members, N, n_classes)."""
        member_probas = np.asarray(member_probas, dtype=float)
        if member_probas.shape[1] == 0:
            return np.zeros((0, len(self.classes)))
        return self._ensemble.predict_proba(member_probas)

    def member_probas(self, images=None, landmarks=None, bovw_rows=None, tta: int | None = None,
                      batch_size: int = 256) -> np.ndarray:
        """Each member's probabilities, shape (n_members, N, n_classes) (TTA-averaged)."""
        tta = self.resolve_tta(tta)
        images, landmarks, bovw_rows, n = self._check_arrays(images, landmarks, bovw_rows, tta)
        return predict_views([(member.inputs, member.predict) for member in self._members], images, landmarks,
                             bovw_rows, tta, len(self.classes), batch_size)

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
        if landmarks is None and tta and self.needs_bovw:
            raise ValueError(f"landmarks: tta={tta} with a BOVW member needs the landmarks, which move with each "
                             f"view; got None")
        if bovw_rows is None and self.needs_bovw and not tta:
            raise ValueError(f"bovw: members {[m.name for m in self._members if 'bovw' in m.inputs]} of "
                             f"{self.source} take BOVW features; got None")
        if len(set(sizes.values())) > 1:
            raise ValueError(f"images, landmarks and bovw must describe the same faces; got row counts {sizes}")
        return images, landmarks, bovw_rows, (next(iter(sizes.values())) if sizes else 0)


# ---------------------------------------------------------------------- loading

def load_keras_predictor(path) -> Predictor:
    """A :class:`Predictor` over Keras models: a variant folder (or its ``config.json`` /
    ``model.keras``), an ``ensemble.json`` or a folder holding ``ensemble.json``. Nothing is
    loaded into Keras yet; every file and the members' agreement are checked now. Exports are
    read by :mod:`ensemble_fer.inference.export`; :func:`ensemble_fer.inference.loading.load_predictor`
    takes any of them."""
    path = Path(path)
    if not path.exists():
        raise MissingInputError(f"{path}: no such file or folder")
    if path.is_dir():
        if (path / CONFIG).is_file():
            return _variant_predictor(path)
        if (path / ENSEMBLE_FILE).is_file():
            return _ensemble_predictor(path / ENSEMBLE_FILE)
        raise MissingInputError(f"{path}: neither a trained variant (no {CONFIG}) nor a folder with an "
                                f"{ENSEMBLE_FILE}")
    if path.suffix == ".keras" or path.name == CONFIG:
        return _variant_predictor(path.parent)
    if path.suffix != ".json":
        raise InputError(f"{path}: expected a variant folder or an ensemble .json file")
    return _ensemble_predictor(path)


def extractor_of(config: dict, where) -> bovw.ExtractorConfig:
    return bovw.ExtractorConfig.from_json(config["feature_store"]["extractor"], where)


def _label_set(data, where) -> LabelSet:
    try:
        return label_set_from_json(data)
    except (KeyError, TypeError) as exc:
        raise InputError(f"{where}: labels is not a label set ({exc!r})") from None


def _variant_predictor(folder: Path) -> Predictor:
    variant = VariantDir(folder)
    config = variant.read_config()
    variant.check_model()
    member = Member(name=folder.name, folder=folder, config=config)
    return Predictor(folder, "variant", [member], [1.0], _label_set(config["labels"], variant.config_path),
                     extractor_of(config, variant.config_path), feature_store_summary(config["feature_store"]),
                     config)


def _ensemble_predictor(path: Path) -> Predictor:
    saved = read_ensemble(path)
    members = []
    for entry in saved.members:
        folder = entry.folder
        variant = VariantDir(folder)
        config = variant.read_config()
        check_member_hashes(folder, entry.hashes, path)
        variant.check_model()
        if label_set_from_json(config["labels"]) != saved.label_set:
            raise InputError(f"{path}: member {folder} predicts {config['labels']['classes']} but the ensemble "
                             f"{list(saved.label_set.classes)}; members must share the label set")
        member_extractor = extractor_of(config, variant.config_path)
        if member_extractor != saved.extractor:
            raise InputError(f"{path}: member {folder} was trained on features of another extractor config "
                             f"(member vs ensemble: {member_extractor.differences(saved.extractor)}); "
                             f"members must share one")
        members.append(Member(name=entry.name, folder=folder, config=config, hashes=entry.hashes, source=path))
    return Predictor(path, "ensemble", members, saved.fitted.weights_, saved.label_set, saved.extractor,
                     saved.data.get("feature_store") or feature_store_summary(members[0].config["feature_store"]),
                     saved.data, default_tta=saved.tta)
