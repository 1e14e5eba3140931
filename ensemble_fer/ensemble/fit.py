"""Fitting the weighted ensemble of trained variants on their saved validation predictions,
and its report. The library behind ``pipelines.fit_ensemble``.

:func:`fit_ensemble` reads each member's ``config.json`` and ``predictions.npz`` (never its
model, :mod:`ensemble_fer.ensemble.members`), checks that the members were trained on one
feature store (``config_hash`` and ``manifest_hash``) with one label set and that their
``val_``/``test_`` ids and labels line up row for row, fits a
:class:`~ensemble_fer.ensemble.weighted.WeightedEnsemble` on the validation probabilities only
(with a cross-validated estimate over val folds), and writes ``<name>.json`` (``ensemble.json``
by default, :mod:`ensemble_fer.ensemble.ensemble_file`) with ``<name>_report.{md,json}`` and
``<name>_confusion_matrix.png`` beside it. With ``tta`` > 0 the members' probabilities are not
the saved ones: each member's model is loaded and predicts the feature store's val (and test)
rows averaged over ``tta`` test-time views, the weights are fitted on those, and the file
records ``tta`` so that the predictor averages the same views. The members must lie inside
the folder of the JSON file (it names them by relative paths without ``..``), and the SHA-256
of each one's ``config.json`` and ``model.keras`` is recorded so that loading refuses a swapped
model.
Existing outputs are refused unless ``force``; the four files are built as temporary siblings
and swapped in as one unit at the end (:func:`ensemble_fer.artifacts.replacing_together`).
"""

from __future__ import annotations

import contextlib
import time
import warnings
from pathlib import Path

import numpy as np

from ensemble_fer import artifacts
from ensemble_fer.ensemble.ensemble_file import (EnsembleMember, check_ensemble_outputs, ensemble_outputs,
                                                 feature_store_summary, member_hashes, member_path, write_ensemble)
from ensemble_fer.ensemble.members import check_members, read_member
from ensemble_fer.ensemble.weighted import OBJECTIVES, WeightedEnsemble
from ensemble_fer.errors import InputError
from ensemble_fer.features.augment import check_tta
from ensemble_fer import metrics
from ensemble_fer.labels import label_set_from_json

EQUAL = "equal-weight"
ENSEMBLE = "ensemble"
CV_SPLITS = 5
OPTIMISTIC = ("The learnt ensemble's **val** figures are optimistic: its weights were fitted on val. "
              "For an honest estimate read the cross-validated accuracy (weights fitted on k-1 folds of "
              "val, scored on the held-out fold) or the test split.")


def _score_rows(probas: np.ndarray, y: np.ndarray, names: list[str], fitted: WeightedEnsemble | None,
                best: str, classes: list[str]) -> dict[str, dict]:
    rows = {name: metrics.classification_metrics(y, probas[i], classes) for i, name in enumerate(names)}
    if len(names) > 1:
        rows[EQUAL] = metrics.classification_metrics(y, probas.mean(axis=0), classes)
        rows[f"best single ({best})"] = rows[best]
    ensemble = probas[0] if fitted is None else fitted.predict_proba(probas)
    rows[ENSEMBLE] = metrics.classification_metrics(y, ensemble, classes)
    return rows


def fit_ensemble(folders, out, objective: str = "accuracy", seed: int = 0, cv_splits: int = CV_SPLITS,
                 say=print, force: bool = False, tta: int = 0, features=None) -> dict:
    """Fit the weighted ensemble of the variants in ``folders`` on their val predictions and
    write ``out`` (``ensemble.json``) with its report beside it (see :func:`ensemble_outputs`).
    Returns the report dict. Existing outputs are refused unless ``force``, before any work;
    replaced ones stay in place until the new files are complete. ``tta`` > 0: the members
    predict the rows of the feature store ``features`` (default: the one they record) with
    that many test-time views, and the weights are fitted on those probabilities."""
    if objective not in OBJECTIVES:
        raise InputError(f"objective must be one of {OBJECTIVES}; got {objective!r}")
    tta = check_tta(tta)
    started = time.time()
    out = Path(out)
    check_ensemble_outputs(out, force)
    paths = {Path(folder): member_path(folder, out) for folder in folders}
    members = [read_member(folder, say) for folder in folders]
    splits = check_members(members, stores_checked_later=bool(tta))
    # hashed now, before the fit, so that a file replaced during the fit is noticed at load
    hashes = {m.name: member_hashes(m.folder) for m in members}
    if tta:
        _predict_with_views(members, splits, tta, features, say)
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

    best = _best_single(val, val_probas, names, classes)

    results, face_results = _scores_by_split(members, splits, names, None if single else fitted, best, classes,
                                             flags_faces)

    cv = None if single else _cross_validate(val_probas, val["y"], objective, seed, cv_splits, notes)
    shared = None if single else metrics.shared_errors(val["y"], val_probas, names)

    weights = {name: float(w) for name, w in zip(names, fitted.weights_)}
    detail_split = splits[-1]
    report = {
        "members": names,
        "member_folders": [str(m.folder) for m in members],
        "weights": weights,
        "objective": objective,
        "seed": seed,
        "tta": tta,
        "single_member": single,
        "best_single": best,
        "classes": classes,
        "label_set": label_set.name,
        "splits": splits,
        "n": {split: int(len(first.splits[split]["y"])) for split in splits},
        "feature_store": feature_store_summary(first.config["feature_store"]),
        "results": results,
        "face_found": face_results or None,
        "face_found_note": _face_note(flags_faces, face_results, splits),
        "cross_validation": cv,
        "shared_errors": shared,
        "notes": notes,
        "confusion_matrix_split": detail_split,
        "seconds": None,
    }

    _write_outputs(out, force, report, members, paths, hashes, fitted, started)
    return report


def _best_single(val: dict, val_probas: np.ndarray, names: list[str], classes: list[str]) -> str:
    """The best single member, chosen as one would without a test split: on val accuracy,
    ties broken by val log-loss, then by name."""
    val_scores = {name: metrics.classification_metrics(val["y"], val_probas[i], classes)
                  for i, name in enumerate(names)}
    return min(names, key=lambda n: (-val_scores[n]["accuracy"], val_scores[n]["log_loss"], n))


def _scores_by_split(members, splits, names, fitted, best, classes, flags_faces) -> tuple[dict, dict]:
    """Every model's scores per split (``fitted`` None: one member), and on the face-found rows
    where the store flags faces."""
    first = members[0]
    results, face_results = {}, {}
    for split in splits:
        rows = first.splits[split]
        probas = np.stack([m.splits[split]["proba"] for m in members])
        results[split] = _score_rows(probas, rows["y"], names, fitted, best, classes)
        face = rows["face_found"]
        if flags_faces and face.any():
            face_results[split] = {"n": int(face.sum()), "of": int(len(face)),
                                   "rows": _score_rows(probas[:, face], rows["y"][face], names, fitted, best,
                                                       classes)}
    return results, face_results


def _cross_validate(val_probas: np.ndarray, y: np.ndarray, objective: str, seed: int, cv_splits: int,
                    notes: list[str]) -> dict | None:
    """The cross-validated accuracy of the fit on val, and equal weights on the same folds
    (what the learnt weights must beat); None, with a note, when no class has two val rows."""
    from sklearn.model_selection import StratifiedKFold

    # StratifiedKFold needs some class with at least k rows
    k = min(cv_splits, int(np.bincount(y).max()))
    if k < 2:
        notes.append("No cross-validated estimate: no class has two val rows.")
        return None
    with warnings.catch_warnings():
        # StratifiedKFold warns when a class has fewer than k rows; the folds are still valid.
        warnings.filterwarnings("ignore", message="The least populated class")
        cv = WeightedEnsemble(objective=objective, seed=seed).cross_validated_accuracy(
            val_probas, y, n_splits=k, seed=seed)
    folds = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The least populated class")
        equal = [float(np.mean(val_probas[:, held].mean(axis=0).argmax(axis=1) == y[held]))
                 for _, held in folds.split(np.zeros(len(y)), y)]
    cv["equal_weight_mean"] = float(np.mean(equal))
    return cv


def _write_outputs(out: Path, force: bool, report: dict, members, paths: dict, hashes: dict,
                   fitted: WeightedEnsemble, started: float) -> None:
    """``ensemble.json``, its report (JSON, markdown) and confusion matrix, built as temporaries
    and swapped in together."""
    first = members[0]
    classes, detail_split = report["classes"], report["confusion_matrix_split"]
    outputs = ensemble_outputs(out)
    files = {key: path.name for key, path in outputs.items() if key != "ensemble"}
    entries = [EnsembleMember(m.name, paths[m.folder], m.folder, m.config["variant"], float(w), hashes[m.name])
               for m, w in zip(members, fitted.weights_)]
    cm_metrics = report["results"][detail_split][ENSEMBLE]
    # Each file is built as a temporary sibling; all four are swapped in as one unit when the
    # block ends (artifacts.replacing_together: journalled, so a kill half-way is finished by
    # the next reader), the ensemble JSON last. An error before that leaves every old file.
    order = [key for key in outputs if key != "ensemble"] + ["ensemble"]
    with contextlib.ExitStack() as stack:
        for path in outputs.values():
            stack.enter_context(artifacts.output_lock(path))
        together = stack.enter_context(artifacts.replacing_together([outputs[key] for key in order], force=force))
        building = {key: together[outputs[key]] for key in outputs}
        metrics.plot_confusion_matrix(cm_metrics["confusion_matrix"], classes, building["confusion_matrix"],
                                      title=f"ensemble: {detail_split} (n = {cm_metrics['n']})")
        report["seconds"] = round(time.time() - started, 2)
        artifacts.write_json(building["json"], report)
        building["markdown"].write_text(ensemble_report_markdown(report, files["confusion_matrix"]))
        write_ensemble(building["ensemble"], entries, fitted, objective=report["objective"], seed=report["seed"],
                       labels=first.config["labels"], extractor=first.config["feature_store"]["extractor"],
                       feature_store=report["feature_store"], scores=_summary_scores(report), report=files,
                       tta=report["tta"])


def _predict_with_views(members, splits: list[str], tta: int, features, say) -> None:
    """Replace each member's saved ``proba`` of every split by its prediction of the same rows
    of the feature store, averaged over ``tta`` test-time views."""
    from ensemble_fer.features.augment import predict_views
    from ensemble_fer.features.feature_store import FeatureStore

    recorded = members[0].config["feature_store"]
    path = Path(features if features is not None else recorded["path"])
    store = FeatureStore(path)
    if store.config_hash != recorded.get("config_hash"):
        raise InputError(f"{path}: not the feature store the members were trained on (config_hash "
                         f"{store.config_hash}, they record {recorded.get('config_hash')}); pass the features they "
                         f"were trained on")
    models = {member.name: _variant_model(member) for member in members}   # loaded once, used per split
    loaded = {split: store.load(split) for split in splits if split in store.splits}
    for member in members:
        if not store.is_store_of(member.config["feature_store"]):
            check_store_of(member, models[member.name], store, loaded.get("val"), say)
    for split in splits:
        arrays = loaded[split] if split in loaded else store.load(split)   # a missing split: the store's error
        rows, missing = _store_rows(arrays, members[0].splits[split]["ids"])
        if missing:
            raise InputError(f"{path}: its {split} split lacks {len(missing)} of the members' rows (e.g. id "
                             f"{missing[0]}); pass the features they were trained on")
        images, landmarks = arrays["images"][rows], arrays["landmarks"][rows]
        for member in members:
            say(f"{member.name}: predicting {split} ({len(rows)} rows) with {tta} test-time views")
            n_classes = len(member.config["labels"]["classes"])
            member.splits[split]["proba"] = predict_views([models[member.name]], images, landmarks, None, tta,
                                                          n_classes)[0]


def _store_rows(arrays: dict, ids) -> tuple[np.ndarray | None, list]:
    """The rows of a store split's ``arrays`` holding ``ids``, in that order, and the ids it lacks."""
    row_of = {i: k for k, i in enumerate(arrays["ids"].tolist())}
    ids = ids.tolist()
    missing = [i for i in ids if i not in row_of]
    return (None if missing else np.array([row_of[i] for i in ids])), missing


STORE_CHECK_TOLERANCE = 1e-3
"""Largest difference of a probability between a member's saved val predictions and its network
run again on a store's val crops for the store to count as the one it was trained on: float32
on two CPUs differs by ~1e-6; other crops (another copy of the data) by far more."""


def check_store_of(member, model, store, val, say) -> None:
    """Accept ``store`` for a member whose record names another manifest of the same extractor
    (an extraction of the same images made elsewhere, or before store identities were by
    content) only if its network, run on the store's val crops, gives back the val predictions
    it saved when trained; ``InputError`` otherwise."""
    from ensemble_fer.features.augment import predict_views

    recorded = member.config["feature_store"].get("manifest_hash")
    saved = member.splits["val"]
    problem = None
    if val is None:
        problem = "it has no val split to check the member on"
    else:
        rows, missing = _store_rows(val, saved["ids"])
        if missing:
            problem = f"its val split lacks {len(missing)} of the member's rows"
        else:
            n_classes = len(member.config["labels"]["classes"])
            proba = predict_views([model], val["images"][rows], None, val["bovw"][rows], 0, n_classes)[0]
            difference = float(np.abs(proba - saved["proba"]).max())
            if difference > STORE_CHECK_TOLERANCE:
                problem = (f"the member's network on its val crops differs from its saved predictions by up to "
                           f"{difference:.3g} (more than {STORE_CHECK_TOLERANCE:g})")
    if problem is not None:
        raise InputError(f"{store.path}: not the feature store {member.folder} was trained on (manifest_hash "
                         f"{store.manifest_hash}, it records {recorded}): {problem}; pass the features it was "
                         f"trained on")
    say(f"{member.name}: records manifest {recorded}, not {store.path}'s {store.manifest_hash}; its network on "
        f"that store's val crops gives back its saved predictions (largest difference {difference:.1e}): "
        f"the same crops")


def _variant_model(member):
    """``(inputs, predict)`` of a member's network for :func:`~ensemble_fer.features.augment.predict_views`:
    the variant's ``model.keras``, checked and loaded once."""
    from ensemble_fer.models import forward
    from ensemble_fer.models.variant_dir import VariantDir, input_names

    variant = VariantDir(member.folder)
    config = variant.read_config()
    variant.check_model()
    model = variant.load_model()
    inputs = input_names(config)

    def predict(images, bovw_rows, batch_size):
        proba = forward.predict_proba(model, config, images=images, bovw=bovw_rows, batch_size=batch_size)
        return forward.check_proba(proba, config, member.folder)

    return inputs, predict


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


def error_correlation_text(pair: dict, digits: int) -> str:
    """A pair of :func:`~ensemble_fer.metrics.shared_errors` as the report and the summary print it."""
    correlation = pair["error_correlation"]
    return "undefined" if correlation is None else f"{correlation:.{digits}f}"


def ensemble_report_markdown(report: dict, figure: str) -> str:
    names, splits = report["members"], report["splits"]
    store = report["feature_store"]
    lines = ["# Ensemble report", ""]
    lines.append(f"Members ({len(names)}): " + ", ".join(f"`{n}`" for n in names)
                 + f". Trained on feature store `{store['path']}` (dataset {store.get('dataset')}, "
                   f"config {store['config_hash']}, manifest {store['manifest_hash']}); label set "
                   f"`{report['label_set']}`. Weights fitted on **val** (n = {report['n']['val']}) by differential "
                   f"evolution, objective `{report['objective']}`, seed {report['seed']}.")
    if report.get("tta"):
        lines.append(f"Every member's probabilities here are averaged over {report['tta']} test-time views "
                     f"(its model predicting the feature store's rows), as the ensemble predicts by default.")
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
    if report.get("shared_errors"):
        lines += ["## Shared errors (val)", "",
                  "Members wrong on the same rows cannot correct each other: a member adds to the ensemble when "
                  "it is accurate *and* its errors correlate little with the others'. Error correlation: the "
                  "correlation of the two members' right/wrong indicators (1: wrong on exactly the same rows).", "",
                  "| members | both wrong | disagree | error correlation |", "| --- | ---: | ---: | ---: |"]
        for pair in report["shared_errors"]:
            lines.append(f"| {pair['members'][0]} / {pair['members'][1]} | {pair['both_wrong']:.4f} | "
                         f"{pair['disagree']:.4f} | {error_correlation_text(pair, 3)} |")
        lines.append("")
    cm_split = report["confusion_matrix_split"]
    lines += [f"## Confusion matrix (ensemble, {cm_split})", "", f"![confusion matrix]({figure})", ""]
    lines += metrics.confusion_table_markdown(report["results"][cm_split][ENSEMBLE])
    lines.append("")
    if report["face_found"]:
        lines += [f"## {metrics.FACE_FOUND_LABEL[0].upper()}{metrics.FACE_FOUND_LABEL[1:]}", ""]
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
