"""The whole method on the bundled sample (``pipelines.demo``, ``ensemble-fer demo``): extract,
train two variants, fit the ensemble, evaluate, and write one readable report (``report.md``,
``report.json``). The steps, outputs and rerun rules: ``pipelines/demo.py``'s module doc.

Above every stage (it calls extraction, training, fitting and evaluation as libraries), so in
the applications layer of docs/ARCHITECTURE.md.
"""

from __future__ import annotations

import time
from pathlib import Path

VARIANTS = (("cnn5", False), ("cnn5", True))
"""The two members: the compact five-layer block without and with the BOVW input."""


def run_demo(out, *, epochs=4, max_minutes=1.5, detector="hog", tta=0, n_jobs=-1, force=False,
             quiet=False) -> dict:
    """Run the four steps into ``out`` and write the report; returns ``report.json``'s dict.

    ``out`` must be absent, empty or a demo's folder (see :func:`check_out`); it is locked for
    the run, so two demos never write one folder."""
    from ensemble_fer import artifacts, paths

    out = Path(out)
    sample = paths.sample_data()
    artifacts.check_apart(out, {"the bundled sample": sample}, output_name="--out")
    check_out(out)
    with artifacts.output_lock(out):
        check_out(out)      # again under the lock: another run may have written it meanwhile
        out.mkdir(parents=True, exist_ok=True)
        artifacts.mark_output(out)
        return _run_steps(out, sample, epochs, max_minutes, detector, tta, n_jobs, force, quiet)


def check_out(out: Path) -> None:
    """Refuse an ``out`` the demo may not write into, ``--force`` or not: a file, or a folder
    that holds something and is no demo's (no output marker and no ``report.json``, which demos
    made before the marker have). The demo writes ``report.md``, ``models/``, ``features/``...
    there, so a user's folder would get them beside (or over) their own files."""
    from ensemble_fer import artifacts

    artifacts.check_own_folder(out, argument="--out", kind="a demo's folder",
                               signs=((artifacts.OUTPUT_MARKER,), ("report.json",)))


def _run_steps(out: Path, sample: Path, epochs, max_minutes, detector, tta, n_jobs, force, quiet) -> dict:
    from ensemble_fer.ensemble import fit as ensemble_fit

    say = (lambda *a, **k: None) if quiet else print
    timings = {}
    started = time.time()

    say("1/4 extracting features of the bundled sample")
    t = time.time()
    store_dir = out / "features" / "sample"
    manifest, store = _extract_sample(sample, store_dir, detector, n_jobs, force, quiet)
    timings["extract"] = round(time.time() - t, 1)
    reused = {"extract": bool(manifest.get("up_to_date"))}

    folders, trained = _train_members(store, out, epochs, max_minutes, force, quiet, say, timings, reused)

    say("3/4 fitting the ensemble weights on val")
    t = time.time()
    ensemble_path = out / "models" / "ensemble.json"
    # the demo refits into its own folder on every run (its documented rerun behaviour)
    fit = ensemble_fit.fit_ensemble(folders, ensemble_path, say=say, force=True)
    timings["fit ensemble"] = round(time.time() - t, 1)

    say("4/4 evaluating the ensemble on the sample's val split (features from the raw images)")
    t = time.time()
    result, files = _evaluate_ensemble(ensemble_path, sample, out, tta, n_jobs, quiet, say)
    timings["evaluate"] = round(time.time() - t, 1)
    timings["total"] = round(time.time() - started, 1)

    report = _report(out, timings, reused, store_dir, manifest, trained, ensemble_path, fit, result, files, tta)
    _write_report(out, report, fit, result, files)
    return report


def _extract_sample(sample, store_dir: Path, detector, n_jobs, force, quiet):
    """Step 1: the sample's feature store (reused when up to date); its manifest and reader."""
    from ensemble_fer.features import bovw, datasets, feature_store

    dataset = datasets.open_dataset(sample)
    manifest = feature_store.extract(dataset, store_dir, bovw.ExtractorConfig(detector=detector), n_jobs=n_jobs,
                                     force=force, progress=not quiet)
    return manifest, feature_store.FeatureStore(store_dir)


def _train_members(store, out: Path, epochs, max_minutes, force, quiet, say, timings, reused):
    """Step 2: each of :data:`VARIANTS` trained (a finished one reused, an interrupted one
    resumed); their folders and what the report says of each."""
    from ensemble_fer import artifacts
    from ensemble_fer.training import train as training

    folders, trained = [], {}
    for i, (block, use_bovw) in enumerate(VARIANTS):
        name = f"{block}+bovw" if use_bovw else block
        say(f"2/4 training {name} ({i + 1}/{len(VARIANTS)}), at most {epochs} epochs / {max_minutes:g} min")
        t = time.time()
        before = _fingerprint(out / "models" / name)
        # resume: a finished variant returns at once, an interrupted one continues
        folder = training.train_variant(store, block, use_bovw, out=out / "models" / name, epochs=epochs,
                                        max_minutes=max_minutes, resume=not force, force=force,
                                        progress=not quiet)
        timings[f"train {name}"] = round(time.time() - t, 1)
        reused[f"train {name}"] = before is not None and before == _fingerprint(folder)
        folders.append(Path(folder))
        config = artifacts.read_json(Path(folder) / "config.json")
        trained[name] = {"folder": str(folder), "epochs_run": config["training"]["epochs_run"],
                         "stopped": config["training"]["stopped"],
                         "training_seconds": config["training"]["training_seconds"],
                         "n_params": config["model"]["n_params"]}
    return folders, trained


def _evaluate_ensemble(ensemble_path: Path, sample, out: Path, tta, n_jobs, quiet, say):
    """Step 4: the ensemble on the sample's val split through ``pipelines.evaluate``'s path
    (features re-extracted from the raw images); the result and the files written."""
    from ensemble_fer.evaluation import evaluate as evaluation
    from ensemble_fer.inference.loading import load_predictor

    predictor = load_predictor(ensemble_path)
    data = evaluation.load_eval_data(sample, predictor, split="val", cache=out / "features", n_jobs=n_jobs,
                                     progress=not quiet, say=say)
    result = evaluation.evaluate_predictor(predictor, data, tta=tta)
    return result, evaluation.write_evaluation(result, out)


def _report(out, timings, reused, store_dir, manifest, trained, ensemble_path, fit, result, files, tta) -> dict:
    """``report.json``'s dict."""
    from ensemble_fer.ensemble import fit as ensemble_fit

    fit_val = fit["results"]["val"][ensemble_fit.ENSEMBLE]["accuracy"]
    return {
        "out": str(out),
        "timings_seconds": timings,
        "reused": reused,
        "feature_store": {"path": str(store_dir), "config": manifest["config"],
                          "splits": {s: {k: v[k] for k in ("n", "kept", "face_found")}
                                     for s, v in manifest["splits"].items()}},
        "variants": trained,
        "ensemble": {"path": str(ensemble_path), "weights": fit["weights"], "results": fit["results"],
                     "cross_validation": fit["cross_validation"], "best_single": fit["best_single"],
                     "face_found": fit["face_found"]},
        "evaluation": result,
        # The evaluation re-extracts val from the raw images with the model's extractor config:
        # it must reproduce the fit-time figure, or the two paths disagree about the features.
        "consistency": {"fit_val_accuracy": fit_val, "evaluate_val_accuracy": result["all"]["accuracy"],
                        "same": abs(fit_val - result["all"]["accuracy"]) < 1e-9 if not tta else None},
        "files": {"report": "report.md", "evaluation": files["markdown"].name,
                  "ensemble_report": "models/ensemble_report.md"},
    }


def _write_report(out: Path, report: dict, fit: dict, result: dict, files: dict) -> None:
    from ensemble_fer import artifacts

    artifacts.write_json(out / "report.json", report)
    with artifacts.atomic_path(out / "report.md") as tmp:
        tmp.write_text(report_markdown(report, fit, result, files))


def _fingerprint(folder):
    from ensemble_fer.models.variant_dir import config_fingerprint

    return config_fingerprint(folder) if (Path(folder) / "config.json").is_file() else None


def _seconds(report: dict, step: str) -> str:
    return "reused" if report["reused"].get(step) else str(report["timings_seconds"][step])


def report_markdown(report: dict, fit: dict, result: dict, files: dict) -> str:
    """``report.md``: what ran, the members and the ensemble, the evaluation, figures and the
    same run with the stage CLIs."""
    lines = _ran_section(report, result)
    lines += _members_section(fit)
    lines += _evaluation_section(report, result)
    lines += _figures_and_commands(report, files)
    return "\n".join(lines)


def _ran_section(report: dict, result: dict) -> list[str]:
    store = report["feature_store"]
    timings = report["timings_seconds"]
    splits = store["splits"]
    tta = f", TTA {result['tta']} views" if result["tta"] else ""
    lines = ["# Demo: the EmoNet-style ensemble on the bundled sample", "",
             f"Made by `python -m pipelines.demo` in {timings['total']:.0f} s"
             + (" (steps marked *reused* were done by an earlier run into the same folder; --force redoes them)."
                if any(report["reused"].values()) else "."), "",
             "> The sample holds 280 training and 105 validation images (FER2013 PublicTest): far too few to "
             "learn facial expressions. The figures show that every stage runs end to end, not how well the "
             "method does (chance is 1/7 = 0.143). The sample has **no test split**, so the ensemble's weights "
             "are fitted on val **and** scored on val: its val figures are optimistic; the cross-validated "
             "estimate below is the honest one.", "",
             "## What ran", "",
             "| step | what | seconds |", "| --- | --- | ---: |",
             f"| 1 extract | `features/sample`: detector `{store['config']['detector']}`; " + ", ".join(
                 f"{s} {v['n']} images ({v['face_found'] if v['face_found'] is not None else '-'} with one face)"
                 for s, v in splits.items()) + f" | {_seconds(report, 'extract')} |"]
    for name, v in report["variants"].items():
        lines.append(f"| 2 train | `models/{name}`: {v['n_params']:,} parameters, {v['epochs_run']} epochs "
                     f"(stopped by {v['stopped']}) | {_seconds(report, f'train {name}')} |")
    lines += [f"| 3 fit | `models/ensemble.json`: weights by differential evolution on val "
              f"(objective accuracy) | {timings['fit ensemble']} |",
              f"| 4 evaluate | the ensemble on the sample's val, features re-extracted from the raw images"
              f"{tta} | {timings['evaluate']} |", ""]
    return lines


def _members_section(fit: dict) -> list[str]:
    from ensemble_fer.ensemble import fit as ensemble_fit

    lines = ["## Members and ensemble (val)", "",
              f"`{ensemble_fit.EQUAL}` averages the members equally; `best single` is the member with the best val "
              f"accuracy.", "", "| model | val accuracy | val macro-F1 |", "| --- | ---: | ---: |"]
    for name, m in fit["results"]["val"].items():
        bold = "**" if name == ensemble_fit.ENSEMBLE else ""
        lines.append(f"| {bold}{name}{bold} | {m['accuracy']:.4f} | {m['macro_f1']:.4f} |")
    cv = fit["cross_validation"]
    if cv:
        lines += ["", f"Cross-validated ensemble accuracy (weights fitted on {cv['n_splits'] - 1}/{cv['n_splits']} of "
                      f"val, scored on the rest): **{cv['mean']:.4f} ± {cv['std']:.4f}**; equal weights on the same "
                      f"folds: {cv['equal_weight_mean']:.4f}."]
    lines += ["", "Learnt weights: " + ", ".join(f"`{n}` {w:.3f}" for n, w in fit["weights"].items()) + ".", ""]
    return lines


def _evaluation_section(report: dict, result: dict) -> list[str]:
    lines = ["## Evaluation (`pipelines.evaluate` path)", "",
              "| subset | n | accuracy | macro-F1 |", "| --- | ---: | ---: | ---: |"]
    for subset, label in (("all", "whole val split"),
                          ("face_found", f"face-found subset ({result['face_detector']} detector, the paper's "
                                         f"filtered protocol)")):
        m = result[subset]
        if m is not None:
            lines.append(f"| {label} | {m['n']} | {m['accuracy']:.4f} | {m['macro_f1']:.4f} |")
    if result["face_found_note"]:
        lines.append(f"| face-found subset | - | not available: {result['face_found_note']} | |")
    same = report["consistency"]["same"]
    if same is not None:
        lines += ["", "Re-extracting val from the raw images " + (
            "reproduces the fit-time ensemble accuracy exactly." if same else
            f"gives {report['consistency']['evaluate_val_accuracy']:.4f}, the fit-time features "
            f"{report['consistency']['fit_val_accuracy']:.4f}: the two feature paths disagree (a bug to report).")]
    lines += ["", "### Per class (ensemble, whole val split)", "",
              "| class | precision | recall | F1 | support |", "| --- | ---: | ---: | ---: | ---: |"]
    for name, s in result["all"]["per_class"].items():
        lines.append(f"| {name} | {s['precision']:.4f} | {s['recall']:.4f} | {s['f1']:.4f} | {s['support']} |")
    return lines


def _figures_and_commands(report: dict, files: dict) -> list[str]:
    store = report["feature_store"]
    lines = ["", "## Figures", ""]
    for key, title in (("confusion_matrix_all", "Confusion matrix, whole val split"),
                       ("confusion_matrix_face_found", "Confusion matrix, face-found subset")):
        if key in files:
            lines += [f"![{title}]({files[key].name})", ""]
    for name in report["variants"]:
        lines += [f"Training curves of `{name}`: [models/{name}/curves.png](models/{name}/curves.png)", ""]
    lines += ["More: [evaluation.md](evaluation.md), [models/ensemble_report.md](models/ensemble_report.md), "
              "`report.json`.", "",
              "## The same with the stage CLIs", "", "```",
              f"python -m pipelines.extract_features --out {report['out']}/features/sample "
              f"--detector {store['config']['detector']}"]
    for name in report["variants"]:
        block, _, use_bovw = name.partition("+")
        lines.append(f"python -m pipelines.train_variant --block {block}{' --bovw' if use_bovw else ''} "
                     f"--features {report['out']}/features/sample --epochs "
                     f"{report['variants'][name]['epochs_run']} --out {report['out']}/models/{name}")
    lines += [f"python -m pipelines.fit_ensemble --models {report['out']}/models",
              f"python -m pipelines.evaluate --model {report['out']}/models/ensemble.json "
              f"--split val --out {report['out']}", "```", ""]
    return lines
