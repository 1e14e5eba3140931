"""Packaging hook: the wheel carries the release model (see ensemble_fer/release.py).

Everything else is declared in pyproject.toml. ``build_py`` copies the prediction files of
``models/release`` (or of the folder named by ``ENSEMBLE_FER_RELEASE``) into
``ensemble_fer/release/`` of the build, so that an installed package predicts offline from
any directory. Editable installs skip the copy: they read ``models/release`` in place.
"""

import importlib.util
import os
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent


def _release_module():
    # By file path: the package's own dependencies (TensorFlow, dlib) need not be installed to build.
    spec = importlib.util.spec_from_file_location("_ensemble_fer_release", ROOT / "ensemble_fer" / "release.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class BuildPyWithRelease(build_py):
    def run(self):
        super().run()
        if getattr(self, "editable_mode", False):
            return
        release = _release_module()
        source = Path(os.environ.get(release.ENVIRONMENT_VARIABLE) or ROOT / "models" / "release")
        if not release.is_model_folder(source):
            raise SystemExit(f"error: {source}: no release model to package (ensemble.json or config.json); "
                             f"set {release.ENVIRONMENT_VARIABLE}=FOLDER to package another one")
        files = release.copy_release(source, Path(self.build_lib) / "ensemble_fer" / "release")
        print(f"packaged the release model from {source}: {len(files)} files")


setup(cmdclass={"build_py": BuildPyWithRelease})
