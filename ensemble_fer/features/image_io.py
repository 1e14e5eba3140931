"""Image files and arrays as the library reads them: decoding a file (any format Pillow
reads, upright per EXIF, 16-bit and float images scaled rather than clipped), any array to
uint8, and RGB(A) to grayscale.

Below both :mod:`ensemble_fer.features.datasets` (which reads datasets of such files) and
:mod:`ensemble_fer.features.faces` (which finds faces in grayscale pictures), so neither imports
the other for them.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import numpy as np

from ensemble_fer.errors import DatasetError, InputError, MissingDatasetError


def read_image_file(path) -> np.ndarray:
    """Decode an image file to uint8 (H, W) or (H, W, 3|4) in RGB order, upright per its EXIF
    orientation; DatasetError if unreadable.

    16-bit and 32-bit integer grayscale (PNG, TIFF) and floating-point images (TIFF) are scaled
    to 0..255 by :func:`to_uint8`; converting them through Pillow's ``RGB`` mode would clip
    every value above 255 and turn a 16-bit face near-white.
    """
    from PIL import Image, ImageOps, UnidentifiedImageError

    path = Path(path)
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise MissingDatasetError(f"{path}: file not found") from None
    except OSError as exc:
        raise DatasetError(f"{path}: cannot be read ({exc.strerror}); check its permissions") from None
    if stat.S_ISDIR(mode):
        raise DatasetError(f"{path}: is a folder, not an image")
    if not stat.S_ISREG(mode):      # a FIFO would block the read forever, a device never end
        raise DatasetError(f"{path}: not a regular file (a FIFO, socket or device); only image files are read")
    try:
        with Image.open(path) as img:
            img.load()
            # Phone photos are stored sideways with an EXIF rotation tag; faces are found upright.
            img = ImageOps.exif_transpose(img)
            if img.mode.startswith("I") or img.mode == "F":
                # one channel of 16/32-bit integers or 32-bit floats: scale, never clip
                array = to_uint8(np.asarray(img), where=path)
            else:
                if img.mode not in ("L", "RGB", "RGBA"):
                    img = img.convert("RGBA" if "A" in img.getbands() else "RGB")
                array = np.asarray(img)
    except FileNotFoundError:
        raise MissingDatasetError(f"{path}: file not found") from None
    except IsADirectoryError:
        raise DatasetError(f"{path}: is a folder, not an image") from None
    except PermissionError as exc:
        raise DatasetError(f"{path}: cannot be read ({exc.strerror}); check its permissions") from None
    except UnidentifiedImageError:
        raise DatasetError(f"{path}: not a readable image (unknown or corrupt format)") from None
    except Image.DecompressionBombError as exc:
        # Past twice PIL.Image.MAX_IMAGE_PIXELS Pillow refuses to decode (gigabytes, and face
        # detection on it far more); it is a bad file like any other, not a crash. Pillow's
        # message gives the picture's pixel count and the limit.
        raise DatasetError(f"{path}: not read, too large ({exc})") from None
    except DatasetError:
        raise
    except (OSError, SyntaxError, ValueError) as exc:
        raise DatasetError(f"{path}: not a readable image ({exc})") from None
    return to_uint8(array, where=path)


def to_uint8(image, where=None) -> np.ndarray:
    """``image`` as uint8 0..255, scaled by what its dtype can hold rather than clipped.

    uint8 is returned as is; bool maps to 0/255; uint16 (and other integers whose values
    exceed 255, read as 16-bit) are divided by 257 so 65535 becomes 255; other integers already
    in 0..255 are kept. Floats in 0..1 are multiplied by 255, floats in 0..255 rounded. Values
    outside these ranges (negative, NaN, above 65535) raise DatasetError naming ``where``:
    guessing their scale would feed the model a picture no one looked at.
    """
    image = np.asarray(image)
    if image.dtype == np.uint8:
        return image
    what = f"{where}: " if where is not None else ""
    if image.dtype == bool:
        return image.astype(np.uint8) * 255
    if image.size == 0:
        return image.astype(np.uint8)
    if np.issubdtype(image.dtype, np.integer):
        low, high = int(image.min()), int(image.max())
        if image.dtype == np.uint16 or (low >= 0 and 255 < high <= 65535):
            return ((image.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)
        if low >= 0 and high <= 255:
            return image.astype(np.uint8)
        raise DatasetError(f"{what}image values must be 0..255 (8-bit) or 0..65535 (16-bit); "
                           f"got {low}..{high} ({image.dtype})")
    if np.issubdtype(image.dtype, np.floating):
        if not np.isfinite(image).all():
            raise DatasetError(f"{what}image holds NaN or infinite values")
        low, high = float(image.min()), float(image.max())
        if low >= 0 and high <= 1:
            return np.rint(image * 255).astype(np.uint8)
        if low >= 0 and high <= 255:
            return np.rint(image).astype(np.uint8)
        raise DatasetError(f"{what}floating-point image values must be in 0..1 or 0..255; got {low:g}..{high:g}")
    raise DatasetError(f"{what}images of dtype {image.dtype} are not supported")


def to_gray(image: np.ndarray) -> np.ndarray:
    """uint8 grayscale from grayscale, RGB or RGBA (alpha composited on black is not done:
    alpha is dropped, as photo tools do for opaque images). Arrays of other dtypes are scaled
    to 0..255 first (:func:`to_uint8`)."""
    image = to_uint8(image)
    if image.ndim == 2:
        return image
    if image.ndim == 3 and image.shape[2] in (3, 4):
        rgb = image[..., :3].astype(np.float32)
        # ITU-R 601 luma, the weights PIL and OpenCV use for RGB -> L.
        gray = rgb @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
        return np.clip(np.rint(gray), 0, 255).astype(np.uint8)
    if image.ndim == 3 and image.shape[2] == 1:
        return image[..., 0]
    raise InputError(f"image must be (H, W), (H, W, 3) or (H, W, 4); got shape {image.shape}")
