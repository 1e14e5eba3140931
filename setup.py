"""Packaging hook: the wheel carries the shipped models (see ensemble_fer/release.py).

Everything else is declared in pyproject.toml. ``build_py`` copies the prediction files of
``models/release`` and ``models/fast`` (or of the folders named by ``ENSEMBLE_FER_RELEASE`` and
``ENSEMBLE_FER_FAST``) into ``ensemble_fer/release/`` and ``ensemble_fer/fast/`` of the build,
so that an installed package predicts offline from any directory. The release is required; a
fork without a fast model builds without it (``--model fast`` then says so). It also copies the
bundled sample ``data/sample`` (1.6 MB) into ``ensemble_fer/sample/``: the stages' default input
(``ensemble_fer/paths.py``), so ``ensemble-fer extract`` or ``demo`` work installed. Editable
installs skip the copies: they read ``models/`` and ``data/sample`` in place.
"""

import importlib.util
import os
import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent


def _package_module(name):
    # By file path: the package's own dependencies (TensorFlow, dlib) need not be installed to build.
    spec = importlib.util.spec_from_file_location(f"_ensemble_fer_{name}", ROOT / "ensemble_fer" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class BuildPyWithRelease(build_py):
    def run(self):
        super().run()
        if getattr(self, "editable_mode", False):
            return
        release = _package_module("release")
        for name, variable in release.ENVIRONMENT_VARIABLES.items():
            source = Path(os.environ.get(variable) or ROOT / "models" / name)
            if not release.is_model_folder(source):
                if name != "release":
                    print(f"no {name!r} model packaged: {source} holds none")
                    continue
                raise SystemExit(f"error: {source}: no release model to package (ensemble.json or config.json); "
                                 f"set {variable}=FOLDER to package another one")
            files = release.copy_release(source, Path(self.build_lib) / "ensemble_fer" / name)
            print(f"packaged the {name} model from {source}: {len(files)} files")
        paths = _package_module("paths")
        target = Path(self.build_lib) / "ensemble_fer" / paths.PACKAGED_SAMPLE.name
        if target.exists():
            shutil.rmtree(target)
        if (ROOT / "data" / "sample").is_dir():
            shutil.copytree(ROOT / "data" / "sample", target)
            print(f"packaged the bundled sample: {sum(1 for f in target.rglob('*') if f.is_file())} files")
        else:
            print("no bundled sample packaged: data/sample is missing (extract and demo then need --data)")


setup(cmdclass={"build_py": BuildPyWithRelease})
