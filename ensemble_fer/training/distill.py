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
costs one teacher pass (1-2 minutes for release 0.4's VGGs, ~20 for release 0.11 on a 2-core
CPU, with a line of progress every :data:`PROGRESS_ROWS` rows) instead of one per batch.
The student's augmented view (small shifts, flips, erasing) keeps the crop's soft target, as its
hard label does. Validation -- and so early stopping, the learning-rate schedule and the best
epoch -- uses the hard labels only: the teacher never sees the validation split through this.

The teacher's pass is cached like the views' below (one file, ``...-stored.npz``), so a resumed
run or a second student of the same teacher reads it instead of paying the pass again; the
teacher's fingerprint is in the run's arguments, so a resume with a changed teacher is refused.

**Views** (``teacher_views`` > 1, ``--teacher-views``). With strong augmentation the crop's
target no longer describes what the student sees. The teacher then predicts each training
crop in the first ``teacher_views`` fixed views of
:data:`~ensemble_fer.features.augment.TTA_VIEWS` (the crop, its mirror, small rotations and
zooms); each epoch a student row is drawn one of them (from ``(seed, epoch, VIEW_STREAM)``, a
function of the epoch, so resume stays bit-identical), the usual random augmentation is applied
on top of that view, and the row's target is that view's. The view counts allowed (2, 6, 8,
10) are closed under mirroring, so each view's target is the teacher's mean over the view and
its mirror image: the teacher as it predicts with ``--tta 2``, for one pass per view, and a
target that the student's random flip leaves exact. The teacher's passes (minutes per view) are
cached in :func:`ensemble_fer.paths.cache_dir` under the teacher's fingerprint, the store's
identity and the rows, so runs that differ only in their student settings pay them once.

**Temperature** (``distill_temperature``, ``--distill-temperature T``): the teacher's
probabilities are softened to ``p ** (1 / T)`` renormalised, which is ``softmax(logits / T)``
of the teacher's own logits up to a constant, before they join the label. Only the targets are
tempered (the student's loss stays its cross-entropy at T = 1), so T trades the teacher's
ranking of the wrong classes against its confidence; which T helps is measured, not assumed
(benchmarks/RESULTS.md).
"""

from __future__ import annotations

import dataclasses
import hashlib
import time
from pathlib import Path

import numpy as np

from ensemble_fer import artifacts
from ensemble_fer.errors import InputError
from ensemble_fer.features.augment import TTA_VIEWS

VIEW_COUNTS = (1, 2, 6, 8, 10)
"""Allowed ``teacher_views``: 1 (the crop as stored) or a count of views closed under mirroring."""

VIEW_STREAM = 0xD1
"""Third seed word of the per-epoch view draw of a student row in the image pipeline (apart
from ``(seed, epoch)``; a cached phase draws with ``cached_trunk.VIEW_STREAM``). Changing it
changes every view-distilled model."""


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


def teacher_probabilities(predictor, teacher_sha256: str, split, store, say=print,
                          cache: Path | None = None) -> np.ndarray:
    """The teacher's class probabilities (N, n_classes) of the rows of ``split`` (a
    :class:`~ensemble_fer.training.data.SplitData` of ``store``), as the teacher predicts them
    (its own test-time views), read from the cache when the same teacher made them on the same
    rows of the same store, and written there otherwise (``cache`` as for :func:`teacher_views`).

    A teacher with a BOVW input reads the store's BOVW vectors, so it must have been trained on
    features of the same extractor configuration (refused otherwise)."""
    _check_teacher_store(predictor, store)
    path = _cache_file(cache, teacher_sha256, store, split, None)
    proba = _read_cache(path, split.ids)
    if proba is not None:
        say(f"teacher {predictor.source}: the {len(split):,} training crops read from {path}")
        return proba
    say(f"teacher {predictor.source}: predicting the {len(split):,} training crops ...")
    proba = _teacher_pass(predictor, split.images if predictor.needs_images else None,
                          split.bovw if predictor.needs_bovw else None, None, say,
                          f"teacher {predictor.source}")
    _write_cache(path, proba, split.ids)
    return proba


PROGRESS_ROWS = 4096
"""Rows of a teacher pass between two progress lines: a release takes ~20 minutes for the
training split on a 2-core CPU. A multiple of the prediction batch (256), so the batches and
the probabilities are those of one uninterrupted call."""


def _teacher_pass(predictor, images, bovw_rows, tta, say, who: str) -> np.ndarray:
    """The teacher's probabilities (float32) of ``images`` / ``bovw_rows`` (either may be None),
    predicted ``PROGRESS_ROWS`` at a time with a line of progress after each."""
    n = len(images if images is not None else bovw_rows)
    parts, started = [], time.time()
    for start in range(0, n, PROGRESS_ROWS):
        stop = min(n, start + PROGRESS_ROWS)
        parts.append(predictor.predict_features(images=None if images is None else images[start:stop],
                                                bovw_rows=None if bovw_rows is None else bovw_rows[start:stop],
                                                tta=tta).astype(np.float32))
        if stop < n:
            elapsed = time.time() - started
            say(f"{who}: {stop:,}/{n:,} crops in {elapsed:.0f} s; about {elapsed / stop * (n - stop):.0f} s left")
    return np.concatenate(parts)


def describe(predictor, teacher_sha256: str, targets: np.ndarray, y: np.ndarray, weight: float,
             views: int = 1, temperature: float = 1.0) -> dict:
    """The ``teacher`` entry of the student's ``config.json``: ``targets`` the teacher's soft
    targets as the student trains on them (tempered), (n, n_classes) or per view (K, n,
    n_classes); the accuracy is on the crops as stored (view 0: a temperature keeps the top
    class), the mean top probability over every target."""
    targets = np.asarray(targets)
    crops = targets[0] if targets.ndim == 3 else targets
    return {"path": str(predictor.source), "sha256": teacher_sha256, "kind": predictor.kind,
            "members": list(predictor.members), "distill_weight": weight, "views": int(views),
            "temperature": float(temperature),
            "train_accuracy": round(float((crops.argmax(axis=1) == y).mean()), 6),
            "mean_top_probability": round(float(targets.max(axis=-1).mean()), 6)}


# ------------------------------------------------------------------------------------------
# targets on fixed views of the crops, at a temperature
# ------------------------------------------------------------------------------------------

def mirror_partners(n_views: int) -> np.ndarray:
    """Index, among the first ``n_views`` of :data:`TTA_VIEWS`, of each view's mirror image:
    view ``(rotation, scale, flip)`` mirrored is ``(-rotation, scale, not flip)``. Raises
    ``ValueError`` when a mirror is not among them (the counts of :data:`VIEW_COUNTS` are closed)."""
    views = list(TTA_VIEWS[:n_views])
    partners = []
    for rotation, scale, flip in views:
        mirror = (-rotation if rotation else 0.0, scale, not flip)
        if mirror not in views:
            raise ValueError(f"the first {n_views} test-time views are not closed under mirroring")
        partners.append(views.index(mirror))
    return np.array(partners)


def soften(proba: np.ndarray, temperature: float) -> np.ndarray:
    """Probabilities at ``temperature``: ``p ** (1 / T)`` renormalised (T = 1: unchanged)."""
    proba = np.asarray(proba, dtype=np.float64)
    if temperature == 1.0:
        return proba.astype(np.float32)
    logits = np.log(np.clip(proba, 1e-12, None)) / temperature
    logits -= logits.max(axis=-1, keepdims=True)
    out = np.exp(logits)
    return (out / out.sum(axis=-1, keepdims=True)).astype(np.float32)


@dataclasses.dataclass
class TeacherViews:
    """The fixed views of a split's training crops and the teacher's targets on them:
    ``images`` uint8 (K, n, 48, 48), ``landmarks`` (K, n, 68, 2) and ``bovw`` (K, n, 2728)
    when the student reads BOVW (else None), ``soft`` float32 (K, n, n_classes) at T = 1."""

    images: np.ndarray
    landmarks: np.ndarray | None
    bovw: np.ndarray | None
    soft: np.ndarray

    @property
    def n_views(self) -> int:
        return int(self.soft.shape[0])


def teacher_views(predictor, teacher_sha256: str, split, store, n_views: int, student_bovw: bool,
                  say=print, cache: Path | None = None) -> TeacherViews:
    """The first ``n_views`` fixed views of ``split``'s crops and the teacher's targets on
    them (see the module doc). The teacher's pass over each view is read from the cache
    (``cache``: a folder; default ``cache_dir()/teacher``) when it was made by the same teacher
    on the same rows of the same store, and written there otherwise."""
    from ensemble_fer.features.augment import tta_images, tta_views

    if n_views not in VIEW_COUNTS[1:]:
        raise InputError(f"teacher_views must be one of {VIEW_COUNTS[1:]} here; received {n_views!r}")
    partners = mirror_partners(n_views)
    with_landmarks = student_bovw or predictor.needs_bovw
    started = time.time()
    if with_landmarks:
        made = tta_views(split.images, split.landmarks, n_views)
        images = np.stack([v[0] for v in made])
        landmarks = np.stack([v[1] for v in made]).astype(np.float32)
        bovw = np.stack([v[2] for v in made]).astype(np.float32)
        del made
    else:
        images, landmarks, bovw = np.stack(tta_images(split.images, n_views)), None, None
    say(f"made {n_views} views of the {len(split):,} training crops in {time.time() - started:.0f} s")

    _check_teacher_store(predictor, store)
    raw = []
    for v in range(n_views):
        # One file per view, written as soon as it is made: an interrupted pass keeps its views,
        # and a run on fewer views reads the first ones of a run on more.
        path = _cache_file(cache, teacher_sha256, store, split, v)
        proba = _read_cache(path, split.ids)
        if proba is None:
            started = time.time()
            proba = _teacher_pass(predictor, images[v] if predictor.needs_images else None,
                                  bovw[v] if predictor.needs_bovw else None, 0, say,
                                  f"teacher {predictor.source}, view {v + 1}/{n_views}")
            _write_cache(path, proba, split.ids)
            say(f"teacher {predictor.source}: view {v + 1}/{n_views} of the {len(split):,} training crops "
                f"in {time.time() - started:.0f} s (cached in {path})")
        else:
            say(f"teacher {predictor.source}: view {v + 1}/{n_views} read from {path}")
        raw.append(proba)
    raw = np.stack(raw)
    soft = ((raw + raw[partners]) / 2.0).astype(np.float32)
    return TeacherViews(images, landmarks if student_bovw else None, bovw if student_bovw else None, soft)


def _check_teacher_store(predictor, store) -> None:
    if predictor.needs_bovw and predictor.extractor_config != store.config:
        differ = predictor.extractor_config.differences(store.config)
        raise InputError(f"teacher: {predictor.source} reads BOVW features of another extractor configuration "
                         f"than {store.path} (teacher vs store: {differ}); re-extract the store with the "
                         f"teacher's settings or choose an image-only teacher")


def _cache_file(cache, teacher_sha256: str, store, split, view: int | None) -> Path:
    """The cache file of one teacher pass: over fixed view ``view`` of the crops, or (None) over
    the crops as stored with the teacher's own test-time views."""
    from ensemble_fer.paths import cache_dir

    folder = Path(cache) if cache is not None else cache_dir() / "teacher"
    rows = hashlib.sha256(np.ascontiguousarray(split.ids).astype(str).tobytes()).hexdigest()
    what = "stored" if view is None else TTA_VIEWS[view]
    key = hashlib.sha256(f"{teacher_sha256}|{store.manifest_hash}|{rows}|{what}".encode())
    name = "stored" if view is None else f"view{view}"
    return folder / f"{teacher_sha256[:12]}-{key.hexdigest()[:16]}-{name}.npz"


def _read_cache(path: Path, ids: np.ndarray) -> np.ndarray | None:
    """The cached pass, or None when there is none or it does not describe these rows (a
    damaged or foreign file is recomputed and replaced, never trusted)."""
    if not path.is_file():
        return None
    try:
        cached = artifacts.load_npz(path)
    except InputError:
        return None
    proba, cached_ids = cached.get("proba"), cached.get("ids")
    if (proba is None or cached_ids is None or proba.ndim != 2 or len(proba) != len(ids)
            or not np.array_equal(cached_ids.astype(str), np.asarray(ids).astype(str))
            or not np.isfinite(proba).all()):
        return None
    return proba.astype(np.float32)


def _write_cache(path: Path, proba: np.ndarray, ids: np.ndarray) -> None:
    """Cache one teacher pass: its probabilities and the rows they describe, which
    :func:`_read_cache` checks before it trusts the file."""
    artifacts.save_npz(path, proba=proba, ids=ids)
