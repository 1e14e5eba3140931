"""TensorFlow.js graph models (``model.json`` + ``*.bin``), read without TensorFlow.js.

Two uses, both for porting a published network into a Keras block:

* :func:`read_weights` decodes the weight shards (float32, or float16 / uint8 quantised as the
  ``weightsManifest`` says) into float32 numpy arrays named as in the graph;
* :func:`run_graph` runs the original graph with TensorFlow itself (its ``modelTopology`` is a
  ``GraphDef`` in JSON; the weights become its constants), which is the reference a port is
  checked against.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ensemble_fer.errors import InputError

_DTYPES = {"float32": np.float32, "float16": np.float16, "int32": np.int32, "uint8": np.uint8,
           "uint16": np.uint16}


def read_model_json(path) -> dict:
    path = Path(path)
    try:
        model = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"{path}: not a readable TensorFlow.js model.json ({type(exc).__name__}: {exc})") from None
    if not isinstance(model, dict) or model.get("format") != "graph-model" or "weightsManifest" not in model:
        raise InputError(f"{path}: not a TensorFlow.js graph model (no format 'graph-model' with a weightsManifest)")
    return model


def read_weights(model_json) -> dict[str, np.ndarray]:
    """The graph's weights as float32 (or int32) arrays by name, de-quantised as published."""
    model_json = Path(model_json)
    model = read_model_json(model_json)
    weights = {}
    for group in model["weightsManifest"]:
        data = b"".join((model_json.parent / shard).read_bytes() for shard in group["paths"])
        offset = 0
        for entry in group["weights"]:
            shape = tuple(int(d) for d in entry["shape"])
            quant = entry.get("quantization")
            stored = _DTYPES[quant["dtype"] if quant else entry["dtype"]]
            count = int(np.prod(shape, dtype=np.int64))
            nbytes = count * np.dtype(stored).itemsize
            if offset + nbytes > len(data):
                raise InputError(f"{model_json}: the weight shards end before {entry['name']!r}")
            values = np.frombuffer(data, dtype=stored, count=count, offset=offset).reshape(shape)
            offset += nbytes
            if quant and quant["dtype"] in ("uint8", "uint16"):
                values = values.astype(np.float32) * quant["scale"] + quant["min"]
            weights[entry["name"]] = values.astype(np.float32 if entry["dtype"] == "float32" else entry["dtype"])
        if offset != len(data):
            raise InputError(f"{model_json}: {len(data) - offset} bytes of the weight shards are not in the manifest")
    return weights


def run_graph(model_json, inputs: dict[str, np.ndarray], outputs: list[str]) -> list[np.ndarray]:
    """Run the published graph with TensorFlow: ``inputs`` by placeholder name, ``outputs`` by
    tensor name (``"global_pooling/Mean"``); the weights are fed as the graph's constants."""
    import tensorflow as tf
    from google.protobuf import json_format

    model = read_model_json(model_json)
    weights = read_weights(model_json)
    graph_def = json_format.ParseDict(model["modelTopology"], tf.compat.v1.GraphDef())
    for node in graph_def.node:
        if node.op == "Const" and node.name in weights:
            node.attr["value"].tensor.CopyFrom(tf.make_tensor_proto(weights[node.name]))
        elif node.op == "Placeholder":
            # Any batch and image size: the published shape (e.g. 224x224) is only the default.
            dims = node.attr["shape"].shape.dim
            for dim in list(dims)[:-1]:   # all but the channels
                dim.size = -1
    graph = tf.Graph()
    with graph.as_default():
        tf.graph_util.import_graph_def(graph_def, name="")
    with tf.compat.v1.Session(graph=graph) as session:
        feed = {graph.get_tensor_by_name(f"{name}:0"): value for name, value in inputs.items()}
        return session.run([graph.get_tensor_by_name(f"{name}:0") for name in outputs], feed_dict=feed)
