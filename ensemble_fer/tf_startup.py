"""Starting TensorFlow without its start-up chatter.

TensorFlow 2.16+ writes lines such as ``oneDNN custom operations are on``, ``Could not find
cuda drivers on your machine`` and ``failed call to cuInit`` on a CPU-only machine. They are
written by C++ code straight to file descriptor 2 before absl logging is set up, so
``TF_CPP_MIN_LOG_LEVEL`` does not stop them (measured with TF 2.21). :func:`start_quietly`
imports TensorFlow and lists its devices (which is when CUDA is probed) with descriptor 2
pointed at a temporary file, then writes back every captured line that is not known
start-up chatter: a real problem still shows.

``tf.function`` retracing warnings come from the Python logger ``tensorflow``; prediction
calls ``predict_on_batch`` with batches of varying size, which Keras handles with
``reduce_retracing``, so the warning says nothing a user can act on and is silenced too.
"""

from __future__ import annotations

import contextlib
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

_started = False


def start_quietly() -> None:
    """Import TensorFlow (once per process) and probe its devices without start-up chatter."""
    global _started
    if _started:
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    with quiet_stderr():
        import tensorflow as tf

        tf.config.list_physical_devices()
    import logging

    logging.getLogger("tensorflow").addFilter(_drop_retracing)
    _started = True


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
