"""Knowledge distillation: a trained model's probabilities on the training crops as soft targets.

With ``TrainConfig.teacher`` set (``--teacher PATH``: an ensemble, a release folder or a variant
folder), each training row's target becomes

    target = (1 - distill_weight) * one_hot(label) + distill_weight * teacher_probabilities

and the usual cross-entropy on that target is, term by term, the weighted sum of the hard-label
loss and the distillation loss of Hinton et al. ("Distilling the knowledge in a neural network",
2015) at temperature 1. Temperature 1 because the teacher here is usually an ensemble, whose
averaged probabilities are already soft, and because a temperature would need the student's
logits while every network of this project ends in a softmax.

The teacher sees each training crop once, as stored (not augmented): offline distillation, which
costs one teacher pass (~1-2 minutes for release 0.4 on this machine) instead of one per batch.
The student's augmented view (small shifts, flips, erasing) keeps the crop's soft target, as its
hard label does. Validation -- and so early stopping, the learning-rate schedule and the best
epoch -- uses the hard labels only: the teacher never sees the validation split through this.

The teacher's probabilities are recomputed at each call of ``train`` (a resumed run too): the
same model on the same stored crops gives the same numbers, and the teacher's fingerprint is in
the run's arguments, so a resume with a changed teacher is refused.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from ensemble_fer.errors import InputError


def load_teacher(teacher, label_set):
    """The teacher's predictor and fingerprint; refused (``InputError``) when it predicts other
    classes than the student's label set."""
    from ensemble_fer.inference.loading import load_predictor

    predictor = load_predictor(teacher)
    if tuple(predictor.classes) != tuple(label_set.classes):
        raise InputError(f"teacher: {teacher} predicts {list(predictor.classes)}, the student "
                         f"{list(label_set.classes)}; a teacher must share the student's label set (--labels)")
    return predictor, fingerprint(predictor)


def fingerprint(predictor) -> str:
    """SHA-256 naming the teacher's content: its ``ensemble.json`` (which holds each member's
    config and model hashes, checked when it loads) or a variant's config and network files."""
    digest = hashlib.sha256()
    if predictor.kind == "ensemble":
        digest.update(Path(predictor.source).read_bytes())
    else:
        from ensemble_fer.release import MODEL_FILES

        folder = Path(predictor.source)
        for name in ("config.json", *MODEL_FILES):
            if (folder / name).is_file():
                digest.update(name.encode() + b"\0" + (folder / name).read_bytes())
    return digest.hexdigest()


def teacher_probabilities(predictor, split, store, say=print) -> np.ndarray:
    """The teacher's class probabilities (N, n_classes) of the rows of ``split`` (a
    :class:`~ensemble_fer.training.data.SplitData` of ``store``).

    A teacher with a BOVW input reads the store's BOVW vectors, so it must have been trained on
    features of the same extractor configuration (refused otherwise)."""
    if predictor.needs_bovw and predictor.extractor_config != store.config:
        differ = predictor.extractor_config.differences(store.config)
        raise InputError(f"teacher: {predictor.source} reads BOVW features of another extractor configuration "
                         f"than {store.path} (teacher vs store: {differ}); re-extract the store with the "
                         f"teacher's settings or choose an image-only teacher")
    say(f"teacher {predictor.source}: predicting the {len(split):,} training crops ...")
    proba = predictor.predict_features(images=split.images if predictor.needs_images else None,
                                       bovw_rows=split.bovw if predictor.needs_bovw else None)
    return proba.astype(np.float32)


def describe(predictor, teacher_sha256: str, proba: np.ndarray, y: np.ndarray, weight: float) -> dict:
    """The ``teacher`` entry of the student's ``config.json``."""
    return {"path": str(predictor.source), "sha256": teacher_sha256, "kind": predictor.kind,
            "members": list(predictor.members), "distill_weight": weight,
            "train_accuracy": round(float((proba.argmax(axis=1) == y).mean()), 6),
            "mean_top_probability": round(float(proba.max(axis=1).mean()), 6)}
