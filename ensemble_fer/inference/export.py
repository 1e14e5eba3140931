"""Exporting a model (a variant or an ensemble) to TensorFlow Lite, and predicting with the export.

::

    export_model("models/release", "exports/release")     # float32, float16 and int8 sub-folders
    recognizer = EmotionRecognizer.load("exports/release/int8")    # predicts like the Keras model

Formats (one sub-folder each, every member converted):

* ``float32``: the network as it is;
* ``float16``: weights stored as float16 (half the size), computed in float32;
* ``int8``: dynamic-range quantisation: weights stored as int8 (a quarter of the size),
  activations quantised on the fly where a kernel supports it. No calibration data needed;
* ``int8-full`` (asked for explicitly): full-integer quantisation, activations int8 too, their
  ranges calibrated on the bundled sample's training crops (:data:`CALIBRATION_SPLIT` of
  :func:`ensemble_fer.paths.sample_data`: real FER2013 faces). The quickest on a CPU, and the
  only int8 format in which depthwise convolutions run as int8 (dynamic-range leaves them in
  float: ``benchmarks/RESULTS.md``, session 15). A BOVW input's normalisation is kept in float
  (see :func:`convert`);
* ``onnx`` (asked for explicitly; needs the ``onnx`` extra): float32 ONNX through tf2onnx,
  run by onnxruntime.

Each member keeps both inputs (``image`` uint8 (N, 48, 48, 1), ``bovw`` float32 (N, 2728))
or the one it has; all preprocessing is inside the network, as in the Keras model. An
exported folder is laid out like the model it came from: ``ensemble.json`` (same weights,
label set and extractor config; members' ``model_sha256`` now of their ``model.tflite``)
and one folder per member with its unchanged ``config.json`` and a ``model.tflite``, plus
``export.json`` (source, format, sizes, and the largest difference from the Keras model's
probabilities measured at export on a few hundred crops). :func:`load_export` reads it
into the same :class:`ensemble_fer.inference.predictor.Predictor` as a Keras model, so features,
test-time augmentation and the weighted average are the same code.

Conversion traces each network with ``training=False`` into a SavedModel endpoint (see
:func:`convert`). Grad-CAM needs the Keras model and is refused on exports.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

from ensemble_fer import artifacts
from ensemble_fer.errors import InputError
from ensemble_fer.models.variant_dir import EXPORT_FILE, export_marker, export_origin, is_export

FORMATS = ("float32", "float16", "int8")
"""The TFLite formats, written by default."""
INT8_FULL = "int8-full"
ONNX = "onnx"
ALL_FORMATS = FORMATS + (INT8_FULL, ONNX)
"""Also full-integer int8 TFLite (calibrated) and ONNX (float32, through tf2onnx; run by
onnxruntime): ``pip install 'ensemble_fer[onnx]'``."""
CALIBRATION_SPLIT = "train"
"""The bundled sample's split whose crops calibrate ``int8-full`` (280 faces, 40 an emotion)."""
CALIBRATION_BATCH = 8
EXPORT_FORMAT = "ensemble_fer.export"
MODEL_FILE = "model.tflite"
ONNX_FILE = "model.onnx"


def model_file(precision: str) -> str:
    return ONNX_FILE if precision == ONNX else MODEL_FILE
SIGNATURE = "serve"
OUTPUT = "probabilities"
CHECK_ROWS = 256
"""Crops predicted by both the Keras model and each export to measure their difference."""


def convert(model, precision: str, calibration: dict | None = None) -> bytes:
    """The TFLite flatbuffer of a Keras network at ``precision`` (one of :data:`ALL_FORMATS`);
    ``calibration`` (``int8-full`` only): the network's inputs by name, a few hundred real rows.

    The network is traced with ``training=False`` into a SavedModel endpoint of our own
    (:data:`SIGNATURE`, inputs named as the model's, output ``probabilities``):
    ``keras.Model.export`` traced release 0.2's networks with dropout and batch statistics
    live (TF 2.21, Keras 3.15), and ``TFLiteConverter.from_keras_model`` fails on Keras 3.
    """
    import keras
    import tensorflow as tf

    from ensemble_fer.models.networks import BOVW_INPUT, BOVW_NORM_LAYER, PROBABILITIES_OUTPUT

    if precision not in ALL_FORMATS:
        raise InputError(f"format must be one of {ALL_FORMATS}; got {precision!r}")
    if (precision == INT8_FULL) != (calibration is not None):
        raise ValueError(f"calibration: needed for {INT8_FULL!r} and only for it; precision {precision!r}, "
                         f"calibration {'given' if calibration is not None else 'None'}")
    names = [tensor.name for tensor in model.inputs]
    specs = [tf.TensorSpec((None,) + tuple(t.shape[1:]), t.dtype, name=t.name) for t in model.inputs]

    def serve(*inputs):
        out = model(dict(zip(names, inputs)), training=False)
        if isinstance(out, dict):       # a multi-task network: the emotions only
            out = out[PROBABILITIES_OUTPUT]
        return {OUTPUT: out}

    with tempfile.TemporaryDirectory() as saved:
        archive = keras.export.ExportArchive()
        archive.track(model)
        archive.add_endpoint(name=SIGNATURE, fn=serve, input_signature=specs)
        archive.write_out(saved, verbose=False)
        if precision == ONNX:
            return _saved_model_to_onnx(saved)

        def converter(target):
            made = tf.lite.TFLiteConverter.from_saved_model(saved, signature_keys=[SIGNATURE])
            if target in ("float16", "int8", INT8_FULL):
                made.optimizations = [tf.lite.Optimize.DEFAULT]
            if target == "float16":
                made.target_spec.supported_types = [tf.float16]
            if target == INT8_FULL:
                made.representative_dataset = rows
            return made

        def rows():
            n = len(next(iter(calibration.values())))
            return ({name: np.asarray(calibration[name][i:i + CALIBRATION_BATCH], dtype=spec.dtype.as_numpy_dtype)
                     for name, spec in zip(names, specs)} for i in range(0, n, CALIBRATION_BATCH))

        if precision != INT8_FULL or BOVW_INPUT not in names:
            return converter(precision).convert()
        # Full-integer quantisation gives each tensor one int8 scale. The raw BOVW input holds
        # landmark coordinates (-12..56) beside HOG values (0..1): one scale of ~0.24 left the HOG
        # ~4 levels (bovw_only: 47.5% on PublicTest against 51.3% as Keras). Its normalisation is
        # kept in float, so int8 starts at the standardised vector, which one scale fits
        # (RESULTS.md, session 18). The layer's op names are read from a float conversion
        # (no calibration), which names them as the quantised one does.
        float_nodes = _bovw_normalisation_nodes(converter("float32").convert())
        if not float_nodes:     # a renamed layer would otherwise give the coarse export silently
            raise RuntimeError(f"no TFLite op of the {BOVW_NORM_LAYER!r} layer found to keep in float")
        debugger = tf.lite.experimental.QuantizationDebugger(
            converter=converter(INT8_FULL), debug_dataset=rows,
            debug_options=tf.lite.experimental.QuantizationDebugOptions(denylisted_nodes=float_nodes))
        return debugger.get_nondebug_quantized_model()


def _bovw_normalisation_nodes(flatbuffer: bytes) -> list[str]:
    """The names of the TFLite ops that compute the BOVW input's normalisation layer."""
    import tensorflow as tf

    from ensemble_fer.models.networks import BOVW_NORM_LAYER

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")     # tf.lite.Interpreter's deprecation notice
        interpreter = tf.lite.Interpreter(model_content=flatbuffer)
    tensors = interpreter.get_tensor_details()
    names = [tensors[op["outputs"][0]]["name"] for op in interpreter._get_ops_details()]
    return [name for name in names if f"/{BOVW_NORM_LAYER}" in name]


def _saved_model_to_onnx(saved) -> bytes:
    """tf2onnx's command line on the SavedModel: its ``from_function`` turns the constants a
    Keras 3 network captures (the BOVW normalisation) into extra inputs; the SavedModel
    route freezes them."""
    import importlib.util
    import subprocess
    import sys

    if importlib.util.find_spec("tf2onnx") is None:
        raise InputError("--format onnx needs tf2onnx and onnxruntime: pip install 'ensemble_fer[onnx]'")
    out = Path(saved) / "model.onnx"
    run = subprocess.run([sys.executable, "-m", "tf2onnx.convert", "--saved-model", str(saved), "--signature_def",
                          SIGNATURE, "--opset", "17", "--output", str(out)], capture_output=True, text=True)
    if run.returncode != 0 or not out.is_file():
        raise RuntimeError(f"tf2onnx failed: {run.stderr.strip().splitlines()[-1] if run.stderr.strip() else run.returncode}")
    return out.read_bytes()


class TFLiteModel:
    """A converted member behind the one method prediction calls on a Keras model:
    ``predict_on_batch({"image": ..., "bovw": ...})`` -> probabilities."""

    def __init__(self, path):
        self.path = Path(path)
        interpreter = _interpreter(self.path)
        if SIGNATURE not in interpreter.get_signature_list():
            raise InputError(f"{self.path}: no {SIGNATURE!r} signature: not written by ensemble-fer export")
        self._runner = interpreter.get_signature_runner(SIGNATURE)
        self.input_dtypes = {name: d["dtype"] for name, d in self._runner.get_input_details().items()}

    def predict_on_batch(self, inputs: dict) -> np.ndarray:
        missing = set(self.input_dtypes) - set(inputs)
        if missing:
            raise InputError(f"{self.path}: needs inputs {sorted(missing)}")
        feed = {name: np.ascontiguousarray(inputs[name], dtype=dtype) for name, dtype in self.input_dtypes.items()}
        proba = self._runner(**feed)[OUTPUT]
        # int8-full's softmax comes out in steps of 1/256, so its rows sum to 1 only within ~1%:
        # renormalised here (a no-op for the float formats)
        return proba / proba.sum(axis=1, keepdims=True)


class ONNXModel:
    """An ONNX member behind ``predict_on_batch``, run by onnxruntime on the CPU."""

    def __init__(self, path):
        self.path = Path(path)
        try:
            import onnxruntime
        except ImportError:
            raise InputError(f"{self.path}: an ONNX model needs onnxruntime: pip install 'ensemble_fer[onnx]'") from None
        try:
            self._session = onnxruntime.InferenceSession(str(self.path), providers=["CPUExecutionProvider"])
        except Exception as exc:        # onnxruntime raises its own types for a bad file
            raise InputError(f"{self.path}: not a valid ONNX model ({str(exc).splitlines()[0]})") from None
        dtypes = {"tensor(uint8)": np.uint8, "tensor(float)": np.float32}
        # tf2onnx names inputs after the TensorSpecs, sometimes with a ":0" suffix
        self.inputs = {i.name.split(":")[0]: (i.name, dtypes.get(i.type, np.float32))
                       for i in self._session.get_inputs()}
        self.output = self._session.get_outputs()[0].name

    def predict_on_batch(self, inputs: dict) -> np.ndarray:
        missing = set(self.inputs) - set(inputs)
        if missing:
            raise InputError(f"{self.path}: needs inputs {sorted(missing)}")
        feed = {name: np.ascontiguousarray(inputs[key], dtype=dtype) for key, (name, dtype) in self.inputs.items()}
        return self._session.run([self.output], feed)[0]


def interpreter_threads() -> int:
    """Threads a TFLite interpreter runs on: TensorFlow's intra-op thread count when it was set
    (as ``bench_peer_fer.py --threads`` does), else every CPU this process may use -- what a
    Keras model gets. TFLite's own default is one thread, which left the fast model at half its
    speed on two cores."""
    if "tensorflow" in sys.modules:
        import tensorflow as tf

        threads = tf.config.threading.get_intra_op_parallelism_threads()
        if threads > 0:
            return int(threads)
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def _interpreter(path: Path):
    try:    # LiteRT, TFLite's successor, when installed
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        import tensorflow as tf

        Interpreter = tf.lite.Interpreter
    from ensemble_fer.tf_startup import quiet_stderr

    with warnings.catch_warnings(), quiet_stderr():
        warnings.simplefilter("ignore")     # tf.lite.Interpreter's deprecation notice
        try:
            interpreter = Interpreter(model_path=str(path), num_threads=interpreter_threads())
            interpreter.allocate_tensors()  # the XNNPACK notice comes here
        except (ValueError, RuntimeError) as exc:
            raise InputError(f"{path}: not a valid TFLite model ({exc})") from None
    return interpreter


def export_model(source, out, formats=FORMATS, *, force: bool = False, say=print) -> dict:
    """Export the model at ``source`` (variant folder or ensemble) into ``out/<format>/``;
    returns the report also written to ``out/export.json``."""
    from ensemble_fer.inference import predictor as inference
    formats = tuple(formats)
    unknown = [f for f in formats if f not in ALL_FORMATS]
    if unknown or not formats:
        raise InputError(f"--format: each must be one of {ALL_FORMATS}; got {list(formats)}")
    if is_export(source):
        _, _, recorded = export_origin(source)
        raise InputError(f"{source}: already an exported model; export the Keras model it came from{recorded}")
    predictor = inference.load_keras_predictor(source)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out}: is a file; an export is a folder (one sub-folder per format): choose "
                         f"another --out")
    # before --force is looked at: replacing a folder that holds the model would delete it
    artifacts.check_apart(out, {"the model": source, **{f"member {name}": folder for name, folder in
                                                        zip(predictor.members, predictor.member_folders)}},
                          output_name="--out")
    say(f"preparing the check crops and loading {source} (Keras)")
    check = _check_inputs(predictor)
    calibration = _calibration_inputs(predictor) if INT8_FULL in formats else None
    keras_proba = predictor.member_probas(**check)      # (members, rows, classes)
    report = {"format": EXPORT_FORMAT, "source": str(Path(source).resolve()), "kind": predictor.kind,
              "members": list(predictor.members), "formats": {}}
    with artifacts.output_lock(out), artifacts.replacing(out, force=force) as tmp:
        tmp.mkdir(parents=True)
        converted = {}
        steps, started = len(predictor.members) * len(formats), time.monotonic()
        for index, (name, folder) in enumerate(zip(predictor.members, predictor.member_folders)):
            model = predictor._members[index].model
            for precision in formats:
                done = len(converted)
                # the estimate is the mean of the conversions so far (none before the first)
                left = (f"; about {(time.monotonic() - started) / done * (steps - done):.0f} s left" if done else "")
                say(f"converting {name} to {precision} ({done + 1}/{steps}{left})")
                member_calibration = None
                if precision == INT8_FULL:
                    from ensemble_fer.models import forward     # Keras: only once a network is converted

                    config = predictor._members[index].config
                    member_calibration = forward.model_inputs(config["block"], bool(config["bovw"]),
                                                              calibration["images"], calibration["bovw"])
                converted[precision, index] = convert(model, precision, member_calibration)
        for precision in formats:
            say(f"checking the {precision} export against the Keras model on {len(keras_proba[0])} crops")
            target = tmp / precision
            entry = _write_export(predictor, target, {i: converted[precision, i] for i in range(len(predictor.members))},
                                  precision)
            artifacts.write_json(target / EXPORT_FILE, dict(_marker(predictor, precision, source), **entry))
            exported = load_export(target)
            diff = np.abs(exported.member_probas(**check) - keras_proba)
            entry["max_abs_diff_vs_keras"] = float(diff.max())
            entry["same_top_class"] = float(np.mean(exported.member_probas(**check).argmax(-1)
                                                   == keras_proba.argmax(-1)))
            report["formats"][precision] = entry
            artifacts.write_json(target / EXPORT_FILE, dict(_marker(predictor, precision, source), **entry))
        artifacts.write_json(tmp / EXPORT_FILE, report)
    return report


def _marker(predictor, precision, source) -> dict:
    return {"format": EXPORT_FORMAT, "precision": precision, "source": str(Path(source).resolve()),
            "kind": predictor.kind}


def _write_export(predictor, target: Path, flatbuffers: dict, precision: str) -> dict:
    sizes = {}
    if predictor.kind == "variant":
        target.mkdir(parents=True)
        shutil.copy2(predictor.member_folders[0] / "config.json", target / "config.json")
        (target / model_file(precision)).write_bytes(flatbuffers[0])
        sizes[predictor.members[0]] = len(flatbuffers[0])
    else:
        data = json.loads(Path(predictor.source).read_text())
        for index, (entry, name, folder) in enumerate(zip(data["members"], predictor.members,
                                                          predictor.member_folders)):
            member_dir = target / name
            member_dir.mkdir(parents=True)
            shutil.copy2(folder / "config.json", member_dir / "config.json")   # unchanged: same hash
            (member_dir / model_file(precision)).write_bytes(flatbuffers[index])
            entry["path"] = name
            entry["model_file"] = model_file(precision)
            entry["model_sha256"] = artifacts.sha256_file(member_dir / model_file(precision))
            sizes[name] = len(flatbuffers[index])
        artifacts.write_json(target / "ensemble.json", data)
    return {"bytes": sizes, "total_bytes": int(sum(sizes.values()))}


def _calibration_inputs(predictor) -> dict:
    """The bundled sample's :data:`CALIBRATION_SPLIT` crops and their BOVW rows, as the
    predictor's feature extractor makes them: real faces for ``int8-full``'s activation ranges."""
    from ensemble_fer import paths
    from ensemble_fer.features.datasets import load_image, open_dataset

    records = open_dataset(paths.sample_data()).splits[CALIBRATION_SPLIT]
    features = predictor.analyse(np.stack([load_image(r) for r in records]))
    return {"images": features["images"], "bovw": features["bovw"]}


def _check_inputs(predictor) -> dict:
    """Deterministic crops with their features: smooth random blobs, so the networks see
    something face-sized rather than white noise."""
    import cv2

    rng = np.random.default_rng(0)
    small = rng.integers(0, 256, size=(CHECK_ROWS, 6, 6), dtype=np.uint8)
    crops = np.stack([cv2.resize(s, (48, 48), interpolation=cv2.INTER_CUBIC) for s in small])
    features = predictor.analyse(crops)
    return {"images": features["images"], "landmarks": features["landmarks"], "bovw_rows": features["bovw"]}


def load_export(path):
    """A :class:`ensemble_fer.inference.predictor.Predictor` over an exported folder (see the module doc)."""
    from ensemble_fer.inference import predictor as inference
    from ensemble_fer.ensemble.ensemble_file import read_ensemble
    from ensemble_fer.labels import label_set_from_json
    from ensemble_fer.models.variant_dir import VariantDir

    marker_path = export_marker(path)
    folder = marker_path.parent
    marker = artifacts.read_json(marker_path)
    if (not isinstance(marker, dict) or marker.get("format") != EXPORT_FORMAT
            or marker.get("precision") not in ALL_FORMATS):
        raise InputError(f"{marker_path}: not an exported model (the top folder of an export holds one "
                         f"sub-folder per format: pass one of them, e.g. {folder / 'float32'})")
    name = model_file(marker["precision"])
    if (folder / "config.json").is_file():
        config = VariantDir(folder).read_config()
        member = inference.Member(name=folder.name, folder=folder, config=config,
                                  _model=_load_member(folder / name))
        return inference.Predictor(folder, "variant", [member], [1.0], label_set_from_json(config["labels"]),
                                   inference.extractor_of(config, folder / "config.json"),
                                   {k: config["feature_store"].get(k) for k in ("path", "dataset", "config_hash")},
                                   config)
    ensemble = read_ensemble(folder / "ensemble.json")
    members = []
    for member in ensemble.members:
        model_path = member.folder / name
        if not model_path.is_file():
            raise InputError(f"{model_path}: file not found (member of {ensemble.path})")
        if artifacts.sha256_file(model_path) != member.hashes["model_sha256"]:
            raise InputError(f"{ensemble.path}: member {member.folder} changed since the export (its {name} "
                             f"differs); export again")
        members.append(inference.Member(name=member.name, folder=member.folder,
                                        config=VariantDir(member.folder).read_config(), _model=_load_member(model_path)))
    return inference.Predictor(ensemble.path, "ensemble", members, ensemble.fitted.weights_, ensemble.label_set,
                               ensemble.extractor, ensemble.data.get("feature_store") or {}, ensemble.data,
                               default_tta=ensemble.tta)


def _load_member(path: Path):
    if not path.is_file():
        raise InputError(f"{path}: file not found")
    return ONNXModel(path) if path.suffix == ".onnx" else TFLiteModel(path)
