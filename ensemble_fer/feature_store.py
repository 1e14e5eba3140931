"""The on-disk feature store: extraction (chunked, parallel, resumable) and its reader.

Layout of ``features/<name>/`` (see docs/ARCHITECTURE.md for every array):

* ``<split>.npz`` for each split, written once every chunk of the split is done;
* ``manifest.json``, written last: its presence means the store is complete;
* ``.partial/`` while extraction runs: one ``.npz`` per finished chunk and ``state.json``
  (config and data fingerprint). A rerun with the same arguments skips finished chunks; a
  rerun with different ones is refused, so chunks of two configurations never mix.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import numpy as np

from . import artifacts, bovw, datasets, hog, sharpness
from .labels import ALL_CODES

FILTERS = ("blank", "paper")
"""``blank``: drop near-blank crops from train, flag face counts only. ``paper``: EmoNet's
filter, also dropping train crops where the detector finds zero or several faces. In both,
val and test keep every image and carry the flags, so evaluation can report the whole split
and the face-found subset."""

FORMAT_VERSION = 1
VAL_FRACTION = 0.1
"""Share of train held out (stratified, seeded) as val when the data has no val split."""


class FeatureStoreError(ValueError):
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
        raise ValueError(f"filter must be one of {FILTERS}; got {filter!r}")
    out_dir = Path(out_dir)
    started = time.time()
    splits = choose_splits(dataset, limit, val_fraction, seed)
    crop_faces = dataset.format == "folders"
    images = {split: _load_images(records, crop_faces, progress, split) for split, records in splits.items()}
    read_seconds = time.time() - started
    sharpness_report = sharpness.compare_splits(images)

    state = {"format_version": FORMAT_VERSION, "config": config.to_json(), "filter": filter,
             "chunk_size": chunk_size,
             "data": artifacts.sha256_json({s: [(r.id, r.label) for r in rs] for s, rs in splits.items()})}
    state_hash = artifacts.sha256_json(state)
    partial = out_dir / ".partial"

    if force and out_dir.exists():
        for split in datasets.SPLITS:
            (out_dir / f"{split}.npz").unlink(missing_ok=True)
        (out_dir / "manifest.json").unlink(missing_ok=True)
        shutil.rmtree(partial, ignore_errors=True)
    manifest_path = out_dir / "manifest.json"
    if manifest_path.exists():
        existing = artifacts.read_json(manifest_path)
        if existing.get("state_hash") == state_hash:
            existing["up_to_date"] = True
            return existing
        raise FeatureStoreError(f"{out_dir}: holds features made with other data or settings; "
                                f"pass --force to replace them or choose another --out")
    if (partial / "state.json").exists():
        if artifacts.read_json(partial / "state.json").get("state_hash") != state_hash:
            raise FeatureStoreError(f"{partial}: an interrupted extraction with other data or settings; rerun it "
                                    f"with its own arguments to resume, or pass --force to start over")
    else:
        artifacts.write_json(partial / "state.json", {"state_hash": state_hash, **state})

    jobs = [(split, index) for split, records in splits.items()
            for index in range(_n_chunks(len(records), chunk_size))
            if not (partial / _chunk_name(split, index)).exists()]
    resumed = sum(_n_chunks(len(r), chunk_size) for r in splits.values()) - len(jobs)
    t0 = time.time()
    if jobs:
        _run_chunks(jobs, images, config, chunk_size, partial, n_jobs, progress)
    extract_seconds = time.time() - t0

    summary = {}
    for split, records in splits.items():
        summary[split] = _merge_split(split, records, partial, out_dir, chunk_size, filter)

    n_images = sum(len(r) for r in splits.values())
    manifest = {
        "format_version": FORMAT_VERSION,
        "dataset": {"name": dataset.name, "path": str(dataset.root), "format": dataset.format,
                    "ignored_labels": dataset.ignored_labels, "limit": limit,
                    "val_holdout": None if "val" in dataset.splits else {"fraction": val_fraction, "seed": seed}},
        "config": config.to_json(),
        "config_hash": config_hash(config),
        "sharpness": sharpness_report,
        "filter": filter,
        "state_hash": state_hash,
        "feature_columns": {"landmarks": [0, bovw.N_LANDMARK_VALUES], "hog": [bovw.N_LANDMARK_VALUES, bovw.BOVW_SIZE]},
        "splits": summary,
        "versions": artifacts.package_versions(),
        "timing": {"read_seconds": round(read_seconds, 2), "extract_seconds": round(extract_seconds, 2),
                   "images": n_images, "chunks_resumed": resumed,
                   "images_per_second": round(n_images / extract_seconds, 1) if jobs and extract_seconds else None,
                   "n_jobs": n_jobs},
    }
    artifacts.write_json(manifest_path, manifest)
    shutil.rmtree(partial, ignore_errors=True)
    return manifest


def config_hash(config: bovw.ExtractorConfig) -> str:
    return artifacts.sha256_json(config.to_json())[:16]


def choose_splits(dataset, limit: int | None = None, val_fraction: float = VAL_FRACTION,
                  seed: int = 0) -> dict[str, list[datasets.ImageRecord]]:
    """The records of each split as extraction uses them: a held-out val when the data has
    none, then at most ``limit`` per split (seeded)."""
    splits = {s: list(dataset.splits[s]) for s in datasets.SPLITS if dataset.splits.get(s)}
    if "train" not in splits:
        raise datasets.DatasetError(f"{dataset.root}: no training images")
    if "val" not in splits:
        # Class-folder sets and CSVs without Usage have no validation split: hold one out,
        # stratified and seeded, so that training always has one.
        from sklearn.model_selection import train_test_split

        train = splits["train"]
        if len(train) * val_fraction < 1:
            raise datasets.DatasetError(
                f"{dataset.root}: {len(train)} training images and no validation split; too few to hold "
                f"out {val_fraction:.0%} as validation (add a val/ folder or more images)")
        labels = [r.label for r in train]
        stratify = labels if min(np.bincount(labels)[np.unique(labels)]) >= 2 else None
        keep, held = train_test_split(np.arange(len(train)), test_size=val_fraction, random_state=seed,
                                      stratify=stratify)
        splits["train"] = [train[i] for i in sorted(keep)]
        splits["val"] = [datasets.ImageRecord(train[i].id, train[i].label, "val", train[i].path, train[i].pixels)
                         for i in sorted(held)]
    if limit is not None:
        if limit < 1:
            raise ValueError(f"limit must be a positive number of images per split; got {limit}")
        rng = np.random.default_rng(seed)
        for split, records in splits.items():
            if len(records) > limit:
                chosen = np.sort(rng.choice(len(records), size=limit, replace=False))
                splits[split] = [records[i] for i in chosen]
    return {s: splits[s] for s in datasets.SPLITS if s in splits}


def _load_images(records, crop_faces, progress, split) -> np.ndarray:
    from tqdm.auto import tqdm

    out = np.empty((len(records), datasets.IMAGE_SIZE, datasets.IMAGE_SIZE), dtype=np.uint8)
    for i, record in enumerate(tqdm(records, desc=f"read {split}", unit="img", disable=not progress,
                                    leave=False)):
        out[i] = datasets.load_image(record, crop_faces=crop_faces)
    return out


def _n_chunks(n: int, chunk_size: int) -> int:
    return -(-n // chunk_size)


def _chunk_name(split: str, index: int) -> str:
    return f"{split}-{index:05d}.npz"


def _analyse_chunk(split, index, images, config):
    return split, index, bovw.analyse_crops(images, config)


def _run_chunks(jobs, images, config, chunk_size, partial, n_jobs, progress):
    from joblib import Parallel, delayed
    from tqdm.auto import tqdm

    total = sum(len(images[s][i * chunk_size:(i + 1) * chunk_size]) for s, i in jobs)
    tasks = (delayed(_analyse_chunk)(s, i, images[s][i * chunk_size:(i + 1) * chunk_size], config) for s, i in jobs)
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


class FeatureStore:
    """Read access to a finished feature store folder."""

    def __init__(self, path):
        self.path = Path(path)
        manifest = self.path / "manifest.json"
        if not manifest.is_file():
            hint = " (an extraction was interrupted: rerun it to resume)" if (self.path / ".partial").exists() else ""
            raise FeatureStoreError(f"{self.path}: not a feature store, no manifest.json{hint}; "
                                    f"make one with `python -m pipelines.extract_features`")
        self.manifest = artifacts.read_json(manifest)
        self.manifest_hash = artifacts.sha256_file(manifest)[:16]
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

    def describe(self) -> dict:
        """What a model records about the store it was trained on."""
        return {"path": str(self.path), "config_hash": self.config_hash, "manifest_hash": self.manifest_hash,
                "extractor": self.manifest["config"], "dataset": self.manifest["dataset"]["name"]}
