"""Comparing trained variants side by side: size, validation scores, training time and
measured inference speed. The library behind ``pipelines.compare``.

Variants are found recursively (:func:`ensemble_fer.models.variant_dir.find_variants`, the rule
``pipelines.fit_ensemble`` shares): every folder holding ``config.json``, which training writes
last (so the runs of a hyperparameter search under ``runs/search/`` are found too), hidden
folders (``.run/`` checkpoints) excepted.

Per variant (:func:`compare_variant`):

* scores on **val** are recomputed from the saved ``predictions.npz`` (read and checked by
  :func:`ensemble_fer.ensemble.members.read_member`): accuracy, macro-F1 and val loss (the
  cross-entropy of the saved probabilities, as in ``metrics.json``'s ``log_loss``);
* parameter count, epochs and training time (the sum of epoch times) from ``config.json``;
* **inference images/s**, measured (:func:`measure_speed`): ``models.forward.predict_proba`` on a
  fixed number of rows (default 256), once as a warm-up (graph tracing) and then ``repeats``
  times, best time kept (the least disturbed by other work on the machine). The rows are the
  variant's own val inputs from its feature store (cycled to the row count), or, when that
  store is gone or changed, 256 crops of the bundled sample with their BOVW computed with the
  variant's extractor config; the row says which (``speed_inputs``). Only the network is
  timed, not face detection, landmarks and HOG, which cost far more per image on a CPU (see
  ``benchmarks/``).

Rows are sorted by val accuracy (then macro-F1, then val loss). :func:`write_comparison`
writes ``comparison.csv``, ``comparison.md`` and ``comparison.png`` (val accuracy against
images/s and against parameter count, one labelled point per variant).
"""

from __future__ import annotations

import csv
import io
import math
import platform
import time
from pathlib import Path

import numpy as np

from ensemble_fer import artifacts
from ensemble_fer.ensemble import members
from ensemble_fer.errors import InputError, MissingInputError
from ensemble_fer import metrics
from ensemble_fer.features import bovw
from ensemble_fer.features.feature_store import FeatureStore, FeatureStoreError
from ensemble_fer.inference.predictor import extractor_of
from ensemble_fer.labels import label_set_from_json
from ensemble_fer.models.variant_dir import VariantDir, find_variants

SPEED_IMAGES = 256
REPEATS = 3
BATCH_SIZE = 256
OUTPUT_FILES = ("comparison.csv", "comparison.md", "comparison.png")
CSV_COLUMNS = ("name", "variant", "labels", "n_classes", "feature_store", "n_params", "val_n", "val_loss",
               "val_accuracy", "val_macro_f1", "test_accuracy", "epochs_run", "train_seconds",
               "images_per_second", "speed_inputs", "speed_rows", "path")


def _say_nothing(*args, **kwargs):
    pass


def _key(data) -> str:
    return artifacts.sha256_json(data)[:16]


def _name(folder: Path, root: Path) -> str:
    relative = folder.resolve().relative_to(root.resolve()).as_posix()
    return folder.name if relative == "." else relative


# ------------------------------------------------------------------------------------------
# inference speed
# ------------------------------------------------------------------------------------------

class SpeedInputs:
    """The rows a variant is timed on: its store's val inputs, else sample crops (cached per
    extractor config, so every variant of one store is timed on the same crops)."""

    def __init__(self, n_images: int = SPEED_IMAGES, sample_dir=None):
        if isinstance(n_images, bool) or not isinstance(n_images, (int, np.integer)) or n_images < 1:
            raise InputError(f"speed images must be an int >= 1 (--speed-images); got {n_images!r}")
        self.n_images = int(n_images)
        self.sample_dir = None if sample_dir is None else Path(sample_dir)
        self._cache: dict[str, tuple] = {}

    def for_variant(self, config: dict, where) -> tuple[np.ndarray, np.ndarray, str]:
        """``(images uint8 (n, 48, 48), bovw float32 (n, 2728), description)``."""
        store_info = config["feature_store"]
        key = f"store:{store_info.get('path')}:{store_info.get('manifest_hash')}:{_key(config['labels'])}"
        if key not in self._cache:
            self._cache[key] = self._from_store(store_info, config["labels"])
        found = self._cache[key]
        if found is not None:
            return found
        extractor = extractor_of(config, where)
        key = "sample:" + _key(extractor.to_json())
        if key not in self._cache:
            self._cache[key] = self._from_sample(extractor)
        return self._cache[key]

    def _from_store(self, info: dict, labels: dict):
        try:
            store = FeatureStore(info["path"])
        except (FeatureStoreError, FileNotFoundError, ValueError, KeyError, TypeError):
            return None
        if not store.is_store_of(info) or "val" not in store.splits:
            return None
        val = store.load("val")
        own = np.flatnonzero(label_set_from_json(labels).encode(val["labels"]) >= 0)   # the variant's val rows
        if not len(own):
            return None
        rows = own[np.arange(self.n_images) % len(own)]
        repeated = f", repeated to {self.n_images}" if len(own) < self.n_images else ""
        text = (f"the variant's val rows of {store.path} ({min(len(own), self.n_images)} of its {len(own)} "
                f"rows{repeated})")
        return val["images"][rows], val["bovw"][rows].astype(np.float32), text

    def _from_sample(self, extractor: bovw.ExtractorConfig):
        from ensemble_fer.features.image_io import read_image_file

        files = sorted(self.sample_dir.rglob("*.jpg")) if self.sample_dir is not None and self.sample_dir.is_dir() \
            else []
        if not files:
            raise MissingInputError(f"{self.sample_dir}: no sample crops to time the variant on (its feature store "
                                    f"is gone or changed); give the sample folder (data/sample)")
        n = self.n_images
        picked = [files[i] for i in np.linspace(0, len(files) - 1, min(n, len(files))).round().astype(int)]
        crops = np.stack([read_image_file(f) for f in picked])[np.arange(n) % len(picked)]
        features = bovw.analyse_crops(crops, extractor)
        text = f"{n} crops of the sample {self.sample_dir} with BOVW from the variant's extractor config " \
               f"(its feature store is gone or changed)"
        return features["images"], features["bovw"].astype(np.float32), text


def measure_speed(model, config: dict, images, bovw_rows, repeats: int = REPEATS,
                  batch_size: int = BATCH_SIZE) -> dict:
    """Images per second of :func:`ensemble_fer.models.forward.predict_proba`: one warm-up
    call, then the best of ``repeats`` timed calls."""
    from ensemble_fer.models.forward import predict_proba

    if isinstance(repeats, bool) or not isinstance(repeats, (int, np.integer)) or repeats < 1:
        raise InputError(f"repeats must be an int >= 1 (--repeats); got {repeats!r}")
    predict_proba(model, config, images, bovw_rows, batch_size=batch_size)   # warm-up: tracing
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        predict_proba(model, config, images, bovw_rows, batch_size=batch_size)
        times.append(time.perf_counter() - started)
    n = len(images) if images is not None else len(bovw_rows)
    # Six significant figures, not a fixed number of decimals: a 4 ms call rounded to 1e-5 s
    # is 0.1% off, and the rate is worked out from the very seconds that are reported.
    seconds = [float(f"{t:.6g}") for t in times]
    best = min(seconds)
    return {"images_per_second": n / best if best > 0 else math.inf, "seconds": seconds, "rows": int(n)}


# ------------------------------------------------------------------------------------------
# one variant, all variants
# ------------------------------------------------------------------------------------------

def compare_variant(folder, name: str, inputs: SpeedInputs, repeats: int = REPEATS,
                    batch_size: int = BATCH_SIZE, speed: bool = True) -> dict:
    """One row of the comparison (see the module doc)."""
    folder = Path(folder)
    member = members.read_member(folder)
    config = member.config
    classes = list(config["labels"]["classes"])
    val = member.splits["val"]
    scores = metrics.classification_metrics(val["y"], val["proba"], classes)
    test_accuracy = None
    if "test" in member.splits:
        test = member.splits["test"]
        test_accuracy = metrics.classification_metrics(test["y"], test["proba"], classes)["accuracy"]
    train = config.get("training", {})
    store = config["feature_store"]
    row = {"name": name, "variant": config.get("variant"), "labels": config["labels"].get("name"),
           "n_classes": len(classes), "feature_store": store.get("dataset") or Path(str(store.get("path"))).name,
           "n_params": config.get("model", {}).get("n_params"), "val_n": scores["n"],
           "val_loss": scores["log_loss"], "val_accuracy": scores["accuracy"], "val_macro_f1": scores["macro_f1"],
           "test_accuracy": test_accuracy, "epochs_run": train.get("epochs_run"),
           "train_seconds": train.get("training_seconds"), "images_per_second": None, "speed_inputs": None,
           "speed_rows": None, "path": str(folder), "store_hashes": (store.get("config_hash"),
                                                                     store.get("manifest_hash"))}
    if speed or row["n_params"] is None:
        model = VariantDir(folder).load_model()
        if row["n_params"] is None:
            row["n_params"] = int(model.count_params())
        if speed:
            images, bovw_rows, text = inputs.for_variant(config, folder / "config.json")
            measured = measure_speed(model, config, images, bovw_rows, repeats=repeats, batch_size=batch_size)
            row.update(images_per_second=measured["images_per_second"], speed_inputs=text,
                       speed_rows=measured["rows"], speed_seconds=measured["seconds"])
        del model
    return row


def rank(rows: list[dict]) -> list[dict]:
    """Sorted by val accuracy (descending), then macro-F1 (descending), val loss, name."""
    return sorted(rows, key=lambda r: (-r["val_accuracy"], -r["val_macro_f1"],
                                       r["val_loss"] if r["val_loss"] is not None else math.inf, r["name"]))


def compare_variants(models_dir, *, speed_images: int = SPEED_IMAGES, repeats: int = REPEATS,
                     batch_size: int = BATCH_SIZE, sample_dir=None, speed: bool = True,
                     say=_say_nothing) -> dict:
    """The comparison of every variant under ``models_dir``: ``{"rows": [...] (ranked),
    "speed": {how it was measured}, "notes": [...]}``."""
    root = Path(models_dir)
    folders = find_variants(root, say=say)
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise InputError(f"batch size must be an int >= 1 (--batch-size); got {batch_size!r}")
    inputs = SpeedInputs(speed_images, sample_dir)
    rows = []
    for folder in folders:
        name = _name(folder, root)
        say(f"{name}: scoring" + (" and timing" if speed else ""))
        rows.append(compare_variant(folder, name, inputs, repeats=repeats, batch_size=batch_size, speed=speed))
    rows = rank(rows)
    notes = []
    if len({r["labels"] for r in rows}) > 1:
        notes.append("The variants use different label sets "
                     f"({sorted({r['labels'] for r in rows})}): accuracies over different classes are not "
                     "comparable (chance level differs).")
    if len({r["store_hashes"] for r in rows}) > 1:
        notes.append("The variants were trained on different feature stores: their val splits differ, so their "
                     "scores are not measured on the same images.")
    return {"models": str(root), "rows": rows, "notes": notes,
            "speed": {"measured": bool(speed), "rows": int(speed_images), "repeats": int(repeats),
                      "batch_size": int(batch_size), "device": _device()}}


def _device() -> str:
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        return f"{len(gpus)} GPU(s)"
    import os

    return f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"


# ------------------------------------------------------------------------------------------
# outputs
# ------------------------------------------------------------------------------------------

def _fmt(value, digits=4) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def comparison_csv(rows: list[dict]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for row in rows:
        writer.writerow(["" if row.get(c) is None else (f"{row[c]:.6g}" if isinstance(row[c], float) else row[c])
                         for c in CSV_COLUMNS])
    return buffer.getvalue()


def comparison_markdown(result: dict, figure: str) -> str:
    rows, speed = result["rows"], result["speed"]
    lines = ["# Model comparison", "",
             f"{len(rows)} trained variant{'s' if len(rows) != 1 else ''} under `{result['models']}`, sorted by val "
             f"accuracy. Val scores are recomputed from each variant's `predictions.npz`; val loss is the "
             f"cross-entropy of those probabilities; training time is the sum of the epoch times.", ""]
    if speed["measured"]:
        sources = sorted({r["speed_inputs"] for r in rows if r["speed_inputs"]})
        lines += [f"Inference images/s: `models.forward.predict_proba` on {speed['rows']} rows, "
                  f"batch {speed['batch_size']}, "
                  f"best of {speed['repeats']} timed calls after one warm-up call, on {speed['device']}. The network "
                  f"only: face detection, landmarks and HOG (the BOVW input) are not timed. Inputs: "
                  + "; ".join(sources) + ".", ""]
    for note in result["notes"]:
        lines += [f"**{note}**", ""]
    has_test = any(r["test_accuracy"] is not None for r in rows)
    header = ["#", "variant", "labels", "params", "val loss", "val acc", "val macro-F1"]
    header += ["test acc"] if has_test else []
    header += ["epochs", "train s", "images/s"]
    lines += ["| " + " | ".join(header) + " |",
              "|" + "|".join(" --- " if h in ("variant", "labels") else " ---: " for h in header) + "|"]
    for i, row in enumerate(rows, 1):
        cells = [str(i), f"`{row['name']}`", row["labels"] or "", f"{row['n_params']:,}" if row["n_params"] else "",
                 _fmt(row["val_loss"]), _fmt(row["val_accuracy"]), _fmt(row["val_macro_f1"])]
        cells += [_fmt(row["test_accuracy"])] if has_test else []
        cells += [_fmt(row["epochs_run"]), _fmt(row["train_seconds"], 1), _fmt(row["images_per_second"], 1)]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", f"![val accuracy against inference speed and size]({figure})", ""]
    return "\n".join(lines)


def plot_comparison(rows: list[dict], path, measured: bool = True) -> Path:
    """Val accuracy against images/s (when measured) and against parameter count, log x axes,
    one labelled point per variant."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import EngFormatter, NullFormatter

    panels = ([("images_per_second", "inference images/s (log)")] if measured else []) + \
        [("n_params", "parameters (log)")]
    fig = Figure(figsize=(6.0 * len(panels), 4.8), layout="constrained")
    FigureCanvasAgg(fig)
    for i, (key, label) in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), i + 1)
        points: dict[tuple, list[str]] = {}     # variants at one spot share one label
        for r in rows:
            if r[key]:
                points.setdefault((float(r[key]), r["val_accuracy"]), []).append(r["name"])
        xs = [x for x, _ in points]
        ax.scatter(xs, [y for _, y in points], s=36, color="tab:blue", zorder=3)
        for (x, y), names in points.items():
            ax.annotate("\n".join(names), (x, y), textcoords="offset points", xytext=(5, 4), fontsize=8,
                        va="bottom")
        ax.set_xscale("log")
        if xs:
            # at least a decade wide, so that a power of ten (a labelled major tick) is in view
            low, high = min(xs), max(xs)
            span = max(high / low, 10.0) ** 0.5 * 1.15
            centre = (low * high) ** 0.5
            ax.set_xlim(centre / span, centre * span)
        ax.xaxis.set_major_formatter(EngFormatter(sep=""))
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel(label)
        ax.set_ylabel("val accuracy")
        ax.grid(True, which="both", alpha=0.3)
    fig.suptitle(f"{len(rows)} variants: val accuracy against " +
                 ("inference speed and size" if measured else "size"))
    path = Path(path)
    with artifacts.atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    return path


def check_out(out_dir, force: bool = False) -> None:
    """Refuse ``out_dir`` before any scoring: a file, or a folder already holding comparison
    files (unless ``force``)."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise InputError(f"{out_dir}: --out must be a folder, not a file")
    existing = [out_dir / name for name in OUTPUT_FILES if (out_dir / name).exists()]
    if existing and not force:
        raise InputError(f"{existing[0]}: exists; pass --force to replace it")


def write_comparison(result: dict, out_dir, force: bool = False) -> dict[str, Path]:
    """Write ``comparison.csv``, ``comparison.md`` and ``comparison.png`` into ``out_dir``
    (existing ones replaced only with ``force``), which must lie apart from every variant folder."""
    out_dir = Path(out_dir)
    check_out(out_dir, force)
    artifacts.check_apart(out_dir, {f"variant {row['name']}": row["path"] for row in result["rows"]},
                          output_name="--out")
    paths = {name.split(".")[1]: out_dir / name for name in OUTPUT_FILES}
    # locked, and the three files swapped in as one unit
    with artifacts.output_lock(out_dir), artifacts.replacing_together(paths.values(), force=force) as building:
        plot_comparison(result["rows"], building[paths["png"]], measured=result["speed"]["measured"])
        building[paths["csv"]].write_text(comparison_csv(result["rows"]))
        building[paths["md"]].write_text(comparison_markdown(result, paths["png"].name))
    return paths
