"""Starting TensorFlow without its start-up chatter.

TensorFlow 2.16+ writes lines such as ``oneDNN custom operations are on``, ``Could not find
cuda drivers on your machine`` and ``failed call to cuInit`` on a CPU-only machine. They are
written by C++ code straight to file descriptor 2 before absl logging is set up, so
``TF_CPP_MIN_LOG_LEVEL`` does not stop them (measured with TF 2.21). TensorFlow is therefore
imported, and its devices listed (which is when CUDA is probed), with descriptor 2 pointed at
a temporary file; every captured line that is not known start-up chatter is written back
afterwards, so a real problem still shows.

:func:`quiet_tensorflow_import` arranges that for the process's first ``import tensorflow``,
wherever it happens (``pipelines/__init__.py`` calls it, so every ``python -m
pipelines.<stage>`` and ``ensemble-fer <stage>`` is quiet, and a stage that never needs
TensorFlow never imports it); :func:`start_quietly` imports it now.

``tf.function`` retracing warnings come from the Python logger ``tensorflow``; prediction
calls ``predict_on_batch`` with batches of varying size, which Keras handles with
``reduce_retracing``, so the warning says nothing a user can act on and is silenced too.
"""

from __future__ import annotations

import contextlib
import importlib.abc
import importlib.util
import logging
import os
import re
import sys
import tempfile

# Start-up lines that describe the machine, not a problem with the run.
CHATTER = re.compile(
    r"All log messages before absl::InitializeLog"
    r"|oneDNN custom operations are on"
    r"|cudart_stub\.cc|Could not find cuda drivers"
    r"|cuda_platform\.cc|failed call to cuInit"
    r"|Unable to register cu(DNN|FFT|BLAS) factory"
    r"|computation_placer\.cc"
    r"|This TensorFlow binary is optimized to use available CPU instructions"
    r"|rebuild TensorFlow with the appropriate compiler flags"
    r"|TF-TRT Warning"
    r"|Created TensorFlow Lite XNNPACK delegate"
)


def quiet_tensorflow_import() -> None:
    """Make the first ``import tensorflow`` of this process start it without start-up chatter
    (nothing to do once TensorFlow is imported)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if "tensorflow" not in sys.modules and not any(isinstance(f, _QuietFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, _QuietFinder("tensorflow"))


def start_quietly() -> None:
    """Import TensorFlow now (once per process), without start-up chatter."""
    quiet_tensorflow_import()
    import tensorflow  # noqa: F401

    logging.getLogger("tensorflow").addFilter(_drop_retracing)


class _QuietFinder(importlib.abc.MetaPathFinder):
    """Finds nothing itself: on the first import of ``module`` (TensorFlow) it takes itself off
    ``sys.meta_path`` and hands back the real spec with its loader wrapped in :class:`_QuietLoader`."""

    def __init__(self, module: str):
        self.module = module

    def find_spec(self, name, path=None, target=None):
        if name != self.module:
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.loader is not None:
            spec.loader = _QuietLoader(spec.loader)
        return spec


class _QuietLoader(importlib.abc.Loader):
    def __init__(self, loader):
        self.loader = loader

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module):
        # TensorFlow sees its own loader, as in a plain import.
        module.__loader__ = module.__spec__.loader = self.loader
        with quiet_stderr():
            self.loader.exec_module(module)
            module.config.list_physical_devices()
        logging.getLogger("tensorflow").addFilter(_drop_retracing)


@contextlib.contextmanager
def quiet_stderr():
    """Run the block with file descriptor 2 captured; write back the lines that are not
    :data:`CHATTER` (also for TFLite's interpreter, which announces its CPU delegate)."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            kept = [line for line in captured.read().decode(errors="replace").splitlines()
                    if line.strip() and not CHATTER.search(line)]
            for line in kept:
                print(line, file=sys.stderr)


def _drop_retracing(record) -> bool:
    return "triggered tf.function retracing" not in record.getMessage()
