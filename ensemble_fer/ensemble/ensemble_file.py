"""``ensemble.json``, the fitted ensemble on disk: the one module that writes and reads it.

::

    write_ensemble(tmp, members, fitted, out=out, objective=..., ...)   # pipelines.fit_ensemble
    saved = read_ensemble("models/ensemble.json")   # checked: saved.members, saved.fitted, saved.label_set
    check_member_hashes(member.folder, member.hashes, saved.path)      # again, just before a model loads

Format ``ensemble_fer.ensemble``, version 2 (docs/ARCHITECTURE.md, "Ensemble"): ``members``
in weight order, each with ``name``, ``path`` (relative to the JSON file's folder and inside
it: an ensemble names only the models that ship with it), ``variant``, ``weight``, and the
SHA-256 of its ``config.json`` and ``model.keras`` taken before the fit; ``ensemble``
(:meth:`WeightedEnsemble.to_json`), ``tta`` (the test-time views the weights were fitted on and
the predictor averages by default; absent in files written before it: 0, none), ``labels``,
``extractor``, ``feature_store``, ``scores``, ``report`` (the names of the files beside it,
:func:`ensemble_outputs`) and ``versions``.
Version-1 files (no member hashes) are refused with a request to refit: a replaced model
would go unnoticed.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path

from ensemble_fer import artifacts
from ensemble_fer.ensemble.weighted import WeightedEnsemble
from ensemble_fer.errors import InputError, MissingInputError
from ensemble_fer.features.bovw import ExtractorConfig
from ensemble_fer.labels import LabelSet, label_set_from_json
from ensemble_fer.models.variant_dir import CONFIG, MODEL
from ensemble_fer.features.augment import check_tta

ENSEMBLE_FILE = "ensemble.json"
"""Its default name, in the folder holding the variants (``<models>/ensemble.json``)."""
ENSEMBLE_FORMAT = "ensemble_fer.ensemble"
ENSEMBLE_VERSION = 2
"""2: members carry ``config_sha256`` and ``model_sha256`` (full SHA-256), checked at load."""

MEMBER_FILES = {"config_sha256": CONFIG, "model_sha256": MODEL}
"""What an ensemble records of each member: the SHA-256 of the files that decide its predictions."""

REFIT = "`python -m pipelines.fit_ensemble`"


@dataclass
class EnsembleMember:
    """One member as the file records it; ``folder`` is where ``path`` leads."""

    name: str
    path: str
    folder: Path
    variant: str | None
    weight: float
    hashes: dict[str, str]

    def to_json(self) -> dict:
        return {"name": self.name, "path": self.path, "variant": self.variant, "weight": float(self.weight),
                **self.hashes}


@dataclass
class EnsembleFile:
    """A read and checked ``ensemble.json``; ``data`` is the whole JSON."""

    path: Path
    data: dict
    members: list[EnsembleMember]
    fitted: WeightedEnsemble
    label_set: LabelSet
    extractor: ExtractorConfig
    tta: int = 0
    """Test-time views the weights were fitted on: what the predictor averages unless told otherwise."""


def ensemble_outputs(out) -> dict[str, Path]:
    """The files of the ensemble file ``out``: the JSON itself and, named after it so that two
    ensembles in one folder never share a report, its report (``<stem>_report.md``,
    ``<stem>_report.json``) and figure (``<stem>_confusion_matrix.png``)."""
    out = Path(out)
    return {"ensemble": out, "markdown": out.with_name(f"{out.stem}_report.md"),
            "json": out.with_name(f"{out.stem}_report.json"),
            "confusion_matrix": out.with_name(f"{out.stem}_confusion_matrix.png")}


def check_ensemble_outputs(out, force: bool) -> None:
    """Refuse, before any work, an output that is a folder (whatever ``force``: it is no earlier
    result) and an existing ensemble or report without ``force``."""
    outputs = ensemble_outputs(out)
    if outputs["ensemble"].is_dir():
        raise InputError(f"{out}: is a folder; --out names the ensemble's .json file")
    for path in outputs.values():
        if path.is_dir():
            raise InputError(f"{path}: is a folder, not a report of the ensemble {out}, so it is never replaced: "
                             f"choose another --out")
    existing = [str(path) for path in outputs.values() if path.exists() or path.is_symlink()]
    if existing and not force:
        more = f" (and {len(existing) - 1} more of its files)" if len(existing) > 1 else ""
        raise InputError(f"{existing[0]}: exists{more}; pass --force to replace the ensemble and its report, "
                         f"or choose another --out")


# ---------------------------------------------------------------------- member paths and hashes

def member_path(folder, out) -> str:
    """``folder`` relative to the ensemble file ``out``'s folder; refused when it is not inside
    it (an ensemble names only models that ship with it: see :func:`member_folder`).
    Compared without resolving links, so a member may be a link placed in that folder."""
    base = os.path.abspath(Path(out).parent)
    relative = os.path.relpath(os.path.abspath(folder), base)
    if relative == os.curdir or relative == os.pardir or relative.startswith(os.pardir + os.sep):
        raise InputError(f"{folder}: not inside {base}, the folder of the ensemble file {out}; members must be "
                         f"sub-folders of it (write --out into the folder that holds the variants, as the default "
                         f"<models>/ensemble.json does)")
    return relative


def member_folder(ensemble_path, entry_path, where: str) -> Path:
    """The folder of an ensemble member, from the ``path`` recorded for it: relative to the
    ensemble's folder and inside it, so that an ensemble file can only name the models that
    ship with it (no ``..``, no absolute path)."""
    if not isinstance(entry_path, str) or not entry_path:
        raise InputError(f"{ensemble_path}: {where}.path must be a non-empty string; got {entry_path!r}")
    normal = os.path.normpath(entry_path)
    if os.path.isabs(entry_path) or normal == ".." or normal.startswith(".." + os.sep) or normal == ".":
        raise InputError(f"{ensemble_path}: {where}.path {entry_path!r} leaves the ensemble's folder; members must "
                         f"be sub-folders of {Path(ensemble_path).parent} (refit with {REFIT})")
    return Path(ensemble_path).parent / normal


def member_hashes(folder) -> dict[str, str]:
    """``{"config_sha256": ..., "model_sha256": ...}`` of a variant folder's two files."""
    folder = Path(folder)
    hashes = {}
    for key, name in MEMBER_FILES.items():
        if not (folder / name).is_file():
            raise MissingInputError(f"{folder / name}: file not found; an ensemble member needs its "
                                    f"{CONFIG} and {MODEL}")
        hashes[key] = artifacts.sha256_file(folder / name)
    return hashes


def check_member_hashes(folder, recorded: dict, source) -> None:
    """Refuse a member whose config.json or model.keras is not the one the ensemble was fitted with."""
    for key, name in MEMBER_FILES.items():
        file = Path(folder) / name
        if not file.is_file():
            raise MissingInputError(f"{file}: file not found (member of {source})")
        if artifacts.sha256_file(file) != recorded[key]:
            raise InputError(f"{source}: member {folder} changed since the ensemble was fitted (its {name} "
                             f"differs: retrained or replaced?); refit with {REFIT}")


def feature_store_summary(store: dict) -> dict:
    """What an ensemble (and a predictor's report) records of its members' feature store."""
    return {key: store.get(key) for key in ("path", "dataset", "config_hash", "manifest_hash")}


# ---------------------------------------------------------------------- writing and reading

def write_ensemble(path, members: list[EnsembleMember], fitted: WeightedEnsemble, *, objective: str, seed: int,
                   labels: dict, extractor: dict, feature_store: dict, scores: dict, report: dict,
                   tta: int = 0) -> dict:
    """Write the ensemble JSON to ``path`` (atomically; a temporary of the fit may stand in for
    the final file, the member paths being relative to the final one) and return it."""
    data = {
        "format": ENSEMBLE_FORMAT,
        "version": ENSEMBLE_VERSION,
        "members": [m.to_json() for m in members],
        "objective": objective,
        "seed": seed,
        "classes": list(labels["classes"]),
        "labels": labels,
        "extractor": extractor,
        "feature_store": feature_store,
        "ensemble": fitted.to_json(),
        "tta": check_tta(tta),
        "scores": scores,
        "report": report,
        "versions": artifacts.package_versions(),
    }
    artifacts.write_json(path, data)
    return data


def read_ensemble(path) -> EnsembleFile:
    """An ``ensemble.json`` checked as a file: its format and version, the member entries (paths
    to folders inside its own, recorded hashes, weights agreeing with the fitted ones, distinct
    names), the label set and the extractor config. What the members' folders hold is checked
    by their reader (the predictor)."""
    path = Path(path)
    # a fit killed while swapping its four files in is finished first, never read half done
    artifacts.complete_interrupted_swaps(path.parent)
    data = artifacts.read_json(path)
    if not isinstance(data, dict) or data.get("format") != ENSEMBLE_FORMAT:
        raise InputError(f"{path}: not an ensemble file (format is not {ENSEMBLE_FORMAT!r}); make one with {REFIT}")
    version = data.get("version", 0)
    if not isinstance(version, int) or version > ENSEMBLE_VERSION:
        raise InputError(f"{path}: ensemble format version {version!r} is newer than this code reads "
                         f"({ENSEMBLE_VERSION})")
    missing = [key for key in ("members", "ensemble", "labels", "extractor") if key not in data]
    if missing or not isinstance(data["members"], list) or not data["members"]:
        raise InputError(f"{path}: missing {missing or ['members']}; not a complete ensemble file")
    for i, entry in enumerate(data["members"]):
        if not isinstance(entry, dict) or "path" not in entry:
            raise InputError(f"{path}: members[{i}] must be an object with a path; got {entry!r}")
        weight = entry.get("weight", 0.0)
        if isinstance(weight, bool) or not isinstance(weight, (int, float)):
            raise InputError(f"{path}: members[{i}].weight must be a number; got {weight!r}")
        if not isinstance(entry.get("name", ""), str):
            raise InputError(f"{path}: members[{i}].name must be a string; got {entry['name']!r}")
    unhashed = [entry.get("name", i) for i, entry in enumerate(data["members"])
                if any(not isinstance(entry.get(key), str) or len(entry[key]) != 64 for key in MEMBER_FILES)]
    if version < ENSEMBLE_VERSION or unhashed:
        raise InputError(f"{path}: written by an older fit_ensemble (format version {version}): it does not record "
                         f"the SHA-256 of its members' config.json and model.keras (members {unhashed}), so a "
                         f"replaced model would go unnoticed; rerun {REFIT} to refit it")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fitted = WeightedEnsemble.from_json(data["ensemble"])
    except ValueError as exc:
        raise InputError(f"{path}: ensemble: {exc}") from None
    if fitted.n_members_ != len(data["members"]):
        raise InputError(f"{path}: lists {len(data['members'])} members but {fitted.n_members_} weights")
    label_set = label_set_from_json(data["labels"], where=path)
    extractor = ExtractorConfig.from_json(data["extractor"], path)
    tta = check_tta(data.get("tta", 0), where=f"{path}: tta")

    members = []
    for i, entry in enumerate(data["members"]):
        folder = member_folder(path, entry.get("path"), f"members[{i}]")
        if not folder.is_dir():
            raise MissingInputError(f"{path}: member {entry.get('name', i)!r} is missing: no folder {folder}")
        if "weight" in entry and abs(float(entry["weight"]) - fitted.weights_[i]) > 1e-9:
            raise InputError(f"{path}: members[{i}].weight {entry['weight']} disagrees with ensemble.weights "
                             f"{fitted.weights_[i]}; edit neither by hand, refit instead")
        members.append(EnsembleMember(name=str(entry.get("name", folder.name)), path=entry["path"], folder=folder,
                                      variant=entry.get("variant"), weight=float(fitted.weights_[i]),
                                      hashes={key: entry[key] for key in MEMBER_FILES}))
    names = [m.name for m in members]
    if len(set(names)) != len(names):
        raise InputError(f"{path}: two members share a name ({names})")
    return EnsembleFile(path, data, members, fitted, label_set, extractor, tta)
