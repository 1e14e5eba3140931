"""Scoring trained models: fitting the ensemble on its members' saved validation predictions,
and evaluating a variant or an ensemble on a dataset. The library behind
``pipelines.fit_ensemble``, ``pipelines.evaluate`` and ``pipelines.demo``.

Fitting (:func:`fit_ensemble`)
    Reads each member's ``config.json`` and ``predictions.npz`` (never its model), checks that
    the members were trained on one feature store (``config_hash`` and ``manifest_hash``) with
    one label set and that their ``val_``/``test_`` ids and labels line up row for row, fits a
    :class:`~ensemble_fer.ensemble.weighted.WeightedEnsemble` on the validation probabilities only, and
    writes ``<name>.json`` (``ensemble.json`` by default) with ``<name>_report.{md,json}`` and
    ``<name>_confusion_matrix.png`` beside it. The members must lie inside the folder of the
    JSON file (it names them by relative paths without ``..``), and the SHA-256 of each one's
    ``config.json`` and ``model.keras`` is recorded so that loading refuses a swapped model.
    Existing outputs are refused unless ``force``; the four files are built as temporary
    siblings and swapped in together at the end, the JSON last.

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
    ``pipelines.predict`` finds it (dlib HOG, upsampled once, the largest face; a 48x48
    picture is the face itself), so that every split scores what ``predict`` says about the
    same pictures; pictures where predict finds no face are left out and counted (``no_face``). A feature store folder is
    accepted as data too (its arrays are used as they are, when its extractor config is the
    model's). Metrics are reported on the whole split and on its face-found subset (exactly one
    face detected: the EmoNet paper's filtered protocol). Face counts come from the model's
    detector, or from dlib's HOG detector when the model was trained without one (the subset is
    a property of the images, so it should not vanish with a detector-less model).
"""

from __future__ import annotations

import contextlib
import math
import os
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ensemble_fer import artifacts

from ensemble_fer.features import bovw

from ensemble_fer.features import datasets

from ensemble_fer.evaluation import metrics
from ensemble_fer.ensemble.weighted import OBJECTIVES, WeightedEnsemble
from ensemble_fer.errors import InputError, MissingInputError
from ensemble_fer.inference.predictor import ENSEMBLE_FORMAT, ENSEMBLE_VERSION, Predictor, member_hashes, read_variant_config
from ensemble_fer.labels import ALL_CODES, label_set_from_json

PREDICTION_KEYS = ("ids", "y", "proba", "face_found")
EQUAL = "equal-weight"
ENSEMBLE = "ensemble"
CV_SPLITS = 5
FACE_FOUND_LABEL = "face-found subset (exactly one face detected: the paper's filtered protocol)"
OPTIMISTIC = ("The learnt ensemble's **val** figures are optimistic: its weights were fitted on val. "
              "For an honest estimate read the cross-validated accuracy (weights fitted on k-1 folds of "
              "val, scored on the held-out fold) or the test split.")


def _say_nothing(*args, **kwargs):
    pass


# ==========================================================================================
# members: what fit_ensemble reads
# ==========================================================================================

@dataclass
class MemberPredictions:
    """A trained variant's saved predictions: ``splits[split]`` holds ids, y, proba, face_found."""

    name: str
    folder: Path
    config: dict
    splits: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)


def discover_variants(models_dir, say=_say_nothing) -> list[Path]:
    """Variant folders directly under ``models_dir``: those with a ``config.json`` (written last
    by training). Folders of unfinished runs are mentioned through ``say`` and skipped."""
    models_dir = Path(models_dir)
    if not models_dir.is_dir():
        raise MissingInputError(f"{models_dir}: no such folder of trained variants")
    found = []
    for folder in sorted(p for p in models_dir.iterdir() if p.is_dir()):
        if (folder / "config.json").is_file():
            found.append(folder)
        elif (folder / ".run").exists() or (folder / "model.keras").exists():
            say(f"note: {folder} skipped: no config.json (training unfinished or interrupted)")
    if not found:
        raise MissingInputError(f"{models_dir}: holds no trained variant (no sub-folder with config.json); "
                                f"train some with `python -m pipelines.train_variant`")
    return found


def read_member(folder, say=_say_nothing) -> MemberPredictions:
    """A variant's config and checked predictions (finite probabilities whose rows sum to 1)."""
    folder = Path(folder)
    config = read_variant_config(folder)
    n_classes = len(config["labels"]["classes"])
    path = folder / "predictions.npz"
    if not path.is_file():
        raise MissingInputError(f"{path}: file not found; the variant's probabilities are missing "
                                f"(retrain it, or leave it out with --variants)")
    arrays = artifacts.load_npz(path)
    member = MemberPredictions(folder.name, folder, config)
    for split in ("val", "test"):
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
                             f"face_found {face.shape} (config.json lists {n_classes} classes)")
        if n == 0:
            if split == "val":
                raise InputError(f"{path}: the val split is empty (0 rows); the ensemble is fitted on val")
            say(f"warning: {path}: the test split is empty; reporting without test")
            continue
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
        if y.min() < 0 or y.max() >= n_classes:
            raise InputError(f"{path}: {split}_y holds class indices outside 0..{n_classes - 1}")
        member.splits[split] = {"ids": ids.astype(str), "y": y.astype(np.int64),
                                "proba": proba.astype(np.float64), "face_found": face.astype(bool)}
    if "val" not in member.splits:
        raise InputError(f"{path}: has no val_ predictions; the ensemble is fitted on val")
    return member


def check_members(members: list[MemberPredictions]) -> list[str]:
    """Refuse members that cannot be combined; returns the splits they all have."""
    if not members:
        raise InputError("no members to combine")
    names = [m.name for m in members]
    if len(set(names)) != len(names):
        raise InputError(f"two members share a folder name ({names}); rename one")
    first = members[0]
    ref_store, ref_labels = first.config["feature_store"], first.config["labels"]
    for member in members[1:]:
        store = member.config["feature_store"]
        for key in ("config_hash", "manifest_hash"):
            if store.get(key) != ref_store.get(key):
                raise InputError(
                    f"{member.folder}: trained on feature store {store.get('path')} ({key} {store.get(key)}) but "
                    f"{first.folder} on {ref_store.get('path')} ({key} {ref_store.get(key)}); members of an "
                    f"ensemble must share one store (choose members with --variants, or retrain)")
        if label_set_from_json(member.config["labels"]) != label_set_from_json(ref_labels):
            raise InputError(f"{member.folder}: label set {member.config['labels']['name']!r} "
                             f"{member.config['labels']['classes']} differs from {first.folder}'s "
                             f"{ref_labels['name']!r} {ref_labels['classes']}; members must share one")
        for split in ("val", "test"):
            if (split in member.splits) != (split in first.splits):
                has, lacks = (member, first) if split in member.splits else (first, member)
                raise InputError(f"{lacks.folder}: has no {split} predictions but {has.folder} has; members "
                                 f"must be scored on the same splits")
            if split not in member.splits:
                continue
            ours, theirs = member.splits[split], first.splits[split]
            if len(ours["ids"]) != len(theirs["ids"]) or not np.array_equal(ours["ids"], theirs["ids"]):
                if len(ours["ids"]) == len(theirs["ids"]) and set(ours["ids"]) == set(theirs["ids"]):
                    detail = "the same ids in another order"
                else:
                    extra = sorted(set(ours["ids"]) - set(theirs["ids"]))
                    lacking = sorted(set(theirs["ids"]) - set(ours["ids"]))
                    detail = (f"{len(ours['ids'])} vs {len(theirs['ids'])} rows; "
                              f"{len(extra)} ids only here{f' (e.g. {extra[0]})' if extra else ''}, "
                              f"{len(lacking)} missing{f' (e.g. {lacking[0]})' if lacking else ''}")
                raise InputError(f"{member.folder / 'predictions.npz'}: {split} ids do not line up with "
                                 f"{first.folder}'s ({detail}); members must be scored on the same rows")
            if not np.array_equal(ours["y"], theirs["y"]):
                row = int(np.flatnonzero(ours["y"] != theirs["y"])[0])
                raise InputError(f"{member.folder / 'predictions.npz'}: {split}_y differs from {first.folder}'s "
                                 f"at id {ours['ids'][row]}; members must share labels")
    return [split for split in ("val", "test") if split in first.splits]


# ==========================================================================================
# fitting
# ==========================================================================================

def _score_rows(probas: np.ndarray, y: np.ndarray, names: list[str], fitted: WeightedEnsemble | None,
                best: str, classes: list[str]) -> dict[str, dict]:
    rows = {name: metrics.classification_metrics(y, probas[i], classes) for i, name in enumerate(names)}
    if len(names) > 1:
        rows[EQUAL] = metrics.classification_metrics(y, probas.mean(axis=0), classes)
        rows[f"best single ({best})"] = rows[best]
    ensemble = probas[0] if fitted is None else fitted.predict_proba(probas)
    rows[ENSEMBLE] = metrics.classification_metrics(y, ensemble, classes)
    return rows


def ensemble_outputs(out) -> dict[str, Path]:
    """The files :func:`fit_ensemble` writes for the ensemble file ``out``: the JSON itself and,
    named after it so that two ensembles in one folder never share a report, its report
    (``<stem>_report.md``, ``<stem>_report.json``) and figure (``<stem>_confusion_matrix.png``)."""
    out = Path(out)
    return {"ensemble": out, "markdown": out.with_name(f"{out.stem}_report.md"),
            "json": out.with_name(f"{out.stem}_report.json"),
            "confusion_matrix": out.with_name(f"{out.stem}_confusion_matrix.png")}


def check_ensemble_outputs(out, force: bool) -> None:
    """Refuse, before any work, to replace an existing ensemble or report without ``force``."""
    existing = [str(path) for path in ensemble_outputs(out).values() if path.exists() or path.is_symlink()]
    if existing and not force:
        raise InputError(f"{existing[0]}: exists{f' (and {len(existing) - 1} more of its files)' if len(existing) > 1 else ''}; "
                         f"pass --force to replace the ensemble and its report, or choose another --out")
    if Path(out).is_dir():
        raise InputError(f"{out}: is a folder; --out names the ensemble's .json file")


def member_path(folder, out) -> str:
    """``folder`` relative to the ensemble file ``out``'s folder; refused when it is not inside
    it (an ensemble names only models that ship with it: see :func:`inference.member_folder`).
    Compared without resolving links, so a member may be a link placed in that folder."""
    base = os.path.abspath(Path(out).parent)
    relative = os.path.relpath(os.path.abspath(folder), base)
    if relative == os.curdir or relative == os.pardir or relative.startswith(os.pardir + os.sep):
        raise InputError(f"{folder}: not inside {base}, the folder of the ensemble file {out}; members must be "
                         f"sub-folders of it (write --out into the folder that holds the variants, as the default "
                         f"<models>/ensemble.json does)")
    return relative


def fit_ensemble(folders, out, objective: str = "accuracy", seed: int = 0, cv_splits: int = CV_SPLITS,
                 say=print, force: bool = False) -> dict:
    """Fit the weighted ensemble of the variants in ``folders`` on their val predictions and
    write ``out`` (``ensemble.json``) with its report beside it (see :func:`ensemble_outputs`).
    Returns the report dict. Existing outputs are refused unless ``force``, before any work;
    replaced ones stay in place until the new files are complete."""
    if objective not in OBJECTIVES:
        raise InputError(f"objective must be one of {OBJECTIVES}; got {objective!r}")
    started = time.time()
    out = Path(out)
    check_ensemble_outputs(out, force)
    paths = {Path(folder): member_path(folder, out) for folder in folders}
    members = [read_member(folder, say) for folder in folders]
    splits = check_members(members)
    # hashed now, before the fit, so that a file replaced during the fit is noticed at load
    hashes = {m.name: member_hashes(m.folder) for m in members}
    names = [m.name for m in members]
    first = members[0]
    label_set = label_set_from_json(first.config["labels"])
    classes = list(label_set.classes)
    extractor = first.config["feature_store"]["extractor"]
    flags_faces = extractor.get("detector", "none") != "none"

    val = first.splits["val"]
    val_probas = np.stack([m.splits["val"]["proba"] for m in members])
    single = len(members) == 1
    notes = []
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="WeightedEnsemble fitted on a single member")
        fitted = WeightedEnsemble(objective=objective, seed=seed).fit(val_probas, val["y"])
    if single:
        notes.append(f"Single member: the ensemble is {names[0]} itself (weight 1.0); nothing was fitted and "
                     f"there is nothing to compare it with.")
        say(f"warning: only one member ({first.folder}): the ensemble is that variant, weight 1.0")

    # The best single member is chosen as one would without a test split: on val accuracy,
    # ties broken by val log-loss, then by name.
    val_scores = {name: metrics.classification_metrics(val["y"], val_probas[i], classes)
                  for i, name in enumerate(names)}
    best = min(names, key=lambda n: (-val_scores[n]["accuracy"], val_scores[n]["log_loss"], n))

    results, face_results = {}, {}
    for split in splits:
        rows = first.splits[split]
        probas = np.stack([m.splits[split]["proba"] for m in members])
        results[split] = _score_rows(probas, rows["y"], names, None if single else fitted, best, classes)
        face = rows["face_found"]
        if flags_faces and face.any():
            face_results[split] = {"n": int(face.sum()), "of": int(len(face)),
                                   "rows": _score_rows(probas[:, face], rows["y"][face], names,
                                                       None if single else fitted, best, classes)}

    cv = None
    n_val = len(val["y"])
    # StratifiedKFold needs some class with at least k rows
    k = min(cv_splits, int(np.bincount(val["y"]).max()))
    if single:
        pass
    elif k < 2:
        notes.append("No cross-validated estimate: no class has two val rows.")
    else:
        with warnings.catch_warnings():
            # StratifiedKFold warns when a class has fewer than k rows; the folds are still valid.
            warnings.filterwarnings("ignore", message="The least populated class")
            cv = WeightedEnsemble(objective=objective, seed=seed).cross_validated_accuracy(
                val_probas, val["y"], n_splits=k, seed=seed)
        # the same folds scored with equal weights: what the learnt weights must beat
        from sklearn.model_selection import StratifiedKFold

        folds = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="The least populated class")
            equal = [float(np.mean(val_probas[:, held].mean(axis=0).argmax(axis=1) == val["y"][held]))
                     for _, held in folds.split(np.zeros(n_val), val["y"])]
        cv["equal_weight_mean"] = float(np.mean(equal))

    weights = {name: float(w) for name, w in zip(names, fitted.weights_)}
    detail_split = splits[-1]
    store = first.config["feature_store"]
    report = {
        "members": names,
        "member_folders": [str(m.folder) for m in members],
        "weights": weights,
        "objective": objective,
        "seed": seed,
        "single_member": single,
        "best_single": best,
        "classes": classes,
        "label_set": label_set.name,
        "splits": splits,
        "n": {split: int(len(first.splits[split]["y"])) for split in splits},
        "feature_store": {k: store.get(k) for k in ("path", "dataset", "config_hash", "manifest_hash")},
        "results": results,
        "face_found": face_results or None,
        "face_found_note": _face_note(flags_faces, face_results, splits),
        "cross_validation": cv,
        "notes": notes,
        "confusion_matrix_split": detail_split,
        "seconds": None,
    }

    outputs = ensemble_outputs(out)
    files = {key: path.name for key, path in outputs.items() if key != "ensemble"}
    ensemble_json = {
        "format": ENSEMBLE_FORMAT,
        "version": ENSEMBLE_VERSION,
        "members": [{"name": m.name, "path": paths[m.folder], "variant": m.config["variant"], "weight": float(w),
                     **hashes[m.name]}
                    for m, w in zip(members, fitted.weights_)],
        "objective": objective,
        "seed": seed,
        "classes": classes,
        "labels": first.config["labels"],
        "extractor": extractor,
        "feature_store": report["feature_store"],
        "ensemble": fitted.to_json(),
        "scores": _summary_scores(report),
        "report": files,
        "versions": artifacts.package_versions(),
    }
    cm_metrics = results[detail_split][ENSEMBLE]
    # Each file is built as a temporary sibling; the swaps happen together when the block
    # ends, in reverse order of entry, so the ensemble JSON (entered first) comes last and the
    # report it points to exists by then. An error before that leaves every old file as it was.
    with contextlib.ExitStack() as stack:
        for path in outputs.values():
            stack.enter_context(artifacts.output_lock(path))
        building = {key: stack.enter_context(artifacts.replacing(path, force=force))
                    for key, path in outputs.items()}
        metrics.plot_confusion_matrix(cm_metrics["confusion_matrix"], classes, building["confusion_matrix"],
                                      title=f"ensemble: {detail_split} (n = {cm_metrics['n']})")
        report["seconds"] = round(time.time() - started, 2)
        artifacts.write_json(building["json"], report)
        building["markdown"].write_text(ensemble_report_markdown(report, files["confusion_matrix"]))
        artifacts.write_json(building["ensemble"], ensemble_json)
    return report


def _face_note(flags_faces: bool, face_results: dict, splits: list[str]) -> str | None:
    if not flags_faces:
        return "the feature store was made with --detector none: it flags no faces, so there is no face-found subset"
    missing = [split for split in splits if split not in face_results]
    if missing:
        return f"the detector found exactly one face in no row of {' and '.join(missing)}"
    return None


def _summary_scores(report: dict) -> dict:
    scores = {}
    for split, rows in report["results"].items():
        for name in (ENSEMBLE, EQUAL, f"best single ({report['best_single']})"):
            if name in rows:
                key = "best_single" if name.startswith("best single") else name.replace("-", "_")
                scores.setdefault(split, {})[key] = {"accuracy": rows[name]["accuracy"],
                                                     "macro_f1": rows[name]["macro_f1"]}
    cv = report["cross_validation"]
    if cv:
        scores["val_cross_validated_accuracy"] = {"mean": cv["mean"], "std": cv["std"], "n_splits": cv["n_splits"]}
    return scores


def ensemble_report_markdown(report: dict, figure: str) -> str:
    names, splits = report["members"], report["splits"]
    store = report["feature_store"]
    lines = ["# Ensemble report", ""]
    lines.append(f"Members ({len(names)}): " + ", ".join(f"`{n}`" for n in names)
                 + f". Trained on feature store `{store['path']}` (dataset {store.get('dataset')}, "
                   f"config {store['config_hash']}, manifest {store['manifest_hash']}); label set "
                   f"`{report['label_set']}`. Weights fitted on **val** (n = {report['n']['val']}) by differential "
                   f"evolution, objective `{report['objective']}`, seed {report['seed']}.")
    lines.append("")
    for note in report["notes"]:
        lines += [f"**{note}**", ""]
    if not report["single_member"]:
        lines += [OPTIMISTIC, ""]
    if "test" not in splits:
        lines += ["There is no test split in this feature store: every figure below is on val.", ""]
    table = metrics.format_report_markdown(_by_model(report["results"]), detail_model=ENSEMBLE,
                                           detail_split=report["confusion_matrix_split"])
    lines += ["## Accuracy and macro-F1", "",
              f"`{EQUAL}` averages the members with equal weights; `best single` is the member with the best "
              f"val accuracy (`{report['best_single']}`).", ""]
    lines += [table.rstrip("\n"), ""]
    lines += ["## Learnt weights", "", "| member | weight |", "| --- | ---: |"]
    lines += [f"| {n} | {w:.4f} |" for n, w in report["weights"].items()]
    lines.append("")
    cv = report["cross_validation"]
    if cv:
        scores = ", ".join(f"{s:.4f}" for s in cv["scores"])
        lines += ["## Cross-validated estimate (val)", "",
                  f"Weights refitted on {cv['n_splits'] - 1} of {cv['n_splits']} stratified folds of val and scored on "
                  f"the held-out fold: accuracy **{cv['mean']:.4f} ± {cv['std']:.4f}** (folds: {scores}). Equal "
                  f"weights on the same folds: {cv['equal_weight_mean']:.4f}. In-sample val accuracy of the learnt "
                  f"ensemble: {report['results']['val'][ENSEMBLE]['accuracy']:.4f}.", ""]
    cm_split = report["confusion_matrix_split"]
    lines += [f"## Confusion matrix (ensemble, {cm_split})", "", f"![confusion matrix]({figure})", ""]
    lines += _confusion_table(report["results"][cm_split][ENSEMBLE])
    lines.append("")
    if report["face_found"]:
        lines += [f"## {FACE_FOUND_LABEL[0].upper()}{FACE_FOUND_LABEL[1:]}", ""]
        lines += ["| model | " + " | ".join(f"{s} n | {s} accuracy | {s} macro-F1" for s in report["face_found"])
                  + " |", "| --- |" + " ---: | ---: | ---: |" * len(report["face_found"])]
        for name in report["results"][splits[0]]:
            cells = []
            for split, face in report["face_found"].items():
                m = face["rows"][name]
                cells += [f"{face['n']}/{face['of']}", f"{m['accuracy']:.4f}", f"{m['macro_f1']:.4f}"]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        lines.append("")
    if report["face_found_note"]:
        lines += [f"Face-found subset: not available ({report['face_found_note']}).", ""]
    return "\n".join(lines)


def _by_model(results: dict) -> dict:
    """{split: {model: metrics}} -> {model: {split: metrics}}, models in first-seen order."""
    out: dict = {}
    for split, rows in results.items():
        for name, m in rows.items():
            out.setdefault(name, {})[split] = m
    return out


def _confusion_table(m: dict) -> list[str]:
    classes = m["classes"]
    lines = ["Counts (rows: true class, columns: predicted):", "",
             "| true \\ predicted | " + " | ".join(classes) + " |",
             "| --- |" + " ---: |" * len(classes)]
    for name, row in zip(classes, m["confusion_matrix"]):
        lines.append(f"| {name} | " + " | ".join(str(v) for v in row) + " |")
    return lines


# ==========================================================================================
# evaluating a predictor on data
# ==========================================================================================

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
    available = [s for s in datasets.SPLITS if dataset.splits.get(s)]
    if split is None:
        split, note = default_split(available, "train" in available, has_split_folders(dataset))
    elif split == "all":
        note = "every image of the data, all splits together"
    elif split in available:
        note = f"asked for (--split {split})"
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
    found = arrays["found"].astype(bool)
    if not found.any():
        raise InputError(f"{data}: no face found in any of the {len(records)} images of split {split!r} (as "
                         f"pipelines.predict finds faces: dlib HOG, upsampled once)")
    if not found.all():
        say(f"note: {int((~found).sum())} images left out: no face found in them (predict says no_face), e.g. "
            f"{records[int(np.flatnonzero(~found)[0])].id}")
    face_found = None if detector == "none" else arrays["face_count"] == 1
    return EvalData(
        split=split, split_note=note, ids=np.array([r.id for r in records])[found], y=y[inside][found],
        images=arrays["images"], landmarks=arrays["landmarks"], bovw=arrays["bovw"], face_found=face_found,
        face_detector=detector,
        source={"path": str(data), "format": dataset.format, "name": dataset.name, "kind": "data",
                "ignored_label_folders": dataset.ignored_labels},
        counts={"images": len(codes), "evaluated": int(found.sum()), "no_face": int((~found).sum()),
                "left_out": {"outside_label_set": int((~inside).sum()), "by_label": left_out}},
        features={"cache": None if cache_file is None else str(cache_file),
                  "seconds": round(time.time() - started, 2), "extractor": config.to_json()})


FRAME_FACES = "the largest face dlib's HOG detector finds, upsampled once (as pipelines.predict); 48x48: itself"


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
    """``function(chunk, *args)`` over chunks of ``images``, in parallel when it pays."""
    from joblib import Parallel, cpu_count, delayed

    workers = cpu_count() if n_jobs is None or n_jobs < 0 else max(1, n_jobs)
    size = min(256, max(16, math.ceil(len(images) / workers)))
    chunks = [images[i:i + size] for i in range(0, len(images), size)]
    if workers == 1 or len(chunks) == 1:
        return [function(chunk, *args) for chunk in chunks]
    return Parallel(n_jobs=n_jobs, verbose=5 if progress else 0)(delayed(function)(c, *args) for c in chunks)


def frame_face(path) -> np.ndarray | None:
    """The 48x48 crop of the face ``pipelines.predict`` reports first for the picture at
    ``path`` (the largest one dlib's HOG detector finds, upsampled once, framed like FER2013;
    a 48x48 picture is the face itself), or None where predict finds no face."""
    from ensemble_fer.features import faces

    gray = datasets.to_gray(datasets.read_image_file(path))
    if gray.shape == (bovw.IMAGE_SIZE, bovw.IMAGE_SIZE):
        return gray
    boxes = faces.detect_faces(gray, detector="hog", upsample=1)
    return faces.crop_face(gray, boxes[0]) if boxes else None


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
        note = f"asked for (--split {split})"
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
        split=split, split_note=note + " (a feature store: its features are used as they are)",
        ids=arrays["ids"][inside], y=y[inside], images=images, landmarks=arrays["landmarks"][inside],
        bovw=arrays["bovw"][inside], face_found=face_found, face_detector=detector,
        source={"path": str(path), "format": "feature store", "name": store.manifest["dataset"]["name"],
                "kind": "feature store", "ignored_label_folders": store.manifest["dataset"].get("ignored_labels", {})},
        counts={"images": len(y), "evaluated": int(inside.sum()), "no_face": 0,
                "left_out": {"outside_label_set": int((~inside).sum()), "by_label": left_out}},
        features={"cache": None, "store": str(path), "seconds": round(time.time() - started, 2),
                  "extractor": store.config.to_json()})


def evaluate_predictor(predictor: Predictor, data: EvalData, tta: int = 0, batch_size: int = 256) -> dict:
    """Metrics of ``predictor`` on ``data``: the whole split and its face-found subset, and
    each member's accuracy for an ensemble. Returns the JSON-able result (see pipelines.evaluate)."""
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
        "subsets": {"all": "whole split", "face_found": FACE_FOUND_LABEL},
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
        lines += _confusion_table(m)
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
