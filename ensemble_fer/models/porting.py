"""Porting a published trunk into a block's weights: convert, check against the original, save.

``port(block, source, out)`` is what ``python -m pipelines.convert_weights BLOCK`` runs for a
block whose named weights are :class:`~ensemble_fer.models.weights.ConvertedWeights`:

1. the family module's ``convert`` reads the original file (TensorFlow.js graph, PyTorch
   state dict, Keras 1 ``.h5``; never an unpickling ``torch.load``) into the block's arrays;
2. the block is built at its default size with them, and its pooled output is compared with
   the original network's (``reference``, run by the original's own framework) on fixed inputs:
   real face crops of the bundled sample and seeded noise, at two sizes;
3. the arrays go to ``<out>/<fname>`` (a pickle-free ``.npz``), with ``<fname>.json`` beside it:
   provenance (origin, the original files' sha256, licence, training data), the content hash
   the registry checks, and the check's max |difference|; the licence file is copied beside.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import numpy as np

from ensemble_fer import artifacts
from ensemble_fer.errors import InputError
from ensemble_fer.models.blocks import get_block_spec
from ensemble_fer.models.weights import ConvertedWeights, load_converted_weights, weights_content_hash

CHECK_SIZES = (None, 224)
"""Input sides of the check: the block's default, and the original's native 224 px."""

SAMPLE_CROPS = Path(__file__).resolve().parents[2] / "data" / "sample"


def converted_weights(block: str) -> ConvertedWeights:
    spec = get_block_spec(block)
    found = [w for w in spec.weights_files if isinstance(w, ConvertedWeights)]
    if not found:
        portable = sorted(name for name in _portable_blocks())
        raise InputError(f"block: {block!r} has no weights ported from another framework; blocks that do: {portable}")
    return found[0]


def _portable_blocks():
    from ensemble_fer.models.blocks import list_blocks
    return [b for b in list_blocks() if any(isinstance(w, ConvertedWeights) for w in get_block_spec(b).weights_files)]


def check_inputs(size: int, seed: int = 0) -> np.ndarray:
    """Fixed float RGB inputs in [0, 255]: 12 real 48 px crops resized to ``size``, 4 of seeded noise."""
    import cv2

    from ensemble_fer.features.image_io import read_image_file

    files = sorted(SAMPLE_CROPS.glob("*/*/*.jpg"))[::25][:12]
    crops = [cv2.resize(read_image_file(f), (size, size), interpolation=cv2.INTER_LINEAR) for f in files]
    gray = np.stack(crops).astype(np.float32) if crops else np.zeros((0, size, size), np.float32)
    rgb = np.repeat(gray[..., None], 3, axis=-1)
    noise = np.random.default_rng(seed).uniform(0, 255, size=(4, size, size, 3)).astype(np.float32)
    return np.concatenate([rgb, noise])


def check_port(block: str, weights: ConvertedWeights, arrays_path: Path, source: Path) -> dict:
    """Max |ported - original| of the pooled features on :func:`check_inputs`, per input side."""
    import keras

    from ensemble_fer.models.blocks import create_block

    spec = get_block_spec(block)
    results = []
    for size in CHECK_SIZES:
        size = size or spec.default_size
        model = create_block(block, weights=None, image_size=size)
        load_converted_weights(model, arrays_path)
        x = check_inputs(size)
        pre = x
        for layer in spec.preprocessing():
            pre = layer(pre)
        ours = keras.ops.convert_to_numpy(keras.ops.mean(model(pre), axis=(1, 2)))
        theirs = weights.reference(source, x)
        diff = np.abs(ours.astype(np.float64) - theirs)
        results.append({"input_side": int(size), "n_images": int(len(x)), "max_abs_difference": float(diff.max()),
                        "max_abs_original": float(np.abs(theirs).max()),
                        "mean_abs_original": float(np.abs(theirs).mean())})
    return {"compared": "pooled features of the block vs the original network run by its own framework",
            "inputs": f"{len(x) - 4} bundled sample crops resized + 4 seeded noise images, float RGB in [0, 255]",
            "sizes": results}


def port(block: str, source, out, force: bool = False, say=print, check: bool = True) -> Path:
    """Convert, check and save block ``block``'s ported weights under ``out``; returns the ``.npz``.

    ``check=False`` (``--no-check``) skips running the original network (whose framework may not
    be at hand: PyTorch for ``efficientnet_lite0``) and is refused unless the arrays' content hash
    is the registered one, i.e. the very arrays whose check the committed manifest records: that
    record is kept when the manifest in ``out`` has the same content hash."""
    weights = converted_weights(block)
    source, out = Path(source), Path(out)
    if not (source / weights.source_folder).is_dir():
        raise InputError(f"source: {source / weights.source_folder} is not a folder; pass --source, the folder "
                         f"holding {weights.source_folder}/ (shared/weights)")
    target, manifest_path, licence_copy = port_outputs(weights, out)
    if out.exists() and not out.is_dir():
        raise InputError(f"out: {out} is a file; --out is the folder the ported weights go to")
    for path in (target, manifest_path, licence_copy):
        if path.is_dir():   # no earlier result of the port: never replaced, --force or not
            raise InputError(f"out: {path} is a folder, not a file of a port; it is not replaced: choose another --out")
    if target.exists() and not force:
        raise InputError(f"out: {target} exists; pass --force to rebuild it")
    say(f"converting {source / weights.source_folder} ...")
    arrays = weights.convert(source)
    # The lock creates ``out``; the staging folder is inside it, so the final rename stays on one filesystem.
    with artifacts.output_lock(target), tempfile.TemporaryDirectory(dir=out) as tmp:
        if target.exists() and not force:   # again under the lock: another run may have written it
            raise InputError(f"out: {target} exists; pass --force to rebuild it")
        staged = Path(tmp) / weights.fname
        artifacts.save_npz(staged, **arrays)
        content = weights_content_hash(staged)
        keep_manifest = False
        if check:
            say("checking the port against the original network ...")
            result = check_port(block, weights, staged, source)
            for row in result["sizes"]:
                say(f"  {row['input_side']} px: max |difference| {row['max_abs_difference']:.3g} "
                    f"(features up to {row['max_abs_original']:.3g})")
        else:
            previous = _previous_check(weights, content, out)
            result = _unchecked_rebuild(weights, content, previous)
            say(f"not checked (--no-check): the arrays are the registered ones (content hash {content})")
            # A rebuild of the arrays a committed manifest describes keeps that manifest as it is:
            # rewriting it would only change its versions (the host's kernel) and dirty the clone.
            keep_manifest = previous is not None
        if weights.file_hash and content != weights.file_hash:
            say(f"warning: content hash {content} differs from the registered {weights.file_hash}; update "
                f"the registry entry if the conversion changed on purpose")
        originals = sorted(p for p in (source / weights.source_folder).iterdir() if p.is_file())
        manifest = {
            "block": block, "weights": weights.name, "file": weights.fname, "content_sha256": content,
            "n_arrays": len(arrays), "n_parameters": int(sum(v.size for v in arrays.values())),
            "origin": weights.origin, "trained_on": weights.trained_on, "licence": weights.licence,
            "original_files": {p.name: artifacts.sha256_file(p) for p in originals if p.name != "LICENSE"},
            "check": result, "versions": artifacts.package_versions(),
            "rebuild": weights.convert_command,
        }
        staged_licence = Path(tmp) / licence_copy.name
        licence = source / weights.source_folder / "LICENSE"
        if licence.is_file():
            shutil.copyfile(licence, staged_licence)
        else:   # the original folder has no licence text: keep what is known of it beside the weights
            staged_licence.write_text(f"{weights.licence}\n\n(The original folder {weights.source_folder}/ holds "
                                      f"no licence text; this is its licence as shared/weights/README.md and the "
                                      f"origin state it. Origin: {weights.origin}.)\n")
        staged_manifest = None if keep_manifest else Path(tmp) / manifest_path.name
        if staged_manifest is not None:
            artifacts.write_json(staged_manifest, manifest)
        if not force:
            # Without --force nothing is replaced but the very bytes that are there (a fresh clone's
            # --no-check rebuild keeps the committed manifest and licence).
            _check_unchanged(licence_copy, staged_licence)
            _check_unchanged(manifest_path, staged_manifest)
        staged_licence.replace(licence_copy)
        if staged_manifest is not None:
            staged_manifest.replace(manifest_path)
        staged.replace(target)      # last: the arrays the blocks load, once their record is in place
    say(f"wrote {target}")
    return target


def port_outputs(weights: ConvertedWeights, out: Path) -> tuple[Path, Path, Path]:
    """What a port writes in ``out``: the arrays, their manifest and the licence."""
    return (out / weights.fname, out / f"{weights.fname}.json", out / f"{Path(weights.fname).stem}.LICENSE")


def _check_unchanged(path: Path, staged: Path | None) -> None:
    """Refuse (no --force) to replace an existing ``path`` by other content: ``staged`` None keeps it."""
    if staged is None or not path.exists() or path.read_bytes() == staged.read_bytes():
        return
    raise InputError(f"out: {path} exists and this port would change it; pass --force to replace it")


def _unchecked_rebuild(weights: ConvertedWeights, content: str, previous: dict | None) -> dict:
    """The check record of a ``--no-check`` rebuild: refused unless the arrays are the registered ones."""
    if not weights.file_hash or content != weights.file_hash:
        raise InputError(f"--no-check: the rebuilt arrays' content hash {content} is not the registered "
                         f"{weights.file_hash}, so they must be checked against the original: drop --no-check")
    if previous is not None:     # the committed manifest's check of these very arrays
        return previous
    return {"skipped": "rebuilt with --no-check: the arrays' content hash is the registered one, whose check "
                       "the repository's manifest records"}


def _previous_check(weights: ConvertedWeights, content: str, out: Path) -> dict | None:
    """The check record of the manifest in ``out`` when it describes arrays of this content hash."""
    manifest = out / f"{weights.fname}.json"
    if not manifest.is_file():
        return None
    previous = artifacts.read_json(manifest)
    if previous.get("content_sha256") == content and previous.get("check"):
        return previous["check"]
    return None
