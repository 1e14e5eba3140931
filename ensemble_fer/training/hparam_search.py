"""Hyperparameter grid search over :func:`ensemble_fer.training.train.train_variant`.

A grid is a JSON object mapping :class:`~ensemble_fer.training.config.TrainConfig` fields to
lists of values (or a
list of such objects, as :class:`sklearn.model_selection.ParameterGrid` takes), e.g.::

    {"lr": [1e-3, 3e-4], "batch_size": [32, 64], "dropout": [0.3, 0.5], "epochs": [30]}

Every combination is one ordinary variant folder (``run-000``, ``run-001``, ...) under the
search folder, so each run is resumable exactly as ``train_variant`` is, and any run can be
used as an ensemble member or compared (``pipelines.compare`` finds them recursively).

Layout of the search folder::

    search.json   what the search is (variant, label set, feature store hashes) and the
                  run folder of every parameter combination ever requested, with its status
    run-NNN/      one variant folder per combination (see docs/ARCHITECTURE.md)
    results.csv   the runs ranked by val accuracy (then macro-F1, then val loss)
    results.md    the same table, with the search's description

Stable mapping: a combination keeps its folder forever. Its key is the canonical JSON of its
parameters *after* ``TrainConfig``'s normalisation (``1e-3`` and ``0.001``
are one combination), so reordering the grid, or adding values to it, never renames or
retrains a run; new combinations get the next free numbers.

Reruns: a finished run (its ``config.json`` says ``complete``) is skipped; an interrupted one
(a checkpoint in ``.run/`` but no complete outputs, or outputs cut short by the per-run time
budget) continues with ``resume=True``; a run whose training raised ``InputError`` (e.g. its
learning rate made it diverge) is recorded as failed, shown in the table, and skipped on
reruns unless ``retry_failed``; any other exception is a bug and stops the search with its
traceback.

Every combination's arguments are checked before the first run trains, so a bad value (or an
unknown parameter name) stops the search at once with one line naming it.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from sklearn.base import BaseEstimator

from ensemble_fer import artifacts
from ensemble_fer.models import networks
from ensemble_fer.models.variant_dir import FINISHED, INCOMPLETE, RESUMABLE, STALE, VariantDir
from ensemble_fer.errors import InputError, MissingInputError
from ensemble_fer.features.feature_store import FeatureStore
from ensemble_fer.labels import get_label_set
from ensemble_fer.training import train as training
from ensemble_fer.training.config import MAX_MINUTES, TrainConfig
from ensemble_fer.training.data import load_splits

SEARCH_FILE = "search.json"
RESULTS_CSV = "results.csv"
RESULTS_MD = "results.md"
SEARCH_FORMAT = "ensemble_fer.hparam_search"
SEARCH_VERSION = 1
RUN_PREFIX = "run-"

NOT_SEARCHABLE = ("store", "block", "bovw", "out", "labels", "resume", "force", "max_minutes", "progress",
                  "callbacks", "augment_config", "precision")
"""``train_variant`` arguments a grid may not vary: what the search is about (the feature
store, the network, the label set: runs scored on other classes cannot be ranked together),
where and how it runs (folders, resume, time budget, progress, numeric precision), and
objects that are not JSON (callbacks, an augmentation config)."""

METRIC_COLUMNS = ("val_accuracy", "val_macro_f1", "val_loss", "epochs_run", "kept_epoch", "train_seconds")
FAILED, PENDING = "failed", "pending"
RUN_ERRORS = (InputError,)
"""Exceptions that fail one run without stopping the search: a problem with the run's arguments
(a learning rate that makes training diverge, see ``training``). Anything else is a bug and
propagates (the run is left ``interrupted``, the search stops with the traceback)."""


def searchable_parameters() -> tuple[str, ...]:
    """The :class:`TrainConfig` fields a grid may name."""
    return tuple(sorted(f.name for f in dataclasses.fields(TrainConfig) if f.name not in NOT_SEARCHABLE))


def check_grid(grid, where="grid") -> list[dict]:
    """Validate a grid's shape and parameter names; returns it as a list of dicts.

    ``where`` names the grid in messages (its file). Raises ``InputError`` (one line).
    """
    grids = [grid] if isinstance(grid, Mapping) else grid
    if not isinstance(grids, Sequence) or isinstance(grids, (str, bytes)) or not grids:
        raise InputError(f"{where}: a grid must be a JSON object mapping parameter names to lists of values "
                         f"(or a non-empty list of such objects); got {type(grid).__name__}")
    allowed = searchable_parameters()
    out = []
    for i, part in enumerate(grids):
        at = where if len(grids) == 1 else f"{where}[{i}]"
        if not isinstance(part, Mapping) or not part:
            raise InputError(f"{at}: must be a non-empty object mapping parameter names to lists of values")
        unknown = sorted(str(k) for k in part if k not in allowed)
        if unknown:
            fixed = [k for k in unknown if k in NOT_SEARCHABLE]
            why = (f" ({', '.join(fixed)}: fixed for a whole search, given on the command line or not searchable)"
                   if fixed else "")
            raise InputError(f"{at}: unknown parameter{'s' if len(unknown) > 1 else ''} {unknown}{why}; "
                             f"allowed: {list(allowed)}")
        for name, values in part.items():
            if not isinstance(values, list) or not values:
                raise InputError(f"{at}: {name!r} must be a non-empty list of values; got {values!r}")
        out.append(dict(part))
    return out


def load_grid(path) -> list[dict]:
    """Read and validate a grid file (JSON); see :func:`check_grid`."""
    path = Path(path)
    if not path.is_file():
        raise MissingInputError(f"{path}: grid file not found")
    return check_grid(artifacts.read_json(path), where=str(path))


def _key(params: dict) -> str:
    return json.dumps(params, sort_keys=True)


def _run_index(name: str) -> int:
    try:
        return int(name[len(RUN_PREFIX):])
    except ValueError:
        return -1


class HparamSearch(BaseEstimator):
    """Grid search of one variant's training hyperparameters.

    Parameters
    ----------
    block : str or None
        Image block, or None for the BOVW-only network (then ``bovw`` must be True).
    bovw : bool
        Whether the network has the BOVW input.
    grid : dict, list of dicts, or path of a JSON file
        Parameter names (see :func:`searchable_parameters`) to lists of values.
    labels : str
        Label set of every run (``fer7``, ``valence3`` or a comma-separated subset).
    max_minutes_per_run : float, optional
        Wall-clock budget of each run in this call; a run cut short resumes on the next call.
    retry_failed : bool
        Train again the runs that failed before (otherwise they keep their failure).
    progress : bool
        Print one line per run and ``train_variant``'s progress.

    Attributes (after :meth:`fit`)
    ------------------------------
    results_ : list of dict
        One row per run, ranked (see :func:`rank_rows`).
    best_run_ : Path or None
        Folder of the best-ranked run with results.
    best_params_ : dict or None
        Its parameters.
    best_score_ : float or None
        Its val accuracy.
    out_ : Path
        The search folder.
    """

    def __init__(self, block=None, bovw=False, grid=None, *, labels="fer7", max_minutes_per_run=None,
                 retry_failed=False, progress=True):
        self.block = block
        self.bovw = bovw
        self.grid = grid
        self.labels = labels
        self.max_minutes_per_run = max_minutes_per_run
        self.retry_failed = retry_failed
        self.progress = progress

    # ------------------------------------------------------------------ planning

    def _grid(self) -> tuple[list[dict], str]:
        if isinstance(self.grid, (str, Path)):
            return load_grid(self.grid), str(self.grid)
        if self.grid is None:
            raise InputError("grid: no grid given; pass a dict of parameter lists or a JSON file")
        return check_grid(self.grid), "grid"

    def plan(self) -> tuple[list[dict], list[dict]]:
        """The grid as read, and every combination of it as resolved ``train_variant``
        arguments, checked (what :meth:`fit` runs).

        The combinations hold only the grid's parameters, normalised as :class:`TrainConfig`
        normalises them; duplicates (after normalisation) are dropped. Raises ``InputError``
        naming the grid and the combination when a value is refused.
        """
        grids, where = self._grid()
        return grids, self._plan(grids, where)

    def _plan(self, grids: list[dict], where: str) -> list[dict]:
        from sklearn.model_selection import ParameterGrid

        MAX_MINUTES("max_minutes_per_run", self.max_minutes_per_run)
        base = TrainConfig(block=self.block, bovw=self.bovw, labels=self.labels)
        combos, seen = [], set()
        for params in ParameterGrid(grids):
            try:
                config = dataclasses.replace(base, **params).to_json()
            except InputError as exc:
                raise InputError(f"{where}: {exc} (in the combination {_key(params)})") from None
            resolved = {name: config[name] for name in sorted(params)}
            key = _key(resolved)
            if key not in seen:
                seen.add(key)
                combos.append(resolved)
        return combos

    # ------------------------------------------------------------------ running

    def fit(self, store, out=None) -> HparamSearch:
        """Run (or continue) the search on a feature store; ``out``: the search folder
        (default ``runs/search/<variant>``). Returns self."""
        say = print if self.progress else (lambda *a, **k: None)
        variant = networks.variant_name(self.block, self.bovw)
        grids, combos = self.plan()          # every argument checked before anything is read
        label_set = get_label_set(self.labels)
        if not isinstance(store, FeatureStore):
            store = FeatureStore(store)
        out = Path(out) if out is not None else Path("runs") / "search" / variant
        # a search inside the store would write into what every run reads (and fail each of them)
        artifacts.check_apart(out, {"--features": store.path}, output_name="out")
        artifacts.check_own_folder(out, argument="out", kind="a search folder", signs=((SEARCH_FILE,),))
        # One search at a time writes a folder: search.json is read, updated and rewritten.
        with artifacts.output_lock(out):
            return self._fit(store, out, variant, grids, combos, label_set, say)

    def _fit(self, store: FeatureStore, out: Path, variant: str, grids, combos, label_set, say) -> HparamSearch:
        identity = {"variant": variant, "block": self.block, "bovw": bool(self.bovw), "labels": label_set.name,
                    "feature_store": {"config_hash": store.config_hash, "manifest_hash": store.manifest_hash}}
        record = self._read_record(out, identity)
        record["features"] = str(store.path)
        record["grid"] = grids
        names = self._assign(record, combos)
        if any(run_state(out / name) != FINISHED for name in names):
            # The store and the label set are the same for every run: a problem with them (a
            # class of val without training rows, an empty split) stops the search here,
            # before anything is written, instead of failing every run.
            load_splits(store, label_set)
        self._save(out, record)
        artifacts.mark_output(out)

        n = len(names)
        say(f"search {out}: {variant}, labels {label_set.name}, {n} run{'s' if n != 1 else ''} in the grid "
            f"({len(record['runs'])} recorded)")
        for i, name in enumerate(names, 1):
            entry = record["runs"][name]
            folder = out / name
            state = run_state(folder)
            if state in (FINISHED, INCOMPLETE):
                _check_run_args(folder, entry["params"])
            if state == FINISHED:
                entry.update(status=FINISHED, error=None)
                say(f"[{i}/{n}] {name} {_key(entry['params'])}: finished, skipped")
                continue
            if entry.get("status") == FAILED and not self.retry_failed:
                say(f"[{i}/{n}] {name} {_key(entry['params'])}: failed before ({entry.get('error')}); skipped "
                    f"(retry_failed / --retry-failed trains it again)")
                continue
            resume = state in (RESUMABLE, INCOMPLETE)
            force = state == STALE
            verb = "resuming" if resume else "training"
            say(f"[{i}/{n}] {name} {_key(entry['params'])}: {verb}")
            started = time.time()
            entry.update(status="running", error=None)
            self._save(out, record)
            try:
                training.train_variant(store, self.block, self.bovw, out=folder, labels=self.labels,
                                       max_minutes=self.max_minutes_per_run, progress=self.progress,
                                       resume=resume, force=force, **entry["params"])
            except RUN_ERRORS as exc:
                message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                entry.update(status=FAILED, error=f"{type(exc).__name__}: {message}")
                say(f"[{i}/{n}] {name}: failed: {entry['error']}")
            except BaseException:
                entry.update(status="interrupted")
                self._finish(out, record)
                raise
            else:
                entry["status"] = run_state(folder)
                if entry["status"] not in (FINISHED, INCOMPLETE):
                    entry.update(status=FAILED, error="train_variant returned without writing config.json")
            entry["seconds_last_call"] = round(time.time() - started, 2)
            self._finish(out, record)
        self._finish(out, record)
        self.out_ = out
        return self

    def _read_record(self, out: Path, identity: dict) -> dict:
        # again under the lock: another run may have written it meanwhile
        artifacts.check_own_folder(out, argument="out", kind="a search folder", signs=((SEARCH_FILE,),))
        path = out / SEARCH_FILE
        if not path.is_file():
            return {"format": SEARCH_FORMAT, "version": SEARCH_VERSION, **identity, "runs": {}}
        record = artifacts.read_json(path)
        if record.get("format") != SEARCH_FORMAT:
            raise InputError(f"{path}: not a search file (format is not {SEARCH_FORMAT!r})")
        differ = [k for k in identity if record.get(k) != identity[k]]
        if differ:
            detail = "; ".join(f"{k} was {record.get(k)!r}, now {identity[k]!r}" for k in differ)
            raise InputError(f"out: {out} holds another search ({detail}); choose another --out")
        return record

    @staticmethod
    def _assign(record: dict, combos: list[dict]) -> list[str]:
        """The run folder of every combination: its recorded one, else the next free number."""
        by_key = {_key(entry["params"]): name for name, entry in record["runs"].items()}
        next_index = max([_run_index(name) for name in record["runs"]] + [-1]) + 1
        names = []
        for params in combos:
            key = _key(params)
            if key not in by_key:
                name = f"{RUN_PREFIX}{next_index:03d}"
                next_index += 1
                record["runs"][name] = {"params": params, "status": PENDING, "error": None}
                by_key[key] = name
            names.append(by_key[key])
        return names

    @staticmethod
    def _save(out: Path, record: dict) -> None:
        artifacts.write_json(out / SEARCH_FILE, record)

    def _finish(self, out: Path, record: dict) -> None:
        rows = rank_rows([read_run(out / name, name, entry) for name, entry in record["runs"].items()])
        best = next((r for r in rows if r["rank"] is not None), None)
        record["best"] = None if best is None else {"run": best["run"], "params": record["runs"][best["run"]]["params"],
                                                    "val_accuracy": best["val_accuracy"]}
        self._save(out, record)
        write_results(out, record, rows)
        self.results_ = rows
        self.best_run_ = None if best is None else out / best["run"]
        self.best_params_ = None if best is None else dict(record["runs"][best["run"]]["params"])
        self.best_score_ = None if best is None else best["val_accuracy"]


def _check_run_args(folder: Path, params: dict) -> None:
    """Refuse a run folder whose model was trained with other values than search.json maps to it."""
    variant = VariantDir(folder)
    args = TrainConfig.from_json(variant.read_config().get("args", {}), where=f"{variant.config_path}: args").to_json()
    differ = {k: (args[k], v) for k, v in params.items() if args[k] != v}
    if differ:
        detail = "; ".join(f"{k} is {a!r}, search.json says {v!r}" for k, (a, v) in differ.items())
        raise InputError(f"{folder}: trained with other arguments than {SEARCH_FILE} records ({detail}); "
                         f"move the folder away to retrain it")


# ------------------------------------------------------------------------------------------
# run folders and the results table
# ------------------------------------------------------------------------------------------

def run_state(folder: Path) -> str:
    """What a run folder holds (:meth:`VariantDir.status`): ``finished``, ``incomplete`` (cut
    short by its time budget), ``resumable``, ``stale`` or ``new``."""
    return VariantDir(folder).status()


def read_run(folder: Path, name: str, entry: dict) -> dict:
    """One results row: the run's parameters, its val scores and training figures, status."""
    row = {"run": name, "params": dict(entry["params"]), "status": entry.get("status", PENDING),
           "error": entry.get("error")}
    row.update({column: None for column in METRIC_COLUMNS})
    state = run_state(folder)
    if state in (FINISHED, INCOMPLETE) and row["status"] != FAILED:
        variant = VariantDir(folder)
        config, val = variant.read_config(), variant.read_metrics()["val"]
        train = config["training"]
        row.update(val_accuracy=val["accuracy"], val_macro_f1=val["macro_f1"], val_loss=val["log_loss"],
                   epochs_run=train["epochs_run"],
                   # a run written before 0.11 records no kept_epoch: it kept its lowest val loss
                   kept_epoch=train.get("kept_epoch", train["best_epoch"]),
                   train_seconds=train["training_seconds"])
        row["status"] = FINISHED if state == FINISHED else f"{INCOMPLETE} ({train.get('stopped')}; rerun resumes)"
        row["error"] = None
    elif row["status"] in (FINISHED, INCOMPLETE, "running", "interrupted"):
        row["status"] = "interrupted (rerun resumes)" if state == RESUMABLE else PENDING
    return row


def rank_rows(rows: list[dict]) -> list[dict]:
    """Runs with results first, by val accuracy (descending), then macro-F1 (descending), val
    loss (ascending) and name; then the others by name. Adds ``rank`` (None without results)."""
    scored = [r for r in rows if r["val_accuracy"] is not None]
    others = [r for r in rows if r["val_accuracy"] is None]
    scored.sort(key=lambda r: (-r["val_accuracy"], -r["val_macro_f1"],
                               r["val_loss"] if r["val_loss"] is not None else float("inf"), r["run"]))
    others.sort(key=lambda r: r["run"])
    for i, row in enumerate(scored, 1):
        row["rank"] = i
    for row in others:
        row["rank"] = None
    return scored + others


def _param_columns(rows: list[dict]) -> list[str]:
    return sorted({name for row in rows for name in row["params"]})


def _cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, (list, dict)):
        return json.dumps(value)
    return str(value)


def results_csv(rows: list[dict]) -> str:
    params = _param_columns(rows)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["rank", "run", *params, *METRIC_COLUMNS, "status", "error"])
    for row in rows:
        writer.writerow([_cell(row["rank"]), row["run"], *(_cell(row["params"].get(p)) for p in params),
                         *(_cell(row[c]) for c in METRIC_COLUMNS), row["status"], row["error"] or ""])
    return buffer.getvalue()


def results_markdown(record: dict, rows: list[dict]) -> str:
    params = _param_columns(rows)
    scored = [r for r in rows if r["rank"] is not None]
    lines = [f"# Hyperparameter search: {record['variant']}", "",
             f"Label set `{record['labels']}`; feature store `{record.get('features')}` (config "
             f"{record['feature_store']['config_hash']}, manifest {record['feature_store']['manifest_hash']}). "
             f"{len(scored)} of {len(rows)} runs have results. Ranked by val accuracy, then val macro-F1, then val "
             f"loss (the cross-entropy of the saved model's val probabilities). Parameters not listed are "
             f"`train_variant`'s defaults.", "",
             "The val split chose each run's kept epoch (its lowest val loss; a cosine schedule run to its end "
             "keeps its last instead) and now chooses among the runs, so the best run's val figures are "
             "optimistic: confirm it on test (`python -m pipelines.evaluate`).", ""]
    header = ["rank", "run", *params, "val acc", "val macro-F1", "val loss", "epochs", "kept epoch",
              "train s", "status"]
    lines += ["| " + " | ".join(header) + " |", "|" + "|".join(" ---: " if h not in ("run", "status") else " --- "
                                                                for h in header) + "|"]
    for row in rows:
        cells = [_cell(row["rank"]), f"`{row['run']}`", *(_cell(row["params"].get(p)) for p in params)]
        cells += [f"{row['val_accuracy']:.4f}" if row["val_accuracy"] is not None else "",
                  f"{row['val_macro_f1']:.4f}" if row["val_macro_f1"] is not None else "",
                  f"{row['val_loss']:.4f}" if row["val_loss"] is not None else "",
                  _cell(row["epochs_run"]), _cell(row["kept_epoch"]),
                  f"{row['train_seconds']:.1f}" if row["train_seconds"] is not None else "",
                  row["status"] + (f": {row['error']}" if row["error"] else "")]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    lines.append("")
    if scored:
        best = scored[0]
        lines += [f"Best: `{best['run']}` {_key(best['params'])}, val accuracy {best['val_accuracy']:.4f}.", ""]
    return "\n".join(lines)


def write_results(out: Path, record: dict, rows: list[dict]) -> None:
    with artifacts.atomic_path(out / RESULTS_CSV) as tmp:
        tmp.write_text(results_csv(rows))
    with artifacts.atomic_path(out / RESULTS_MD) as tmp:
        tmp.write_text(results_markdown(record, rows))
