"""Evaluating a variant or an ensemble on labelled data. The library behind
``pipelines.evaluate`` and ``pipelines.demo`` (fitting an ensemble is
:mod:`ensemble_fer.ensemble.fit`).

Evaluating (:func:`load_eval_data`, :func:`evaluate_predictor`, :func:`write_evaluation`)
    Features of the requested split are extracted with the *model's* extractor config, in
    parallel chunks, into a cache file (``<cache>/eval-<dataset>-<hash>/<split>.npz``, the hash
    over the data's location and format, the extractor config and the face detector; each
    file also holds the fingerprint of the records it was made from: ids, labels and each
    file's size and modification time (CSV rows: their pixels), see
    :func:`ensemble_fer.features.datasets.record_fingerprint`, and is remade when it changes, so
    pictures replaced under the same names are re-extracted).
    Only the split asked for is extracted, never the whole dataset. A class-folder set
    without split folders is scored whole by default (``all``). In class-folder sets, whose
    pictures may be whole frames, each picture's face is found exactly as
    ``pipelines.predict`` finds it (dlib HOG, ``upsample="auto"``, the largest face; a 48x48
    picture is the face itself), so that every split scores what ``predict`` says about the
    same pictures; pictures where predict finds no face are left out and counted (``no_face``). A feature store folder is
    accepted as data too (its arrays are used as they are, when its extractor config is the
    model's). Metrics are reported on the whole split and on its face-found subset (exactly one
    face detected: the EmoNet paper's filtered protocol). Face counts come from the model's
    detector, or from dlib's HOG detector when the model was trained without one (the subset is
    a property of the images, so it should not vanish with a detector-less model).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ensemble_fer import artifacts
from ensemble_fer.errors import InputError, MissingInputError
from ensemble_fer import metrics
from ensemble_fer.features import bovw, datasets, image_io
from ensemble_fer.inference.predictor import Predictor
from ensemble_fer.labels import ALL_CODES


def _say_nothing(*args, **kwargs):
    pass


@dataclass
class EvalData:
    """The rows of one split a model is evaluated on, with their features."""

    split: str
    split_note: str
    ids: np.ndarray
    y: np.ndarray                 # class indices into the model's label set
    images: np.ndarray
    landmarks: np.ndarray
    bovw: np.ndarray
    face_found: np.ndarray | None  # None: no face detector ran
    face_detector: str
    source: dict                  # path, format, name, kind ("data" or "feature store")
    counts: dict                  # images, evaluated, no_face, left_out
    features: dict                # where the features came from, seconds


def resolve_face_detector(face_detector: str, features_detector: str) -> str:
    """``auto``: the features' own detector, or ``hog`` when they were made without one."""
    if face_detector == "auto":
        return features_detector if features_detector != "none" else "hog"
    if face_detector not in bovw.DETECTORS:
        raise InputError(f"face detector must be auto or one of {bovw.DETECTORS}; got {face_detector!r}")
    return face_detector


def default_split(available: list[str], has_train: bool, split_folders: bool = True) -> tuple[str, str]:
    """The split scored when none is asked for, and why. ``split_folders``: False for a
    class-folder set without split folders, which is scored whole: nothing in it was set
    aside for testing, and holding out a hidden tenth would score only that tenth."""
    if not split_folders:
        return "all", "default: the data has no split folders, so every image"
    if "test" in available:
        return "test", "default: the data has a test split"
    if "val" in available:
        return "val", "default: the data has no test split, so its val split"
    if has_train:
        return "val", ("default: the data has neither test nor val, so val is held out of train as the feature "
                       "store does (10 %, stratified, seed 0); --split all scores every image")
    raise InputError("the data has no train, val or test split")


def load_eval_data(data, predictor: Predictor, split: str | None = None, format: str = "auto",
                   ignore_unknown_labels: bool = False, cache=None, n_jobs: int = -1, face_detector: str = "auto",
                   progress: bool = False, say=_say_nothing) -> EvalData:
    """The rows of ``split`` of ``data`` (a dataset, or a feature store folder) with features
    made by ``predictor``'s extractor config; labels outside its label set are left out and
    counted. ``cache``: folder of the extraction cache (None: extract in memory only)."""
    data = Path(data)
    if not data.exists():
        raise MissingInputError(f"{data}: no such file or folder")
    config = predictor.extractor_config
    detector = resolve_face_detector(face_detector, config.detector)
    if data.is_dir() and (data / "manifest.json").is_file():
        return _eval_data_from_store(data, predictor, split, detector, n_jobs, progress, say)

    dataset = datasets.open_dataset(data, format, ignore_unknown_labels=ignore_unknown_labels)
    split, note, records = _split_records(data, dataset, split)
    if dataset.aliased_labels:
        say("note: label folders read under their emotion's name: " +
            ", ".join(f"{name}/ as {emotion}" for name, emotion in sorted(dataset.aliased_labels.items())))

    label_set = predictor.label_set
    codes = np.array([r.label for r in records], dtype=np.int64)
    y = label_set.encode(codes)
    inside = y >= 0
    left_out = _left_out(codes[~inside])
    if not inside.any():
        raise InputError(f"{data}: none of the {len(records)} images of split {split!r} has a label in the model's "
                         f"label set {list(label_set.classes)}")
    if left_out:
        say(f"note: {int((~inside).sum())} images left out, their labels are outside the model's label set: "
            f"{left_out}")
    records = [r for r, keep in zip(records, inside) if keep]

    started = time.time()
    # Class-folder sets may hold whole frames: their faces are found as predict finds them.
    frames = dataset.format == "folders"
    face_config = bovw.ExtractorConfig(**{**config.to_json(), "detector": detector})
    arrays, cache_file = _features(dataset, records, split, frames, config, face_config, detector, cache,
                                   n_jobs, progress, say)
    found = arrays["found"].astype(bool)
    if not found.any():
        raise InputError(f"{data}: no face found in any of the {len(records)} images of split {split!r} (as "
                         f"pipelines.predict finds faces: dlib HOG, upsample auto)")
    if not found.all():
        say(f"note: {int((~found).sum())} images left out: no face found in them (predict says no_face), e.g. "
            f"{records[int(np.flatnonzero(~found)[0])].id}")
    face_found = None if detector == "none" else arrays["face_count"] == 1
    return EvalData(
        split=split, split_note=note, ids=np.array([r.id for r in records])[found], y=y[inside][found],
        images=arrays["images"], landmarks=arrays["landmarks"], bovw=arrays["bovw"], face_found=face_found,
        face_detector=detector,
        source={"path": str(data), "format": dataset.format, "name": dataset.name, "kind": "data",
                "ignored_label_folders": dataset.ignored_labels, "aliased_label_folders": dataset.aliased_labels},
        counts={"images": len(codes), "evaluated": int(found.sum()), "no_face": int((~found).sum()),
                "left_out": {"outside_label_set": int((~inside).sum()), "by_label": left_out}},
        features={"cache": None if cache_file is None else str(cache_file),
                  "seconds": round(time.time() - started, 2), "extractor": config.to_json()})


def _split_records(data: Path, dataset, split: str | None) -> tuple[str, str, list]:
    """The split to evaluate (``split``, or the default one), a note saying why, and its
    records; the store's own held-out val when the data has train but no val."""
    available = [s for s in datasets.SPLITS if dataset.splits.get(s)]
    if split is None:
        split, note = default_split(available, "train" in available, has_split_folders(dataset))
    elif split == "all":
        note = "every image of the data, all splits together"
    elif split in available:
        note = f"--split {split}"
    elif split in ("train", "val") and "train" in available and "val" not in available:
        note = ("asked for; the data has no val split, so val is held out of train as the feature store does "
                "(10 %, stratified, seed 0)")
    else:
        raise InputError(f"{data}: has no {split!r} split; it has {available}")
    if split == "all":
        records = [r for s in available for r in dataset.splits[s]]
    elif split in available and not (split == "train" and "val" not in available):
        records = list(dataset.splits[split])
    else:
        from ensemble_fer.features.feature_store import choose_splits   # the store's own held-out val, to match training

        records = choose_splits(dataset)[split]
    return split, note, records


def _features(dataset, records, split: str, frames: bool, config, face_config, detector: str, cache, n_jobs,
              progress, say) -> tuple[dict, Path | None]:
    """The records' features extracted as prediction extracts them, or reused from the cache
    when their content is unchanged; and the cache file (None without a cache)."""
    key = artifacts.sha256_json({"root": str(Path(dataset.root).resolve()), "format": dataset.format,
                                 "config": config.to_json(), "face_detector": detector,
                                 "faces": FRAME_FACES if frames else "as stored"})[:12]
    cache_file = None if cache is None else Path(cache) / f"eval-{dataset.name}-{key}" / f"{split}.npz"
    # Keyed on content (sizes and modification times, CSV pixels), not only on names and
    # labels: other pictures under the same names must not reuse the old features.
    fingerprint = datasets.record_fingerprint(records)
    arrays = None
    if cache_file is not None and cache_file.is_file():
        cached = artifacts.load_npz(cache_file)
        if str(cached.get("fingerprint", "")) == fingerprint and "found" in cached:
            arrays = cached
            say(f"features: reusing {cache_file}")
    if arrays is None:
        arrays = extract_records(records, frames, config, face_config, n_jobs=n_jobs, progress=progress)
        if cache_file is not None:
            with artifacts.output_lock(cache_file):
                artifacts.save_npz(cache_file, fingerprint=np.array(fingerprint), **arrays)
            say(f"features: extracted {len(records)} images into {cache_file}")
    return arrays, cache_file


FRAME_FACES = "the largest face dlib's HOG detector finds, upsample auto (as pipelines.predict); 48x48: itself"


def has_split_folders(dataset) -> bool:
    """False for a class-folder set whose class folders sit directly in its root (no train/,
    test/ ... folders): its record ids then start with an emotion folder's name."""
    if dataset.format != "folders" or set(dataset.splits) - {"train"}:
        return True
    records = dataset.splits.get("train") or []
    if not records:
        return True
    from ensemble_fer.labels import code_for_name

    try:
        code_for_name(Path(records[0].id).parts[0])
    except KeyError:
        return True
    return False


def _left_out(codes: np.ndarray) -> dict[str, int]:
    names = {code: name for name, code in ALL_CODES.items()}
    return {names.get(int(c), str(int(c))): int(n) for c, n in zip(*np.unique(codes, return_counts=True))}


def _analyse_for_eval(images, config, face_config):
    found = bovw.analyse_crops(images, config)
    if face_config.detector == config.detector:
        face_count = found["n_faces"]
    else:
        face_count = _count_faces(found["images"], face_config)
    return {"images": found["images"], "landmarks": found["landmarks"], "bovw": found["bovw"],
            "n_faces": found["n_faces"], "face_count": face_count}


def _count_faces(images, face_config):
    if face_config.detector == "none":
        return np.full(len(images), -1, dtype=np.int16)
    return np.array([len(bovw.locate_faces_in_crop(im, face_config)) for im in images], dtype=np.int16)


def _parallel_chunks(function, images, n_jobs, progress, *args) -> list:
    """``function(chunk, *args)`` over chunks of ``images``, in parallel when it pays; with
    ``progress``, a bar of the images done (tqdm on stderr, as the other stages have, instead
    of joblib's ``[Parallel(...)]`` lines)."""
    from joblib import Parallel, cpu_count, delayed

    workers = cpu_count() if n_jobs is None or n_jobs < 0 else max(1, n_jobs)
    size = min(256, max(16, math.ceil(len(images) / workers)))
    chunks = [images[i:i + size] for i in range(0, len(images), size)]
    if workers == 1 or len(chunks) == 1:
        results = (function(chunk, *args) for chunk in chunks)
    else:
        results = Parallel(n_jobs=n_jobs, return_as="generator")(delayed(function)(c, *args) for c in chunks)
    if not progress:
        return list(results)
    import sys

    from tqdm import tqdm

    out = []
    with tqdm(total=len(images), desc="faces and features", unit="image", file=sys.stderr, leave=False) as bar:
        for chunk, result in zip(chunks, results):
            out.append(result)
            bar.update(len(chunk))
    return out


def frame_face(path) -> np.ndarray | None:
    """The 48x48 crop of the face ``pipelines.predict`` reports first for the picture at
    ``path`` (the largest one dlib's HOG detector finds with ``upsample="auto"``, framed like FER2013;
    a 48x48 picture is the face itself), or None where predict finds no face."""
    from ensemble_fer.features import faces

    gray = image_io.to_gray(image_io.read_image_file(path))
    found = faces.picture_faces(gray, detector="hog")     # predict's defaults
    return faces.crop_face(gray, found[0][0]) if found else None


def extract_records(records, frames: bool, config: bovw.ExtractorConfig, face_config: bovw.ExtractorConfig,
                    n_jobs: int = -1, progress: bool = False) -> dict[str, np.ndarray]:
    """Decode ``records`` and extract what evaluation needs, in parallel chunks.

    ``frames``: the records are pictures whose face is found as predict finds it
    (:func:`frame_face`); ``found`` (one bool per record) is False where there is none, and
    the other arrays hold the found rows only. Otherwise each record is a face crop, decoded
    as the feature store does (every split alike)."""
    images = np.empty((len(records), bovw.IMAGE_SIZE, bovw.IMAGE_SIZE), dtype=np.uint8)
    found = np.ones(len(records), dtype=bool)
    for i, record in enumerate(records):
        if frames and record.path is not None:
            crop = frame_face(record.path)
            found[i] = crop is not None
            if crop is not None:
                images[i] = crop
        else:
            images[i] = datasets.load_image(record)
    images = images[found]
    parts = _parallel_chunks(_analyse_for_eval, images, n_jobs, progress, config, face_config) if len(images) else []
    arrays = {key: np.concatenate([p[key] for p in parts]) for key in parts[0]} if parts else {}
    return {"found": found, **arrays}


def _eval_data_from_store(path: Path, predictor: Predictor, split, detector, n_jobs, progress, say) -> EvalData:
    from ensemble_fer.features.feature_store import FeatureStore

    store = FeatureStore(path)
    if store.config != predictor.extractor_config:
        raise InputError(f"{path}: feature store made with extractor config {store.config.to_json()}, but "
                         f"{predictor.source} needs {predictor.extractor_config.to_json()}; give the raw data instead")
    if split is None:
        split, note = default_split(store.splits, False)
    elif split in store.splits:
        note = f"--split {split}"
    else:
        raise InputError(f"{path}: the feature store has no {split!r} split; it has {store.splits}")
    started = time.time()
    arrays = store.load(split)
    y = predictor.label_set.encode(arrays["labels"])
    inside = y >= 0
    if not inside.any():
        raise InputError(f"{path}: none of the {len(y)} rows of split {split!r} has a label in the model's label "
                         f"set {list(predictor.classes)}")
    left_out = _left_out(arrays["labels"][~inside].astype(np.int64))
    if left_out:
        say(f"note: {int((~inside).sum())} rows left out, their labels are outside the model's label set: {left_out}")
    images = arrays["images"][inside]
    if detector == "none":
        face_found = None
    elif detector == store.config.detector:
        face_found = arrays["n_faces"][inside] == 1
    else:
        face_config = bovw.ExtractorConfig(**{**store.config.to_json(), "detector": detector})
        face_found = np.concatenate(_parallel_chunks(_count_faces, images, n_jobs, progress, face_config)) == 1
    return EvalData(
        split=split, split_note=note + "; a feature store: its features are used as they are",
        ids=arrays["ids"][inside], y=y[inside], images=images, landmarks=arrays["landmarks"][inside],
        bovw=arrays["bovw"][inside], face_found=face_found, face_detector=detector,
        source={"path": str(path), "format": "feature store", "name": store.manifest["dataset"]["name"],
                "kind": "feature store", "ignored_label_folders": store.manifest["dataset"].get("ignored_labels", {})},
        counts={"images": len(y), "evaluated": int(inside.sum()), "no_face": 0,
                "left_out": {"outside_label_set": int((~inside).sum()), "by_label": left_out}},
        features={"cache": None, "store": str(path), "seconds": round(time.time() - started, 2),
                  "extractor": store.config.to_json()})


def evaluate_predictor(predictor: Predictor, data: EvalData, tta: int | None = None, batch_size: int = 256) -> dict:
    """Metrics of ``predictor`` on ``data``: the whole split and its face-found subset, and
    each member's accuracy for an ensemble. Returns the JSON-able result (see pipelines.evaluate).
    ``tta``: test-time views, None for the model's own (:meth:`Predictor.resolve_tta`)."""
    tta = predictor.resolve_tta(tta)
    started = time.time()
    predictor.load_models()
    load_seconds = time.time() - started
    started = time.time()
    member_probas = predictor.member_probas(data.images, data.landmarks, data.bovw, tta=tta, batch_size=batch_size)
    proba = predictor.combine(member_probas)
    predict_seconds = time.time() - started
    classes = list(predictor.classes)
    subsets = {"all": np.ones(len(data.y), dtype=bool)}
    face_note = None
    if data.face_found is None:
        face_note = "no face detector ran (--face-detector none)"
    elif not data.face_found.any():
        face_note = f"the {data.face_detector} detector found exactly one face in none of the images"
    else:
        subsets["face_found"] = data.face_found
    result = {
        "model": predictor.describe(),
        "data": data.source,
        "split": data.split,
        "split_note": data.split_note,
        "tta": int(tta),
        "classes": classes,
        "counts": {**data.counts, "face_found": None if data.face_found is None else int(data.face_found.sum())},
        "face_detector": data.face_detector,
        "subsets": {"all": "whole split", "face_found": metrics.FACE_FOUND_LABEL},
        "all": None,
        "face_found": None,
        "face_found_note": face_note,
        "members": {},
        "features": data.features,
        "seconds": {"features": data.features.get("seconds"), "load_models": round(load_seconds, 2),
                    "predict": round(predict_seconds, 2)},
    }
    for subset, rows in subsets.items():
        result[subset] = metrics.classification_metrics(data.y[rows], proba[rows], classes)
    if len(predictor.members) > 1:
        for name, member_proba in zip(predictor.members, member_probas):
            result["members"][name] = {
                subset: {key: metrics.classification_metrics(data.y[rows], member_proba[rows], classes)[key]
                         for key in ("n", "accuracy", "macro_f1")}
                for subset, rows in subsets.items()}
    return result


def evaluation_summary(result: dict) -> str:
    """A few plain lines for the terminal."""
    model = result["model"]
    tta = f", TTA {result['tta']} views" if result["tta"] else ""
    lines = [f"{model['kind']} {model['path']} on {result['data']['path']}, split {result['split']} "
             f"({result['split_note']}){tta}"]
    left = result["counts"]["left_out"]
    if left["outside_label_set"]:
        lines.append(f"left out {left['outside_label_set']} images outside the label set: {left['by_label']}")
    if result["counts"].get("no_face"):
        lines.append(f"left out {result['counts']['no_face']} images without a face (predict says no_face for them)")
    lines.append(f"{'subset':<44}{'n':>6}{'accuracy':>10}{'macro-F1':>10}")
    for subset, label in (("all", "whole split"), ("face_found", f"face-found subset ({result['face_detector']})")):
        m = result[subset]
        if m is not None:
            lines.append(f"{label:<44}{m['n']:>6}{m['accuracy']:>10.4f}{m['macro_f1']:>10.4f}")
    if result["face_found_note"]:
        lines.append(f"face-found subset: not available ({result['face_found_note']})")
    return "\n".join(lines)


def evaluation_markdown(result: dict, figures: dict[str, str]) -> str:
    model, counts = result["model"], result["counts"]
    lines = [f"# Evaluation: {Path(model['path']).name} on {result['data']['name']} ({result['split']})", ""]
    if model["kind"] == "ensemble":
        parts = ", ".join(f"`{n}` ({w:.3f})" for n, w in zip(model["members"], model["weights"]))
        lines.append(f"Model: ensemble `{model['path']}` of {parts}.")
    else:
        lines.append(f"Model: variant `{model['path']}`.")
    lines += [f"Label set `{model['label_set']}`; features extracted with detector "
              f"`{model['extractor']['detector']}` (the model's extractor config).", ""]
    lines.append(f"Data: `{result['data']['path']}` ({result['data']['format']}), split **{result['split']}** "
                 f"({result['split_note']}). {counts['evaluated']} images evaluated of {counts['images']}.")
    left = counts["left_out"]
    if left["outside_label_set"]:
        lines.append(f"Left out: {left['outside_label_set']} images whose label is outside the label set "
                     f"({left['by_label']}).")
    if counts.get("no_face"):
        lines.append(f"Left out: {counts['no_face']} images in which no face was found ({FRAME_FACES}); "
                     f"`pipelines.predict` reports them as `no_face`.")
    if result["data"].get("ignored_label_folders"):
        lines.append(f"Ignored label folders: {result['data']['ignored_label_folders']}.")
    lines.append(f"Test-time augmentation: {result['tta']} views averaged." if result["tta"] else
                 "No test-time augmentation.")
    lines += ["", "| subset | n | accuracy | macro-F1 | log-loss |", "| --- | ---: | ---: | ---: | ---: |"]
    for subset in ("all", "face_found"):
        m = result[subset]
        if m is not None:
            label = "whole split" if subset == "all" else \
                f"face-found subset ({result['face_detector']} detector; the paper's filtered protocol)"
            lines.append(f"| {label} | {m['n']} | {m['accuracy']:.4f} | {m['macro_f1']:.4f} | {m['log_loss']:.4f} |")
    if result["face_found_note"]:
        lines.append("")
        lines.append(f"Face-found subset: not available ({result['face_found_note']}).")
    lines.append("")
    if result["members"]:
        lines += ["Members:", "", "| member | weight | n | accuracy | macro-F1 | face-found accuracy |",
                  "| --- | ---: | ---: | ---: | ---: | ---: |"]
        for (name, scores), w in zip(result["members"].items(), model["weights"]):
            a = scores["all"]
            face = f"{scores['face_found']['accuracy']:.4f}" if "face_found" in scores else "-"
            lines.append(f"| {name} | {w:.4f} | {a['n']} | {a['accuracy']:.4f} | {a['macro_f1']:.4f} | {face} |")
        lines.append("")
    for subset in ("all", "face_found"):
        m = result[subset]
        if m is None:
            continue
        title = "whole split" if subset == "all" else "face-found subset"
        lines += [f"## Per class: {title}", "", "| class | precision | recall | F1 | support |",
                  "| --- | ---: | ---: | ---: | ---: |"]
        for name, s in m["per_class"].items():
            lines.append(f"| {name} | {s['precision']:.4f} | {s['recall']:.4f} | {s['f1']:.4f} | {s['support']} |")
        lines.append("")
        lines += metrics.confusion_table_markdown(m)
        if subset in figures:
            lines += ["", f"![confusion matrix, {title}]({figures[subset]})"]
        lines.append("")
    return "\n".join(lines)


def write_evaluation(result: dict, out_dir, prefix: str = "") -> dict[str, Path]:
    """Write ``<prefix>evaluation.md``, ``<prefix>evaluation.json`` and the confusion matrix
    figures into ``out_dir``; returns their paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    figures, paths = {}, {}
    for subset, title in (("all", "whole split"), ("face_found", "face-found subset")):
        m = result[subset]
        if m is None:
            continue
        name = f"{prefix}confusion_matrix{'' if subset == 'all' else '_face_found'}.png"
        metrics.plot_confusion_matrix(m["confusion_matrix"], m["classes"], out_dir / name,
                                      title=f"{result['split']}, {title} (n = {m['n']})")
        figures[subset] = name
        paths[f"confusion_matrix_{subset}"] = out_dir / name
    paths["json"] = out_dir / f"{prefix}evaluation.json"
    artifacts.write_json(paths["json"], {**result, "figures": figures})
    paths["markdown"] = out_dir / f"{prefix}evaluation.md"
    with artifacts.atomic_path(paths["markdown"]) as tmp:
        tmp.write_text(evaluation_markdown(result, figures))
    return paths
