"""Beyond one machine: extraction on a real dask.distributed cluster (a scheduler and worker
processes on this machine) gives the arrays of a local run; training picks its
tf.distribute strategy from the machine and TF_CONFIG."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parent.parent
SAMPLE = REPO / "data" / "sample"
ARGS = ["--data", str(SAMPLE), "--detector", "hog", "--limit", "60", "--quiet"]


def _extraction_ran_here() -> bool:
    import sys

    return "ensemble_fer.features.hog" in sys.modules


def _arrays(store: Path) -> dict:
    from ensemble_fer.features.feature_store import FeatureStore

    reader = FeatureStore(store)
    return {split: reader.load(split) for split in ("train", "val")}


@pytest.mark.slow
def test_extraction_on_a_dask_cluster_matches_the_local_run(tmp_path):
    distributed = pytest.importorskip("dask.distributed", reason="pip install 'ensemble_fer[cluster]'")
    import joblib

    from pipelines import console, extract_features

    assert extract_features.main(ARGS + ["--out", str(tmp_path / "local"), "--n-jobs", "1"]) == 0
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                                  silence_logs=logging.ERROR) as cluster:
        # the documented library route: a client, then joblib's dask backend
        with distributed.Client(cluster) as client, joblib.parallel_config(backend="dask"):
            assert extract_features.main(ARGS + ["--out", str(tmp_path / "dask"), "--n-jobs", "2"]) == 0
            # the work really ran on the cluster's worker processes
            assert any(client.run(_extraction_ran_here).values())
        # the console route: --scheduler ADDRESS
        assert console.main(["extract", *ARGS, "--out", str(tmp_path / "console"), "--n-jobs", "2",
                             "--scheduler", cluster.scheduler_address]) == 0
    local = _arrays(tmp_path / "local")
    for name in ("dask", "console"):
        other = _arrays(tmp_path / name)
        for split, arrays in local.items():
            assert set(arrays) == set(other[split])
            assert len(arrays["ids"]) > 0
            for key, value in arrays.items():
                np.testing.assert_array_equal(value, other[split][key], err_msg=f"{name} {split} {key}")


def test_unreachable_scheduler_is_one_line(capsys, tmp_path):
    pytest.importorskip("dask.distributed", reason="pip install 'ensemble_fer[cluster]'")
    from pipelines import console

    code = console.main(["extract", *ARGS, "--out", str(tmp_path / "x"), "--scheduler", "tcp://127.0.0.1:9"])
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --scheduler tcp://127.0.0.1:9: cannot reach the scheduler") and "\n" not in err
    assert not (tmp_path / "x").exists()


def test_strategy_selection_without_a_cluster(monkeypatch):
    import tensorflow as tf

    from ensemble_fer import distribute
    from ensemble_fer.errors import InputError

    monkeypatch.delenv("TF_CONFIG", raising=False)
    assert distribute.cluster_workers() == 0
    assert distribute.choose_strategy(gpus=[]) is tf.distribute.get_strategy()
    assert distribute.cluster_workers('{"cluster": {"worker": ["a:1", "b:2"]}, "task": {"type": "worker"}}') == 2
    with pytest.raises(InputError, match="TF_CONFIG"):
        distribute.cluster_workers("not json")


@pytest.mark.slow
def test_training_on_a_one_worker_cluster_uses_multi_worker_mirrored(sample_store, tmp_path):
    """TF_CONFIG with one CPU worker: the same train command runs under
    MultiWorkerMirroredStrategy (in its own process: the strategy must be made before any
    other TensorFlow work) and records it."""
    import json
    import os
    import socket
    import subprocess
    import sys

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(os.environ, TF_CONFIG=json.dumps({"cluster": {"worker": [f"127.0.0.1:{port}"]},
                                                 "task": {"type": "worker", "index": 0}}))
    out = tmp_path / "bovw"
    run = subprocess.run([sys.executable, "-m", "pipelines.train_variant", "--block", "none", "--bovw",
                          "--features", str(sample_store), "--out", str(out), "--epochs", "1", "--no-augment",
                          "--quiet"], env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    device = json.loads((out / "config.json").read_text())["training"]["device"]
    # tf.distribute.MultiWorkerMirroredStrategy's class is CollectiveAllReduceStrategy
    assert device["strategy"] == "CollectiveAllReduceStrategy" and device["replicas"] == 1, device
