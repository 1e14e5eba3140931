"""Tests of the trunks ported from other frameworks (``efficientnet_lite0``, ``squeezenet11``,
``faceres_mobilenet``), of the pickle-free ``.pth`` reader and of the offline errors naming them.

Fast and torch-free: the PyTorch files read here are tiny ones torch wrote once
(``tests/data/torch_state_dict/README.md``) and the original in ``shared/weights`` (tests that
need it skip with a reason where it is absent); the converted ``.npz`` files are those of
``pretrained/`` (``efficientnet_lite0``'s is not committed: rebuilt by its command).
"""

from __future__ import annotations

import pickle
import struct
import zipfile
from pathlib import Path

import numpy as np
import pytest

import keras

from ensemble_fer.errors import InputError
from ensemble_fer.models import (blocks, efficientnet_lite, porting, squeezenet, torch_state_dict,
                                 weights)
from ensemble_fer.models.weights import WeightsUnavailableError

ROOT = Path(__file__).resolve().parents[1]
SHARED_WEIGHTS = ROOT.parent / "shared" / "weights"
TINY = Path(__file__).parent / "data" / "torch_state_dict"
PORTED = ("efficientnet_lite0", "squeezenet11", "faceres_mobilenet")


def converted(name: str) -> weights.ConvertedWeights:
    spec = blocks.get_block_spec(name)
    return spec.weights_file(spec.default_weights)


def needs_original(folder: str):
    return pytest.mark.skipif(not (SHARED_WEIGHTS / folder).is_dir(),
                              reason=f"the original {folder}/ is not in {SHARED_WEIGHTS}")


def legacy_pth(payload: bytes) -> bytes:
    """A legacy torch.save file (magic, protocol, system info) whose object pickle is ``payload``."""
    header = b"".join(pickle.dumps(v, protocol=2) for v in (torch_state_dict.LEGACY_MAGIC,
                                                             torch_state_dict.LEGACY_PROTOCOL,
                                                             {"protocol_version": 1001, "little_endian": True}))
    return header + payload + pickle.dumps([], protocol=2)


def calls(module: str, name: str, argument: str, stack_global: bool) -> bytes:
    """Pickle opcodes that call ``module.name(argument)`` when unpickled (written by hand, never loaded
    here except by the reader under test)."""
    text = argument.encode()
    arg = b"X" + struct.pack("<I", len(text)) + text
    if stack_global:   # protocol 4: STACK_GLOBAL from two strings on the stack
        short = lambda s: b"\x8c" + bytes([len(s)]) + s.encode()   # noqa: E731
        return b"\x80\x04" + short(module) + short(name) + b"\x93" + arg + b"\x85R."
    return b"\x80\x02c" + f"{module}\n{name}\n".encode() + arg + b"\x85R."   # GLOBAL, TUPLE1, REDUCE


# ------------------------------------------------------------------ the .pth reader

@pytest.mark.parametrize("fname", ["tiny_zip.pth", "tiny_legacy.pth"])
def test_state_dict_reader_reads_both_torch_formats(fname):
    state = torch_state_dict.read_state_dict(TINY / fname)
    base = np.arange(24, dtype=np.float64).reshape(4, 6)
    expected = {"conv.weight": np.arange(108, dtype=np.float32).reshape(4, 3, 3, 3) / np.float32(10),
                "bn.num_batches_tracked": np.array(7, np.int64), "fc.weight_t": base.T,
                "fc.half": np.arange(5).astype(np.float16) / np.float16(4), "fc.row": base[2]}
    assert list(state) == list(expected)   # the file's order
    for name, value in expected.items():
        assert state[name].dtype == value.dtype and state[name].shape == value.shape, name
        np.testing.assert_array_equal(state[name], value, err_msg=name)


@pytest.mark.parametrize("module, name, stack_global", [("os", "system", False), ("builtins", "exec", True),
                                                        ("posix", "system", False)])
@pytest.mark.parametrize("container", ["legacy", "zip"])
def test_a_pth_asking_for_another_global_is_refused_without_running_it(tmp_path, module, name, stack_global,
                                                                       container):
    marker = tmp_path / "it_ran"
    argument = f"open({str(marker)!r}, 'w').write('x')" if name == "exec" else f"touch {marker}"
    payload = calls(module, name, argument, stack_global)
    path = tmp_path / "malicious.pth"
    if container == "legacy":
        path.write_bytes(legacy_pth(payload))
    else:
        with zipfile.ZipFile(path, "w") as archive:
            archive.writestr("malicious/data.pkl", payload)
    with pytest.raises(InputError) as info:
        torch_state_dict.read_state_dict(path)
    message = str(info.value)
    assert "\n" not in message and str(path) in message
    assert f"refused: its pickle asks for {module}.{name}" in message and "nothing was executed" in message
    assert not marker.exists()


def test_the_plain_unpickler_would_have_run_it(tmp_path):
    """The malicious payload of the test above is live: a plain unpickler runs it (here with a
    harmless callable, so the test shows the refusal is the reader's doing, not a broken payload)."""
    marker = tmp_path / "it_ran"
    payload = calls("pathlib", "Path", str(marker), stack_global=False)
    assert pickle.loads(payload) == marker
    with pytest.raises(InputError, match="refused: its pickle asks for pathlib.Path"):
        torch_state_dict.read_state_dict(_write(tmp_path / "p.pth", legacy_pth(payload)))


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("cut", [10, 200])
def test_a_truncated_or_foreign_pth_is_a_one_line_error(tmp_path, cut):
    blob = (TINY / "tiny_legacy.pth").read_bytes()
    for path in (_write(tmp_path / "cut.pth", blob[:-cut]), _write(tmp_path / "text.pth", b"not a pickle at all")):
        with pytest.raises(InputError) as info:
            torch_state_dict.read_state_dict(path)
        assert "\n" not in str(info.value) and str(path) in str(info.value)
        assert "not a readable PyTorch state dict" in str(info.value)


@needs_original(efficientnet_lite.SOURCE_FOLDER)
def test_the_published_lite0_state_dict_is_read():
    state = torch_state_dict.read_state_dict(SHARED_WEIGHTS / efficientnet_lite.SOURCE_FOLDER
                                             / efficientnet_lite.SOURCE_FILE)
    assert len(state) == 296 and state["_conv_stem.weight"].shape == (32, 3, 3, 3)
    assert sum(v.size for v in state.values()) == 4_694_073   # 4.65M + the num_batches_tracked counters
    assert state["_fc.weight"].shape == (1000, 1280)


# ------------------------------------------------------------------ the ported blocks

@pytest.mark.parametrize("name", PORTED)
def test_ported_block_has_no_batch_norm_and_loads_its_converted_weights(name):
    file = converted(name)
    assert isinstance(file, weights.ConvertedWeights) and file.file_hash and file.convert_command
    model = blocks.create_block(name, weights=None)
    assert not [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    assert not [v for v in model.weights if not v.trainable]   # no moving statistics at all
    present = [p for p in file.search_paths() if p.is_file()]
    if not present:
        pytest.skip(f"{file.fname} is not built here (`{file.convert_command}` makes it)")
    model = blocks.create_block(name)   # the default weights, hash-checked, offline
    stored = np.load(present[0])
    for key, value in weights.block_weights(model).items():
        np.testing.assert_array_equal(value, stored[key], err_msg=key)
    x = np.random.default_rng(0).uniform(0, 255, (2, *blocks.get_block_spec(name).input_shape())).astype("float32")
    for layer in blocks.get_block_spec(name).preprocessing():
        x = layer(x)
    out = keras.ops.convert_to_numpy(model(x))
    assert np.all(np.isfinite(out)) and out.max() > 0


@pytest.mark.parametrize("name", ["efficientnet_lite0", "squeezenet11"])
def test_a_network_on_a_ported_block_reloads_in_safe_mode(name, tmp_path):
    """Preprocessing and block are plain serialisable layers: the saved .keras loads with safe_mode=True."""
    from ensemble_fer.models import networks

    rng = np.random.default_rng(0)
    bovw = rng.normal(5.0, 2.0, size=(40, networks.BOVW_SIZE)).astype(np.float32)
    model = networks.build_network(name, True, 7, weights=None, image_size=blocks.get_block_spec(name).min_size,
                                   bovw_adapt_data=bovw)
    x = {networks.IMAGE_INPUT: rng.integers(0, 256, size=(3, 48, 48, 1), dtype=np.uint8),
         networks.BOVW_INPUT: bovw[:3]}
    proba = keras.ops.convert_to_numpy(model(x, training=False))
    model.save(tmp_path / "m.keras")
    reloaded = keras.models.load_model(tmp_path / "m.keras", safe_mode=True, compile=False)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(reloaded(x, training=False)), proba, atol=1e-6)


@pytest.mark.parametrize("name", PORTED)
def test_a_missing_converted_file_names_the_one_command(name, tmp_path, monkeypatch):
    monkeypatch.setattr(weights, "REPOSITORY_PRETRAINED", tmp_path / "empty_clone_pretrained")
    monkeypatch.setenv(weights.PRETRAINED_ENV, str(tmp_path / "nothing_here"))
    with pytest.raises(WeightsUnavailableError) as info:
        blocks.create_block(name)
    message = str(info.value)
    assert "\n" not in message
    assert f"`{converted(name).convert_command}`" in message and "--weights none" in message


def test_the_loader_refuses_converted_weights_of_another_block(tmp_path):
    other = tmp_path / "squeezenet_arrays.npz"
    np.savez(other, **weights.block_weights(blocks.create_block("squeezenet11", weights=None)))
    with pytest.raises(InputError) as info:
        blocks.create_block("efficientnet_lite0", weights=str(other))
    assert "\n" not in str(info.value) and "not weights of block 'efficientnet_lite0'" in str(info.value)
    reshaped = weights.block_weights(blocks.create_block("squeezenet11", weights=None))
    reshaped["conv1/0"] = np.zeros((3, 3, 3, 32), np.float32)
    np.savez(other, **reshaped)
    with pytest.raises(InputError, match=r"conv1/0 has shape \(3, 3, 3, 32\)"):
        blocks.create_block("squeezenet11", weights=str(other))


def test_a_converted_file_with_another_content_is_refused(tmp_path, monkeypatch):
    arrays = weights.block_weights(blocks.create_block("squeezenet11", weights=None))   # random, not the port
    folder = tmp_path / "pretrained"
    folder.mkdir()
    np.savez(folder / converted("squeezenet11").fname, **arrays)
    monkeypatch.setenv(weights.PRETRAINED_ENV, str(folder))
    with pytest.raises(WeightsUnavailableError, match="expected content hash"):
        blocks.create_block("squeezenet11")


def test_the_preprocessing_is_each_originals():
    rgb = np.random.default_rng(1).uniform(0, 255, (2, 8, 8, 3)).astype("float32")

    def apply(name):
        x = rgb
        for layer in blocks.get_block_spec(name).preprocessing():
            x = layer(x)
        return keras.ops.convert_to_numpy(x).astype(np.float64)

    np.testing.assert_allclose(apply("efficientnet_lite0"), (rgb - 127.0) / 128.0, atol=1e-6)
    caffe = rgb[..., ::-1].astype(np.float64) - np.array([103.939, 116.779, 123.68])
    np.testing.assert_allclose(apply("squeezenet11") * 128.0, caffe, atol=1e-4)   # scaled by 1/128, conv1 by 128


def test_lite0_architecture():
    model = blocks.create_block("efficientnet_lite0", weights=None, image_size=224)
    assert model.output_shape == (None, 7, 7, 1280)
    assert model.count_params() == 3_350_000   # the state dict's 4.69M less the classifier and BN statistics
    assert len(efficientnet_lite.mbconv_blocks()) == 16
    assert sum(isinstance(layer, keras.layers.Add) for layer in model.layers) == 9
    relu6 = [layer for layer in model.layers if isinstance(layer, keras.layers.ReLU)]
    assert relu6 and all(layer.max_value == 6.0 for layer in relu6)


def test_squeezenet_architecture():
    model = blocks.create_block("squeezenet11", weights=None, image_size=224)
    assert model.output_shape == (None, 13, 13, 512) and model.count_params() == 722_496


def test_the_torch_check_names_its_environment_when_missing(monkeypatch):
    monkeypatch.delenv(efficientnet_lite.TORCH_PYTHON_ENV, raising=False)
    with pytest.raises(InputError) as info:
        efficientnet_lite.reference(SHARED_WEIGHTS, np.zeros((1, 32, 32, 3), np.float32))
    message = str(info.value)
    assert "\n" not in message and message.startswith(f"{efficientnet_lite.TORCH_PYTHON_ENV} is not set")
    assert "torch==2.13.0" in message
    monkeypatch.setenv(efficientnet_lite.TORCH_PYTHON_ENV, "/nonexistent/bin/python")
    with pytest.raises(InputError, match="/nonexistent/bin/python is not a file"):
        efficientnet_lite.reference(SHARED_WEIGHTS, np.zeros((1, 32, 32, 3), np.float32))


@needs_original(squeezenet.SOURCE_FOLDER)
def test_squeezenet_port_is_checked_written_and_its_check_can_fail(tmp_path):
    target = porting.port("squeezenet11", SHARED_WEIGHTS, tmp_path, say=lambda *a: None)
    manifest = __import__("json").loads((tmp_path / "squeezenet11_imagenet.npz.json").read_text())
    assert manifest["content_sha256"] == converted("squeezenet11").file_hash == weights.weights_content_hash(target)
    assert all(row["max_abs_difference"] < 1e-4 for row in manifest["check"]["sizes"])
    assert "MIT" in (tmp_path / "squeezenet11_imagenet.LICENSE").read_text()
    with pytest.raises(InputError, match="exists; pass --force"):
        porting.port("squeezenet11", SHARED_WEIGHTS, tmp_path, say=lambda *a: None)
    # a port that forgot the stem's x128 is caught by the check against the original
    arrays = dict(np.load(target))
    arrays["conv1/0"] = arrays["conv1/0"] / 128.0
    wrong = tmp_path / "wrong.npz"
    np.savez(wrong, **arrays)
    check = porting.check_port("squeezenet11", converted("squeezenet11"), wrong, SHARED_WEIGHTS)
    assert min(row["max_abs_difference"] for row in check["sizes"]) > 1.0


@needs_original(efficientnet_lite.SOURCE_FOLDER)
def test_lite0_rebuilds_without_pytorch_into_the_registered_arrays(tmp_path, monkeypatch, capsys):
    """What a fresh clone runs (the missing-file error's command): no torch environment needed."""
    from pipelines import convert_weights

    monkeypatch.delenv(efficientnet_lite.TORCH_PYTHON_ENV, raising=False)
    command = converted("efficientnet_lite0").convert_command.split()
    assert command[:3] == ["python", "-m", "pipelines.convert_weights"] and "--no-check" in command
    committed = ROOT / "pretrained" / "efficientnet_lite0_imagenet.npz.json"
    (tmp_path / committed.name).write_bytes(committed.read_bytes())
    assert convert_weights.main(command[3:] + ["--source", str(SHARED_WEIGHTS), "--out", str(tmp_path)]) == 0
    target = tmp_path / "efficientnet_lite0_imagenet.npz"
    assert weights.weights_content_hash(target) == converted("efficientnet_lite0").file_hash
    manifest = __import__("json").loads((tmp_path / committed.name).read_text())
    assert manifest["check"]["sizes"][0]["max_abs_difference"] < 1e-4   # the committed check record, kept
    # the committed manifest is kept byte for byte (rewritten, its host versions dirtied the clone)
    assert (tmp_path / committed.name).read_bytes() == committed.read_bytes()
    assert "not checked (--no-check)" in capsys.readouterr().out


@needs_original(squeezenet.SOURCE_FOLDER)
def test_a_port_replaces_only_its_own_files(tmp_path, capsys):
    """A folder named like one of the port's files is refused before any work, --force or not (it
    raised IsADirectoryError after writing the other two); without --force an existing manifest
    or licence that the port would change is refused, and nothing is written."""
    from pipelines import convert_weights

    npz, manifest, licence = porting.port_outputs(converted("squeezenet11"), tmp_path)
    npz.mkdir()
    for flags in ([], ["--force"]):
        code = convert_weights.main(["squeezenet11", "--source", str(SHARED_WEIGHTS), "--out", str(tmp_path),
                                     "--no-check", "--quiet", *flags])
        err = capsys.readouterr().err
        assert code == 2 and f"{npz} is a folder, not a file of a port" in err and err.count("\n") == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == [npz.name]
    npz.rmdir()
    manifest.write_text('{"note": "a manifest of other arrays"}')
    with pytest.raises(InputError, match=f"{manifest.name} exists and this port would change it; pass --force"):
        porting.port("squeezenet11", SHARED_WEIGHTS, tmp_path, say=lambda *a: None, check=False)
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock")) == [manifest.name]
    assert manifest.read_text() == '{"note": "a manifest of other arrays"}'
    porting.port("squeezenet11", SHARED_WEIGHTS, tmp_path, say=lambda *a: None, check=False, force=True)
    assert weights.weights_content_hash(npz) == converted("squeezenet11").file_hash and licence.is_file()


def test_no_check_is_refused_for_arrays_that_are_not_the_registered_ones(tmp_path):
    import dataclasses

    changed = dataclasses.replace(converted("squeezenet11"), file_hash="0" * 64)
    with pytest.raises(InputError, match="--no-check: the rebuilt arrays' content hash .* drop --no-check"):
        porting._unchecked_rebuild(changed, "1" * 64, None)
    assert "skipped" in porting._unchecked_rebuild(changed, "0" * 64, None)   # no manifest to keep


# ------------------------------------------------------------------ the paper's trunks, offline

@pytest.mark.parametrize("name", ["resnet50", "inception_resnet_v2"])
def test_the_papers_offline_error_names_the_trunks_that_can_be_had_offline(name, tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras_home"))
    monkeypatch.setenv(weights.OFFLINE_ENV, "1")
    with pytest.raises(WeightsUnavailableError) as info:
        blocks.create_block(name)
    message = str(info.value)
    assert "\n" not in message and "--weights none" in message
    assert ("need no download" in message and "faceres_mobilenet (VGGFace2)" in message
            and "efficientnet_lite0 (ImageNet" in message and "squeezenet11 (ImageNet" in message)
