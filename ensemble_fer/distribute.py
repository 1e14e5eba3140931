"""Which ``tf.distribute`` strategy training runs under.

* ``TF_CONFIG`` naming a cluster with workers (the standard multi-worker setting: every
  worker runs the same ``ensemble-fer train`` command with its own ``task.index``):
  ``MultiWorkerMirroredStrategy``, synchronous data parallelism over all workers' devices.
  One worker alone is a valid cluster (used by the tests on a CPU).
* else more than one visible GPU: ``MirroredStrategy`` over them;
* else (one GPU or a CPU): TensorFlow's default strategy, no wrapping.

The choice is recorded in each variant's ``config.json`` (``training.device.strategy``, whose
class name for MultiWorkerMirroredStrategy is ``CollectiveAllReduceStrategy``, and ``replicas``).
Batch size is global: each of N replicas gets ``batch_size / N`` rows per step.
"""

from __future__ import annotations

import json
import os


def cluster_workers(tf_config: str | None = None) -> int:
    """Workers named by ``TF_CONFIG`` (0 when unset or without a cluster)."""
    raw = os.environ.get("TF_CONFIG") if tf_config is None else tf_config
    if not raw:
        return 0
    try:
        cluster = json.loads(raw).get("cluster", {})
    except (ValueError, AttributeError):
        from ensemble_fer.errors import InputError

        raise InputError(f"TF_CONFIG is not a JSON object with a cluster: {raw[:80]!r}") from None
    return len(cluster.get("worker", [])) + len(cluster.get("chief", []))


def choose_strategy(gpus=None):
    """The strategy for this process (see the module doc); ``gpus``: the visible GPUs
    (default: asked from TensorFlow)."""
    import tensorflow as tf

    if cluster_workers() > 0:
        return tf.distribute.MultiWorkerMirroredStrategy()
    if gpus is None:
        gpus = tf.config.list_physical_devices("GPU")
    if len(gpus) > 1:
        return tf.distribute.MirroredStrategy()
    return tf.distribute.get_strategy()
