"""Where the stages' default paths are: the one owner of "where does this go when not told".

An installed package must never write into its own folder (``site-packages`` may be
read-only, is shared by every user, and is wiped by the next install), and must not look for
inputs that only a clone has. So every default is one of three kinds:

* **outputs** go under the current folder, as relative paths (``features/<name>``,
  ``models/<variant>``, ``runs/demo``, ...), so a stage run from a clone's root writes where
  the README says and one run from any other folder writes there; ``--out`` names another;
* **caches** (what can be rebuilt, e.g. evaluation's extracted features) go under the user's
  cache folder: ``$XDG_CACHE_HOME/ensemble_fer``, else ``~/.cache/ensemble_fer``;
* **inputs** default to what the package really has: the bundled sample (read, never
  written: packaged as ``ensemble_fer/sample/`` in a wheel, ``data/sample`` in a clone) and
  the shipped models (:mod:`ensemble_fer.release`); anything else must be given.

Standard library only: ``setup.py`` loads this module by file path to package the sample.
"""

from __future__ import annotations

import os
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
PACKAGED_SAMPLE = PACKAGE_DIR / "sample"
"""The sample's copy inside an installed wheel (``setup.py`` copies ``data/sample`` there)."""
SOURCE_SAMPLE = PACKAGE_DIR.parent / "data" / "sample"
"""The sample in a clone (editable installs read it in place)."""

FEATURES = Path("features")
MODELS = Path("models")
RUNS = Path("runs")
CACHE_VARIABLE = "XDG_CACHE_HOME"


def sample_data() -> Path:
    """The bundled sample dataset (FER2013 crops in class folders): the packaged copy, else the
    clone's ``data/sample``. Read only: no stage writes into it."""
    for folder in (PACKAGED_SAMPLE, SOURCE_SAMPLE):
        if folder.is_dir():
            return folder
    from ensemble_fer.errors import MissingInputError

    raise MissingInputError(f"{PACKAGED_SAMPLE}: this installation has no bundled sample (nor {SOURCE_SAMPLE}); "
                            f"pass --data PATH")


def features_dir(name: str) -> Path:
    """Default feature store of the dataset ``name``: ``features/<name>`` in the current folder."""
    return FEATURES / name


def models_dir() -> Path:
    """Default folder of trained variants and ensembles: ``models/`` in the current folder."""
    return MODELS


def runs_dir(*parts: str) -> Path:
    """Default folder of a run's outputs (demo, searches): ``runs/...`` in the current folder."""
    return RUNS.joinpath(*parts)


def cache_dir() -> Path:
    """The user's cache folder for this package: ``$XDG_CACHE_HOME/ensemble_fer``, else
    ``~/.cache/ensemble_fer`` (what is there can be deleted at any time; it is rebuilt)."""
    base = os.environ.get(CACHE_VARIABLE) or Path.home() / ".cache"
    return Path(base) / "ensemble_fer"


def evaluation_cache() -> Path:
    """Default cache of ``evaluate``'s extracted features (``eval-<dataset>-<hash>/``)."""
    return cache_dir() / "features"
