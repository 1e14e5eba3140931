"""The on-disk feature store: extraction (chunked, parallel, resumable) and its reader.

Layout of ``features/<name>/`` (see docs/ARCHITECTURE.md for every array):

* ``<split>.npz`` for each split, written once every chunk of the split is done;
* ``manifest.json``, written last: its presence means the store is complete;
* ``.partial/`` while extraction runs: one ``.npz`` per finished chunk and ``state.json``
  (settings and a hash of the decoded images). A rerun with the same arguments skips
  finished chunks; a rerun with different ones is refused, so chunks of two configurations
  never mix.

A run holds ``<name>.lock`` beside the folder (:func:`artifacts.output_lock`), so a second run
into the same folder stops at once. The finished store is assembled in a temporary sibling and
swapped in only when complete (:func:`artifacts.replacing`): ``--force`` never leaves the old
store half-deleted. Whether a store is "already extracted" is decided on the content of every
decoded image, not on file names, so replacing pictures under the same names is noticed.
"""

from __future__ import annotations

import hashlib
import math
import os
import shutil
import time
from pathlib import Path

import numpy as np

from ensemble_fer import artifacts
from ensemble_fer.features import bovw, datasets, hog, sharpness
from ensemble_fer.features.workers import exit_with_parent
from ensemble_fer.errors import DatasetError, InputError
from ensemble_fer.labels import ALL_CODES

FILTERS = ("blank", "paper")
"""``blank``: drop near-blank crops from train, flag face counts only. ``paper``: EmoNet's
filter, also dropping train crops where the detector finds zero or several faces. In both,
val and test keep every image and carry the flags, so evaluation can report the whole split
and the face-found subset."""

FORMAT_VERSION = 1
VAL_FRACTION = 0.1
"""Share of train held out (stratified, seeded) as val when the data has no val split."""
DATA_KEY = "decoded-pixels"
"""What the data part of a store's state hashes: ids, labels and every decoded crop. (Stores
from before this key hashed ids and labels only; they are re-extracted with --force.)"""
MAX_LISTED = 10
"""Unreadable files named in the error itself; more are written to ``<out>.unreadable.txt``."""


class FeatureStoreError(InputError):
    """A feature store that is missing, incomplete or does not fit what is asked of it."""


def extract(dataset: datasets.Dataset, out_dir, config: bovw.ExtractorConfig, *, filter: str = "blank",
            n_jobs: int = -1, limit: int | None = None, force: bool = False, chunk_size: int = 256,
            val_fraction: float = VAL_FRACTION, seed: int = 0, progress: bool = True) -> dict:
    """Extract features for every split of ``dataset`` into ``out_dir``; returns the manifest.

    Images are decoded and checked first (a bad file stops the run before any work), then
    chunks are processed in parallel with joblib (the active joblib backend is used, so
    ``joblib.parallel_config(backend=...)`` moves the work to dask or ray unchanged).
    """
    if filter not in FILTERS:
        raise InputError(f"filter must be one of {FILTERS}; got {filter!r}")
    out_dir = Path(out_dir)
    # before --force is looked at: replacing a store that holds the dataset would delete it
    artifacts.check_apart(out_dir, {"the dataset": dataset.root}, output_name="--out")
    if out_dir.exists() and not out_dir.is_dir():
        raise FeatureStoreError(f"{out_dir}: exists and is not a folder; the output of extraction is a folder "
                                f"(give a new path or an existing feature store)")
    with artifacts.output_lock(out_dir):
        return _extract_locked(dataset, out_dir, config, filter, n_jobs, limit, force, chunk_size, val_fraction,
                               seed, progress)


def _extract_locked(dataset, out_dir: Path, config, filter, n_jobs, limit, force, chunk_size, val_fraction, seed,
                    progress) -> dict:
    started = time.time()
    partial = out_dir / ".partial"
    manifest_path = out_dir / "manifest.json"
    # What a run killed with -9 left: half-written chunks, a half-built store beside out_dir.
    for folder in (out_dir.parent, out_dir, partial):
        artifacts.clean_stale_temporaries(folder)
    settings = {"format_version": FORMAT_VERSION, "config": config.to_json(), "filter": filter,
                "chunk_size": chunk_size, "data_key": DATA_KEY}
    existing = artifacts.read_json(manifest_path) if manifest_path.is_file() else None
    if existing is not None or (partial / "state.json").is_file():
        artifacts.mark_output(out_dir)      # a store (or its scratch) an earlier version wrote, before the marker
    if not force:
        _refuse_other_settings(existing, settings, out_dir, partial)
    # Not a store and not made by this package (a user's folder): refused before any work,
    # --force or not, since the new store replaces out_dir whole.
    artifacts.check_replaceable(out_dir)

    splits = choose_splits(dataset, limit, val_fraction, seed)
    crop_faces = dataset.format == "folders"
    images = _load_all_images(splits, crop_faces, progress, dataset.root, out_dir)
    read_seconds = time.time() - started
    sharpness_report = sharpness.compare_splits(images)

    state = {**settings, "data": _data_hash(splits, images)}
    state_hash = artifacts.sha256_json(state)

    if existing is not None and not force:
        if existing.get("state_hash") == state_hash:
            existing["up_to_date"] = True
            return existing
        why = ("other images under the same names, or other labels" if "settings" in existing
               else "an earlier version that keyed the data on file names only")
        raise FeatureStoreError(f"{out_dir}: holds features made from {why}; pass --force to replace them "
                                f"or choose another --out")
    _start_partial(partial, state, state_hash, force)
    artifacts.mark_output(out_dir)      # holds our scratch now: a later --force may replace it

    jobs = [(split, index) for split, records in splits.items()
            for index in range(_n_chunks(len(records), chunk_size))
            if not (partial / _chunk_name(split, index)).exists()]
    resumed = sum(_n_chunks(len(r), chunk_size) for r in splits.values()) - len(jobs)
    t0 = time.time()
    if jobs:
        _run_chunks(jobs, images, config, chunk_size, partial, n_jobs, progress)
    extract_seconds = time.time() - t0

    n_images = sum(len(r) for r in splits.values())
    # Assembled beside out_dir and swapped in whole: the old store (and .partial inside it)
    # goes only once the new one is complete.
    with artifacts.replacing(out_dir, force=True) as building:
        building.mkdir()
        summary = {split: _merge_split(split, records, partial, building, chunk_size, filter)
                   for split, records in splits.items()}
        manifest = {
            "format_version": FORMAT_VERSION,
            "dataset": {"name": dataset.name, "path": str(dataset.root), "format": dataset.format,
                        "ignored_labels": dataset.ignored_labels,
                        "skipped_non_images": {"count": len(dataset.skipped_files),
                                               "files": dataset.skipped_files[:100]},
                        "fingerprint": datasets.record_fingerprint(r for rs in splits.values() for r in rs),
                        "limit": limit,
                        "val_holdout": None if "val" in dataset.splits else {"fraction": val_fraction, "seed": seed}},
            "config": config.to_json(),
            "config_hash": config_hash(config),
            "sharpness": sharpness_report,
            "filter": filter,
            "settings": settings,
            "state_hash": state_hash,
            "feature_columns": {"landmarks": [0, bovw.N_LANDMARK_VALUES],
                                "hog": [bovw.N_LANDMARK_VALUES, bovw.BOVW_SIZE]},
            "splits": summary,
            "versions": artifacts.package_versions(),
            "timing": {"read_seconds": round(read_seconds, 2), "extract_seconds": round(extract_seconds, 2),
                       "images": n_images, "chunks_resumed": resumed,
                       "images_per_second": round(n_images / extract_seconds, 1) if jobs and extract_seconds else None,
                       "n_jobs": n_jobs},
        }
        artifacts.write_json(building / "manifest.json", manifest)
    return manifest


def _refuse_other_settings(existing, settings: dict, out_dir: Path, partial: Path) -> None:
    """Refuse before reading a single image when the settings alone differ, or when
    ``out_dir`` holds something else (reading FER2013 takes a while)."""
    if existing is not None and "settings" in existing and existing["settings"] != settings:
        raise FeatureStoreError(f"{out_dir}: holds features made with other settings "
                                f"({_differences(existing['settings'], settings)}); pass --force to replace "
                                f"them or choose another --out")
    if existing is None and not partial.exists() and any(not p.name.startswith(".") for p in out_dir.glob("*")):
        raise FeatureStoreError(f"{out_dir}: exists and is not a feature store (no manifest.json); choose "
                                f"another --out")


def _start_partial(partial: Path, state: dict, state_hash: str, force: bool) -> None:
    """``.partial``, the scratch chunks of this extraction: an interrupted run with the same
    data and settings is resumed, one with others refused (or, with ``force``, discarded)."""
    if (partial / "state.json").exists():
        if artifacts.read_json(partial / "state.json").get("state_hash") != state_hash:
            if not force:
                raise FeatureStoreError(f"{partial}: an interrupted extraction with other data or settings; rerun "
                                        f"it with its own arguments to resume, or pass --force to start over")
            # Only the scratch chunks of an interrupted run go; a finished store stays until
            # the new one is complete.
            shutil.rmtree(partial)
    if not (partial / "state.json").exists():
        artifacts.write_json(partial / "state.json", {"state_hash": state_hash, **state})


def _differences(old: dict, new: dict) -> str:
    """``detector hog -> none, filter blank -> paper``: what changed between two settings."""
    flat_old = {**old.get("config", {}), **{k: v for k, v in old.items() if k != "config"}}
    flat_new = {**new.get("config", {}), **{k: v for k, v in new.items() if k != "config"}}
    return ", ".join(f"{k} {flat_old.get(k)} -> {flat_new.get(k)}" for k in sorted(set(flat_old) | set(flat_new))
                     if flat_old.get(k) != flat_new.get(k))


def _data_hash(splits: dict, images: dict) -> str:
    """A hash of what extraction actually reads: every id, label and decoded crop. Exact, and
    cheap because the crops are in memory anyway (FER2013: 80 MB, a fraction of a second)."""
    digest = hashlib.sha256()
    for split, records in splits.items():
        digest.update(split.encode())
        digest.update("\n".join(f"{r.id}\t{r.label}" for r in records).encode())
        digest.update(np.ascontiguousarray(images[split]).tobytes())
    return digest.hexdigest()


def config_hash(config: bovw.ExtractorConfig) -> str:
    return artifacts.sha256_json(config.to_json())[:16]


def choose_splits(dataset, limit: int | None = None, val_fraction: float = VAL_FRACTION,
                  seed: int = 0) -> dict[str, list[datasets.ImageRecord]]:
    """The records of each split as extraction uses them: a held-out val when the data has
    none, then at most ``limit`` per split (seeded)."""
    splits = {s: list(dataset.splits[s]) for s in datasets.SPLITS if dataset.splits.get(s)}
    if "train" not in splits:
        raise DatasetError(f"{dataset.root}: no training images")
    if "val" not in splits:
        # Class-folder sets and CSVs without Usage have no validation split: hold one out,
        # stratified and seeded, so that training always has one.
        from sklearn.model_selection import train_test_split

        train = splits["train"]
        if len(train) * val_fraction < 1:
            raise DatasetError(
                f"{dataset.root}: {len(train)} training images and no validation split; too few to hold "
                f"out {val_fraction:.0%} as validation (add a val/ folder or more images)")
        labels = [r.label for r in train]
        stratify = labels if min(np.bincount(labels)[np.unique(labels)]) >= 2 else None
        if stratify is not None:
            _check_stratified_holdout(dataset.root, len(train), len(np.unique(labels)), val_fraction)
        keep, held = train_test_split(np.arange(len(train)), test_size=val_fraction, random_state=seed,
                                      stratify=stratify)
        splits["train"] = [train[i] for i in sorted(keep)]
        splits["val"] = [datasets.ImageRecord(train[i].id, train[i].label, "val", train[i].path, train[i].pixels)
                         for i in sorted(held)]
    if limit is not None:
        if limit < 1:
            raise InputError(f"limit must be a positive number of images per split; got {limit}")
        rng = np.random.default_rng(seed)
        for split, records in splits.items():
            if len(records) > limit:
                chosen = np.sort(rng.choice(len(records), size=limit, replace=False))
                splits[split] = [records[i] for i in chosen]
    return {s: splits[s] for s in datasets.SPLITS if s in splits}


def _check_stratified_holdout(root, n: int, n_classes: int, val_fraction: float) -> None:
    """Say what to change when a stratified hold-out cannot give every class a validation
    image (scikit-learn would say ``test_size = 3 should be >= number of classes = 7``)."""
    held = math.ceil(val_fraction * n)  # how train_test_split rounds a fractional test_size
    if held >= n_classes and n - held >= n_classes:
        return
    needed = n
    while math.ceil(val_fraction * needed) < n_classes or needed - math.ceil(val_fraction * needed) < n_classes:
        needed += 1
    raise DatasetError(
        f"{root}: {n} training images in {n_classes} classes and no validation split; holding out "
        f"{val_fraction:.0%} ({held} images) cannot give each of the {n_classes} classes a validation image: "
        f"add a val/ folder with images of every class, or use at least {needed} training images")


def _load_all_images(splits, crop_faces, progress, root, out_dir) -> dict[str, np.ndarray]:
    """Decode every split; every unreadable file is reported, not only the first."""
    images, problems = {}, []
    for split, records in splits.items():
        images[split], bad = _load_images(records, crop_faces, progress, split)
        problems += bad
    if not problems:
        return images
    if len(problems) == 1:
        raise problems[0]
    listed = "; ".join(str(p) for p in problems[:MAX_LISTED])
    more = ""
    if len(problems) > MAX_LISTED:
        # Too many for one line: the whole list goes to a file the user can work through.
        listing = out_dir.parent / f"{out_dir.name}.unreadable.txt"
        with artifacts.atomic_path(listing) as tmp:
            tmp.write_text("".join(f"{p}\n" for p in problems))
        more = f"; and {len(problems) - MAX_LISTED} more, all listed in {listing}"
    raise DatasetError(f"{root}: {len(problems)} images cannot be read; fix or remove them: {listed}{more}")


def _load_images(records, crop_faces, progress, split) -> tuple[np.ndarray, list[DatasetError]]:
    from tqdm.auto import tqdm

    out = np.zeros((len(records), datasets.IMAGE_SIZE, datasets.IMAGE_SIZE), dtype=np.uint8)
    problems = []
    for i, record in enumerate(tqdm(records, desc=f"read {split}", unit="img", disable=not progress,
                                    leave=False)):
        try:
            out[i] = datasets.load_image(record, crop_faces=crop_faces)
        except DatasetError as exc:
            problems.append(exc)
    return out, problems


def _n_chunks(n: int, chunk_size: int) -> int:
    return -(-n // chunk_size)


def _chunk_name(split: str, index: int) -> str:
    return f"{split}-{index:05d}.npz"


def _analyse_chunk(split, index, images, config, parent_pid=None):
    if parent_pid is not None:
        exit_with_parent(parent_pid)
    return split, index, bovw.analyse_crops(images, config)


def _run_chunks(jobs, images, config, chunk_size, partial, n_jobs, progress):
    from joblib import Parallel, delayed
    from tqdm.auto import tqdm

    total = sum(len(images[s][i * chunk_size:(i + 1) * chunk_size]) for s, i in jobs)
    tasks = (delayed(_analyse_chunk)(s, i, images[s][i * chunk_size:(i + 1) * chunk_size], config, os.getpid())
             for s, i in jobs)
    with tqdm(total=total, desc="extract", unit="img", disable=not progress) as bar:
        # Unordered: each chunk is written the moment it is done, so an interruption
        # loses at most the chunks in flight.
        for split, index, result in Parallel(n_jobs=n_jobs, return_as="generator_unordered")(tasks):
            artifacts.save_npz(partial / _chunk_name(split, index), **result)
            bar.update(len(result["bovw"]))


def _merge_split(split, records, partial, out_dir, chunk_size, filter) -> dict:
    parts = [artifacts.load_npz(partial / _chunk_name(split, i)) for i in range(_n_chunks(len(records), chunk_size))]
    arrays = {key: np.concatenate([p[key] for p in parts]) for key in parts[0]}
    blank = arrays.pop("blank")
    n_faces = arrays["n_faces"]
    reason = np.full(len(records), "", dtype="<U13")
    reason[(n_faces == 0)] = "no_face"
    reason[(n_faces > 1)] = "several_faces"
    reason[blank] = "blank"
    if split == "train":
        dropped = blank | ((reason != "") if filter == "paper" else False)
        kept = ~dropped
    else:
        kept = np.ones(len(records), dtype=bool)
    labels = np.array([r.label for r in records], dtype=np.int16)
    ids = np.array([r.id for r in records], dtype=str)
    artifacts.save_npz(out_dir / f"{split}.npz", labels=labels, ids=ids, kept=kept, reason=reason,
                       **arrays)
    names = {code: name for name, code in ALL_CODES.items()}
    return {
        "n": len(records),
        "kept": int(kept.sum()),
        "face_found": int((n_faces == 1).sum()) if (n_faces >= 0).all() else None,
        "per_class": {names[c]: int(n) for c, n in zip(*np.unique(labels, return_counts=True))},
        "per_class_kept": {names[c]: int(n) for c, n in zip(*np.unique(labels[kept], return_counts=True))},
        "flags": {r: int((reason == r).sum()) for r in ("no_face", "several_faces", "blank")},
        "dropped": [{"id": i, "reason": r} for i, r in zip(ids[~kept], reason[~kept])],
    }


MANIFEST_VOLATILE = ("timing", "versions")
"""Manifest entries that differ between two extractions of the same images with the same
settings (seconds taken; library versions and the host's kernel in ``platform``): left out of
the store's identity, as are the dataset's folder and its ``fingerprint`` (file sizes and
modification times, which a copy changes): the images themselves are in it through
``state_hash``, the hash of their decoded pixels and the settings. So a store extracted again
from a copy of the same images, on another machine, is the same store."""


def manifest_identity(manifest: dict) -> str:
    """A store's identity (``manifest_hash``): the hash of its manifest without
    :data:`MANIFEST_VOLATILE` and the dataset's folder and fingerprint, i.e. of the pixels'
    hash, the settings, the columns and each split's rows."""
    content = {k: v for k, v in manifest.items() if k not in MANIFEST_VOLATILE}
    content["dataset"] = {k: v for k, v in manifest["dataset"].items() if k not in ("path", "fingerprint")}
    return artifacts.sha256_json(content)[:16]


class FeatureStore:
    """Read access to a finished feature store folder."""

    def __init__(self, path):
        self.path = Path(path)
        manifest = self.path / "manifest.json"
        if not manifest.is_file():
            hint = " (an extraction was interrupted: rerun it to resume)" if (self.path / ".partial").exists() else ""
            raise FeatureStoreError(f"{self.path}: not a feature store, no manifest.json{hint}; "
                                    f"make one with `ensemble-fer extract` (or `python -m pipelines.extract_features`)")
        self.manifest = artifacts.read_json(manifest)
        self.manifest_hash = manifest_identity(self.manifest)
        # What models trained before the content hash recorded: the file's own bytes.
        self.manifest_file_hash = artifacts.sha256_file(manifest)[:16]
        self.config = bovw.ExtractorConfig.from_json(self.manifest["config"], self.path / "manifest.json")
        self.config_hash = self.manifest["config_hash"]

    @property
    def splits(self) -> list[str]:
        return [s for s in datasets.SPLITS if s in self.manifest["splits"]]

    def load(self, split: str) -> dict[str, np.ndarray]:
        if split not in self.splits:
            raise FeatureStoreError(f"{self.path}: has no {split!r} split; it has {self.splits}")
        arrays = artifacts.load_npz(self.path / f"{split}.npz")
        n = len(arrays["labels"])
        expected = {"images": (n, 48, 48), "landmarks": (n, 68, 2), "hog": (n, hog.HOG_SIZE),
                    "bovw": (n, bovw.BOVW_SIZE)}
        for key, shape in expected.items():
            if key not in arrays or arrays[key].shape != shape:
                got = arrays[key].shape if key in arrays else "missing"
                raise FeatureStoreError(f"{self.path / (split + '.npz')}: array {key!r} has shape {got}, "
                                        f"expected {shape}")
        return arrays

    def is_store_of(self, recorded: dict) -> bool:
        """Whether a model's record of its feature store (:meth:`describe`) names this store: the
        same extractor settings and manifest (by content, or by the file's hash that models
        trained before session 13 recorded)."""
        return (recorded.get("config_hash") == self.config_hash
                and recorded.get("manifest_hash") in (self.manifest_hash, self.manifest_file_hash))

    def describe(self) -> dict:
        """What a model records about the store it was trained on."""
        return {"path": str(self.path), "config_hash": self.config_hash, "manifest_hash": self.manifest_hash,
                "extractor": self.manifest["config"], "dataset": self.manifest["dataset"]["name"]}
