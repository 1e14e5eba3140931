"""Classification metrics, their figures and a small markdown report.

* :func:`classification_metrics` -- one JSON-able dict per model and split: accuracy, macro-
  and weighted-F1, log-loss (when probabilities are given), per-class precision/recall/F1/
  support and the confusion matrix (rows true class, columns predicted class), always over
  *every* class of the label set, so a class absent from a split does not shift the others.
* :func:`shared_errors` -- for an ensemble's members, pair by pair: how often both are wrong,
  how often they disagree, and how correlated their errors are.
* :func:`plot_confusion_matrix`, :func:`plot_training_curves` -- PNG figures, written
  atomically (a temporary file beside the target, then a rename).
* :func:`format_report_markdown` -- the models-by-splits table plus one per-class table.

Figures are drawn on a :class:`matplotlib.figure.Figure` with the Agg canvas directly, never
through ``pyplot``: no global backend switch, no figure registry to leak, safe next to other
code that uses matplotlib.

A missing or unusable training-history file raises :class:`~ensemble_fer.errors.InputError`
(``MissingInputError`` when missing) naming the file. Bad arrays, mappings or class names
passed to these functions raise a plain ``ValueError``: the pipelines check the files those
come from first, so one failing here is a bug in the caller and keeps its traceback.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, precision_recall_fscore_support

from ensemble_fer.artifacts import atomic_path
from ensemble_fer.errors import InputError, MissingInputError

LOG_LOSS_EPS = 1e-15
"""Probabilities are clipped to ``[LOG_LOSS_EPS, 1]`` before the log in the log-loss."""

FACE_FOUND_LABEL = "face-found subset (exactly one face detected: the paper's filtered protocol)"
"""What the face-found rows of a report are."""

_ROW_SUM_TOLERANCE = 1e-3
_VALUE_TOLERANCE = 1e-6


# --------------------------------------------------------------------------------------
# metrics
# --------------------------------------------------------------------------------------

def classification_metrics(y_true, proba_or_pred, class_names) -> dict:
    """Metrics of one model on one split, as a JSON-able dict.

    Parameters
    ----------
    y_true : array of int, shape (n,)
        True class indices into ``class_names``.
    proba_or_pred : array, shape (n, n_classes) or (n,)
        Class probabilities (2-D; rows must sum to 1 within 1e-3) or predicted class
        indices (1-D).
    class_names : sequence of str
        The class names, in class-index order. Every class gets a row in the per-class
        table and the confusion matrix even when it is absent from ``y_true``.

    Returns
    -------
    dict with ``n``, ``accuracy``, ``macro_f1``, ``weighted_f1``, ``log_loss`` (``None``
    when predictions rather than probabilities are given; probabilities clipped to
    ``[1e-15, 1]``), ``classes`` (the names, in order), ``per_class`` (name ->
    ``precision``, ``recall``, ``f1``, ``support``) and ``confusion_matrix`` (nested list,
    rows true class, columns predicted class, in the order of ``classes``).
    ``macro_f1`` is the mean F1 of the classes that ``y_true`` holds: a class absent from the
    data has an F1 of 0 whatever the model does, so counting it would score a set of two
    emotions against seven. Their rows stay in ``per_class`` (F-scores 0, ``zero_division=0``
    as in sklearn).
    """
    class_names = [str(name) for name in class_names]
    n_classes = len(class_names)
    if n_classes < 2:
        raise ValueError(f"class_names must name at least 2 classes; got {n_classes}")
    if len(set(class_names)) != n_classes:
        raise ValueError(f"class_names must be unique; got {class_names}")

    y_true = check_class_indices(y_true, n_classes, "y_true")
    if y_true.size == 0:
        raise ValueError("y_true is empty: metrics need at least one sample")

    values = np.asarray(proba_or_pred)
    if values.ndim == 2:
        proba = _as_probabilities(values, n_classes, "proba_or_pred")
        y_pred = proba.argmax(axis=1)
    elif values.ndim == 1:
        proba = None
        y_pred = check_class_indices(values, n_classes, "proba_or_pred")
    else:
        raise ValueError("proba_or_pred must be probabilities of shape (n_samples, n_classes) or "
                         f"predicted class indices of shape (n_samples,); got shape {values.shape}")
    if len(y_pred) != len(y_true):
        raise ValueError(f"proba_or_pred has {len(y_pred)} samples but y_true has {len(y_true)}")

    labels = list(range(n_classes))
    precision, recall, f1, support = precision_recall_fscore_support(
        y_true, y_pred, labels=labels, zero_division=0)
    cm = confusion_matrix(y_true, y_pred, labels=labels)
    log_loss = None
    if proba is not None:
        p_true = np.clip(proba[np.arange(len(y_true)), y_true], LOG_LOSS_EPS, 1.0)
        log_loss = float(-np.mean(np.log(p_true)))
    return {
        "n": int(len(y_true)),
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "macro_f1": float(f1[support > 0].mean()),
        "weighted_f1": float(f1_score(y_true, y_pred, labels=labels, average="weighted",
                                      zero_division=0)),
        "log_loss": log_loss,
        "classes": class_names,
        "per_class": {
            name: {"precision": float(precision[i]), "recall": float(recall[i]),
                   "f1": float(f1[i]), "support": int(support[i])}
            for i, name in enumerate(class_names)
        },
        "confusion_matrix": cm.astype(int).tolist(),
    }


def shared_errors(y_true, probas, names: Sequence[str]) -> list[dict]:
    """How much each pair of members errs on the same rows: what decides whether a member can
    add to an ensemble (two members wrong on the same crops cannot correct each other, however
    accurate each is).

    ``probas`` (n_members, n_samples, n_classes), ``y_true`` (n_samples,) class indices. One dict
    per pair, in order: ``members`` (the two names), ``both_wrong`` (share of rows both get
    wrong), ``disagree`` (share of rows where their top classes differ) and
    ``error_correlation``, the correlation (phi) of their 0/1 error indicators, 1 when they err
    on exactly the same rows, 0 when their errors are independent; None when it is undefined
    (a member right on every row, or wrong on every row)."""
    probas = np.asarray(probas)
    if probas.ndim != 3 or probas.shape[0] != len(names):
        raise ValueError(f"probas must have shape (n_members={len(names)}, n_samples, n_classes); "
                         f"got {probas.shape}")
    y_true = check_class_indices(y_true, probas.shape[2], "y_true")
    top = probas.argmax(axis=2)
    wrong = top != y_true
    pairs = []
    for i in range(len(names)):
        for j in range(i + 1, len(names)):
            a, b = wrong[i].astype(float), wrong[j].astype(float)
            spread = a.std() * b.std()
            correlation = None if spread == 0 else float(np.mean((a - a.mean()) * (b - b.mean())) / spread)
            pairs.append({"members": [names[i], names[j]], "both_wrong": float(np.mean(wrong[i] & wrong[j])),
                          "disagree": float(np.mean(top[i] != top[j])), "error_correlation": correlation})
    return pairs


def check_class_indices(values, n_classes: int, name: str) -> np.ndarray:
    """``values`` as an int64 1-D array of class indices in [0, ``n_classes``); a ValueError naming
    ``name`` otherwise (integral floats are accepted, as labels read from CSV or JSON are)."""
    values = np.asarray(values)
    if values.ndim != 1:
        raise ValueError(f"{name} must be a 1-D array of class indices; got shape {values.shape}")
    if values.size == 0:
        return values.astype(int)
    if values.dtype.kind not in "iub":
        if values.dtype.kind != "f" or not np.all(np.isfinite(values)) \
                or not np.all(values == np.round(values)):
            raise ValueError(f"{name} must hold integer class indices in [0, {n_classes}); "
                             f"got dtype {values.dtype} with non-integer values")
    values = values.astype(np.int64)
    bad = (values < 0) | (values >= n_classes)
    if bad.any():
        raise ValueError(f"{name} must hold class indices in [0, {n_classes}); "
                         f"got {values[bad][0]} (at index {int(np.flatnonzero(bad)[0])})")
    return values


def _as_probabilities(values, n_classes: int, name: str) -> np.ndarray:
    values = np.asarray(values, dtype=np.float64)
    if values.shape[0] == 0:
        raise ValueError(f"{name} is empty: metrics need at least one sample")
    if values.shape[1] != n_classes:
        raise ValueError(f"{name} has {values.shape[1]} columns but class_names names "
                         f"{n_classes} classes")
    check_probabilities(values, name)
    return values


def check_probabilities(values: np.ndarray, name: str, item: str = "row") -> None:
    """ValueError unless ``values`` (n, n_classes) are finite probabilities with rows summing to 1;
    the message names ``name`` and the first offending ``item`` (row, sample...)."""
    if not np.all(np.isfinite(values)):
        row = int(np.flatnonzero(~np.isfinite(values).all(axis=1))[0])
        raise ValueError(f"{name} must be finite; {item} {row} holds NaN or inf")
    if values.min() < -_VALUE_TOLERANCE or values.max() > 1 + _VALUE_TOLERANCE:
        raise ValueError(f"{name} must be probabilities in [0, 1]; got values in "
                         f"[{values.min():.4g}, {values.max():.4g}] (logits?)")
    sums = values.sum(axis=1)
    off = np.abs(sums - 1) > _ROW_SUM_TOLERANCE
    if off.any():
        row = int(np.flatnonzero(off)[0])
        raise ValueError(f"{name} rows must sum to 1 (within {_ROW_SUM_TOLERANCE}); "
                         f"{item} {row} sums to {sums[row]:.6g}")


# --------------------------------------------------------------------------------------
# figures
# --------------------------------------------------------------------------------------

def _new_figure(figsize):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save_png(fig, path) -> Path:
    path = Path(path)
    with atomic_path(path) as tmp:
        # the temporary name ends in .tmp: name the format explicitly
        fig.savefig(tmp, format="png", dpi=110)
    return path


def plot_confusion_matrix(cm, class_names, path, title: str | None = None,
                          normalize: bool = True) -> Path:
    """Draw a confusion matrix (rows true, columns predicted) to a PNG at ``path``.

    Every cell shows the count and, below it, the percentage of its row (of the true
    class). With ``normalize=True`` the colours follow the row percentages (so small classes
    are as readable as large ones), otherwise the counts. Rows with no samples show 0 %.
    Returns ``path``.
    """
    cm = np.asarray(cm)
    class_names = [str(name) for name in class_names]
    k = len(class_names)
    if cm.ndim != 2 or cm.shape != (k, k):
        raise ValueError(f"cm must be a square matrix of shape ({k}, {k}) to match class_names; "
                         f"got shape {cm.shape}")
    if not np.all(np.isfinite(cm)) or (cm < 0).any():
        raise ValueError("cm must hold non-negative finite counts")
    row_sums = cm.sum(axis=1, keepdims=True)
    fractions = np.divide(cm, row_sums, out=np.zeros(cm.shape, dtype=float), where=row_sums > 0)
    shown = fractions if normalize else cm.astype(float)

    size = max(4.0, 0.75 * k + 2.0)
    fig = _new_figure((size + 1.0, size))
    ax = fig.add_subplot()
    vmax = 1.0 if normalize else max(float(shown.max()), 1.0)
    image = ax.imshow(shown, cmap="Blues", vmin=0.0, vmax=vmax)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04,
                 label="fraction of true class" if normalize else "count")
    ax.set_xticks(range(k), labels=class_names, rotation=45, ha="right")
    ax.set_yticks(range(k), labels=class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title if title is not None else "Confusion matrix")
    fontsize = 9 if k <= 8 else 7
    for i in range(k):
        for j in range(k):
            count = cm[i, j]
            count_text = f"{int(count)}" if float(count).is_integer() else f"{count:.3g}"
            dark = shown[i, j] > 0.5 * vmax
            ax.text(j, i, f"{count_text}\n{100 * fractions[i, j]:.1f}%", ha="center",
                    va="center", fontsize=fontsize, color="white" if dark else "black")
    return _save_png(fig, path)


_CURVE_KEYS = {
    "loss": ("loss", "val_loss"),
    "accuracy": ("accuracy", "val_accuracy"),
}
_ALIASES = {"acc": "accuracy", "val_acc": "val_accuracy"}


def read_history_csv(path) -> dict[str, list]:
    """Read a Keras ``CSVLogger`` file into ``{column: [values]}``.

    Numeric cells become floats (empty cells NaN); a column with any non-numeric cell (such
    as ``phase``) keeps its strings.
    """
    path = Path(path)
    if not path.is_file():
        raise MissingInputError(f"{path}: file not found")
    try:
        with open(path, newline="") as handle:
            rows = list(csv.DictReader(handle))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise InputError(f"{path}: not a readable training-history CSV ({exc})") from None
    if not rows:
        raise InputError(f"{path}: no epochs in the training history")
    history: dict[str, list] = {}
    for column in rows[0]:
        cells = [row[column] for row in rows]
        try:
            history[column] = [float(cell) if cell not in ("", None) else math.nan for cell in cells]
        except ValueError:
            history[column] = cells
    return history


def plot_training_curves(history, path, title: str | None = None) -> Path:
    """Plot loss and accuracy per epoch (train and validation) to a PNG at ``path``.

    ``history`` is a ``{name: [value per epoch]}`` mapping (Keras ``History.history``) or
    the path of a Keras ``CSVLogger`` file. Keys ``loss``, ``val_loss``, ``accuracy`` and
    ``val_accuracy`` are drawn (``acc``/``val_acc`` are accepted too); at least one of them
    is needed. Epochs are numbered 1..N along the whole history, so a two-phase run whose
    ``epoch`` column restarts at 0 reads left to right. When a ``phase`` column exists each
    phase is labelled where it starts and a dashed line marks each change of phase.
    """
    source = None
    if isinstance(history, (str, Path)):
        source = Path(history)
        history = read_history_csv(history)

    def problem(message):
        # Read from a file: the file is wrong (InputError naming it); a mapping: the caller is.
        return ValueError(message) if source is None else InputError(f"{source}: {message}")

    if not isinstance(history, Mapping):
        raise ValueError("history must be a mapping {name: [values per epoch]} or the path of a "
                         f"CSVLogger file; got {type(history).__name__}")
    series = {_ALIASES.get(str(k), str(k)): list(v) for k, v in history.items()}
    panels = {panel: [key for key in keys if key in series] for panel, keys in _CURVE_KEYS.items()}
    panels = {panel: keys for panel, keys in panels.items() if keys}
    if not panels:
        raise problem("history must hold at least one of 'loss', 'val_loss', 'accuracy', "
                      f"'val_accuracy'; got keys {sorted(series)}")
    drawn = [key for keys in panels.values() for key in keys]
    lengths = {len(series[key]) for key in drawn + (["phase"] if "phase" in series else [])}
    if len(lengths) != 1:
        raise problem("history columns must have one value per epoch each; got lengths "
                      + ", ".join(f"{key}={len(series[key])}" for key in drawn))
    n_epochs = lengths.pop()
    if n_epochs == 0:
        raise problem("history holds no epochs")
    epochs = np.arange(1, n_epochs + 1)

    starts = []  # (x where a phase starts, its name); the first one gets a label, no line
    if "phase" in series:
        phases = [str(p) for p in series["phase"]]
        starts = [(i + 0.5, phases[i]) for i in range(n_epochs) if i == 0 or phases[i] != phases[i - 1]]

    from matplotlib.ticker import MaxNLocator

    fig = _new_figure((5.0 * len(panels), 4.0))
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, (panel, keys) in zip(axes, panels.items()):
        for key in keys:
            values = np.asarray(series[key], dtype=float)
            ax.plot(epochs, values, marker="o" if n_epochs <= 30 else None, markersize=3,
                    label="validation" if key.startswith("val_") else "train")
        for k, (x, phase) in enumerate(starts):
            if k > 0:
                ax.axvline(x, color="grey", linestyle="--", linewidth=1)
            ax.annotate(phase, (x, 0.0), xycoords=("data", "axes fraction"), xytext=(3, 4),
                        textcoords="offset points", fontsize=8, color="grey")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        # Half an epoch of margin: the phase labels sit at x = start - 0.5, which a one-epoch
        # history's automatic limits would leave far outside the axes (and collapse the layout).
        ax.set_xlim(0.5, n_epochs + 0.5)
        ax.set_xlabel("epoch")
        ax.set_ylabel(panel)
        ax.set_title(panel)
        ax.grid(alpha=0.3)
        ax.legend()
    if title:
        fig.suptitle(title)
    return _save_png(fig, path)


# --------------------------------------------------------------------------------------
# markdown report
# --------------------------------------------------------------------------------------

def format_report_markdown(metrics_by_name: Mapping[str, Mapping], *, title: str | None = None,
                           detail_model: str | None = None, detail_split: str | None = None,
                           digits: int = 4) -> str:
    """A small markdown report: a models-by-splits table and one per-class table.

    ``metrics_by_name`` maps a row name (a member, ``equal-weight``, ``best single``,
    ``ensemble`` ...) to either one :func:`classification_metrics` dict or a mapping
    ``{split: metrics dict}``; a bare metrics dict counts as split ``"val"``. The first
    table has one row per name, in the given order, and the columns ``<split> accuracy`` and
    ``<split> macro-F1`` for every split that any row has (``-`` where a row lacks it).

    The per-class precision/recall/F1/support table is for ``detail_model`` (default:
    ``"ensemble"`` when present, else the last row) on ``detail_split`` (default: that
    row's last split, e.g. ``test`` after ``val``).
    """
    if not metrics_by_name:
        raise ValueError("metrics_by_name must hold at least one model; got an empty mapping")
    by_split = {str(name): _splits_of(name, value) for name, value in metrics_by_name.items()}
    splits: list[str] = []
    for per_split in by_split.values():
        splits += [split for split in per_split if split not in splits]

    lines = [f"# {title}", ""] if title else []
    header = ["model"] + [f"{split} {col}" for split in splits for col in ("accuracy", "macro-F1")]
    lines += [_row(header), _row(["---"] + ["---:"] * (len(header) - 1))]
    for name, per_split in by_split.items():
        cells = [_escape(name)]
        for split in splits:
            metrics = per_split.get(split)
            cells += (["-", "-"] if metrics is None else
                      [f"{metrics['accuracy']:.{digits}f}", f"{metrics['macro_f1']:.{digits}f}"])
        lines.append(_row(cells))

    if detail_model is None:
        detail_model = "ensemble" if "ensemble" in by_split else list(by_split)[-1]
    if detail_model not in by_split:
        raise ValueError(f"detail_model must be one of {list(by_split)}; got {detail_model!r}")
    per_split = by_split[detail_model]
    if detail_split is None:
        detail_split = list(per_split)[-1]
    if detail_split not in per_split:
        raise ValueError(f"detail_split must be one of {list(per_split)} for {detail_model!r}; "
                         f"got {detail_split!r}")
    metrics = per_split[detail_split]
    lines += ["", f"Per class: {_escape(detail_model)}, {detail_split} "
                  f"(n = {metrics.get('n', '?')})", ""]
    lines += [_row(["class", "precision", "recall", "F1", "support"]),
              _row(["---", "---:", "---:", "---:", "---:"])]
    for name, scores in metrics["per_class"].items():
        lines.append(_row([_escape(name), f"{scores['precision']:.{digits}f}",
                           f"{scores['recall']:.{digits}f}", f"{scores['f1']:.{digits}f}",
                           str(scores["support"])]))
    return "\n".join(lines) + "\n"


def confusion_table_markdown(m: Mapping) -> list[str]:
    """The confusion matrix of one :func:`classification_metrics` dict as markdown lines."""
    classes = m["classes"]
    lines = ["Counts (rows: true class, columns: predicted):", "",
             "| true \\ predicted | " + " | ".join(classes) + " |",
             "| --- |" + " ---: |" * len(classes)]
    for name, row in zip(classes, m["confusion_matrix"]):
        lines.append(f"| {name} | " + " | ".join(str(v) for v in row) + " |")
    return lines


def _splits_of(name, value) -> dict[str, Mapping]:
    if not isinstance(value, Mapping):
        raise ValueError(f"metrics_by_name[{name!r}] must be a metrics dict or a mapping "
                         f"{{split: metrics dict}}; got {type(value).__name__}")
    if "accuracy" in value:
        value = {"val": value}
    for split, metrics in value.items():
        if not isinstance(metrics, Mapping) or not {"accuracy", "macro_f1", "per_class"} <= set(metrics):
            raise ValueError(f"metrics_by_name[{name!r}][{split!r}] must be a dict from "
                             "classification_metrics (with accuracy, macro_f1, per_class)")
    return {str(split): metrics for split, metrics in value.items()}


def _escape(text) -> str:
    return str(text).replace("|", "\\|")


def _row(cells: Sequence[str]) -> str:
    return "| " + " | ".join(cells) + " |"
